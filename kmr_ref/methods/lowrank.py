"""Low-rank factorization by truncated SVD (spec/methods/lowrank.md).

A Linear (m x n weight) or Conv (weight reshaped to m x n = out x in*prod(kernel)) becomes two
layers: ``first`` (n -> r, no bias) and ``second`` (r -> m, with the original bias), held in a
:class:`LowRankFactors` (an ``nn.Sequential``). Factors come from an SVD in binary64 with a
deterministic sign convention, split as sqrt(S) on each side, then cast to the weight dtype.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.knobs import IntRange, Knob, KnobValue, RealInterval, find_knob
from kmr_ref.methods.modules import (
    Patterns,
    as_patterns,
    check_float_finite,
    check_supported,
    clone_tree,
    select_names,
    set_submodule,
)

CLAUSE = "KMR.lowrank"
RANK_MAX = 1 << 20  # the static upper end of the `rank` knob's domain; layers refuse r >= min(m, n)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# KMR.lowrank.weight-readers: parents whose forward reads these children's .weight/.bias directly
# (the fused fast path of the transformer layers) instead of calling them as modules
_WEIGHT_READERS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.TransformerEncoderLayer: ("linear1", "linear2"),
    nn.TransformerDecoderLayer: ("linear1", "linear2"),
    nn.MultiheadAttention: ("out_proj",),
}


class LowRankFactors(nn.Sequential):
    """``KMR.lowrank.split``: ``Sequential(first, second)``; the rule recognises it on a later
    application and re-factorizes the product (``KMR.lowrank.refactor``)."""


def energy_domain() -> RealInterval:
    """``KMR.lowrank.energy``: rationals in (0, 1], policy grid 1/20, ..., 1."""
    return RealInterval(Fraction(0), Fraction(1), Fraction(1, 20), lo_open=True)


def _matrix(m: nn.Module) -> torch.Tensor:
    """The m x n matrix of a Linear/Conv, or of a LowRankFactors (second @ first, in binary64)."""
    if isinstance(m, LowRankFactors):
        a = _matrix(m[0]).to(torch.float64)
        b = _matrix(m[1]).to(torch.float64)
        return b @ a
    w = _layer(m).weight.detach()
    return w.reshape(w.shape[0], -1)


def _layer(m: nn.Module) -> nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d:
    assert isinstance(m, (nn.Linear, *_CONV))
    return m


def _inner_rank(m: nn.Module) -> int | None:
    return int(_layer(m[0]).weight.shape[0]) if isinstance(m, LowRankFactors) else None


def signed_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``KMR.lowrank.svd`` + ``KMR.lowrank.sign``: U, S, Vh of ``w`` in binary64
    (``torch.linalg.svd(full_matrices=False)``), each pair (u_i, v_i) negated when needed so that the
    entry of u_i of largest |value| (the first such index on ties) is positive."""
    u, s, vh = torch.linalg.svd(w.detach().to(device="cpu", dtype=torch.float64), full_matrices=False)
    pivot = u.abs().argmax(dim=0)  # first index of the maximum (torch.argmax returns the first)
    sign = torch.where(u.gather(0, pivot[None, :])[0] < 0, -1.0, 1.0).to(torch.float64)
    return u * sign[None, :], s, vh * sign[:, None]


def energy_rank(s: torch.Tensor, energy: Fraction) -> int:
    """``KMR.lowrank.energy``: the smallest r in 1..len(s) with P_r >= energy * P_len, where
    e_i = fl64(s_i * s_i) and P_r = math.fsum(e_0..e_{r-1}) (exactly rounded), compared as exact
    rationals."""
    e = [x * x for x in s.tolist()]
    try:
        total = Fraction(math.fsum(e))
    except (OverflowError, ValueError) as exc:  # KMR.lowrank.nonfinite: the energy overflows
        raise RuleInputError("KMR.lowrank.nonfinite", "the singular values' energy overflows binary64") from exc
    for r in range(1, len(e) + 1):
        if Fraction(math.fsum(e[:r])) >= energy * total:
            return r
    return len(e)


def factorize(mod: nn.Module, r: int) -> LowRankFactors:
    """``KMR.lowrank.split`` / ``KMR.lowrank.conv``: the two-layer replacement of ``mod`` at rank r."""
    base = _layer(mod[0] if isinstance(mod, LowRankFactors) else mod)
    last = _layer(mod[1] if isinstance(mod, LowRankFactors) else mod)
    w = _matrix(mod)
    wt = base.weight
    dtype, device = wt.dtype, wt.device
    u, s, vh = signed_svd(w)
    root = s[:r].sqrt()
    a = (root[:, None] * vh[:r]).to(dtype=dtype, device=device)  # KMR.lowrank.split: sqrt(S_r) V_r^T
    b = (u[:, :r] * root[None, :]).to(dtype=dtype, device=device)  # KMR.lowrank.split: U_r sqrt(S_r)
    bias = last.bias
    req = wt.requires_grad
    first: nn.Module
    second: nn.Module
    if isinstance(base, nn.Linear):  # KMR.lowrank.equivalence: x -> B(Ax) + b
        first = nn.Linear(base.in_features, r, bias=False, device=device, dtype=dtype)
        second = nn.Linear(r, int(w.shape[0]), bias=bias is not None, device=device, dtype=dtype)
        first.weight = nn.Parameter(a.contiguous(), requires_grad=req)
        second.weight = nn.Parameter(b.contiguous(), requires_grad=req)
    else:  # KMR.lowrank.conv: Conv(in, r, k, same geometry) then Conv(r, out, 1)
        assert isinstance(base, _CONV) and isinstance(last, _CONV)
        cls = type(base)
        first = cls(base.in_channels, r, base.kernel_size, stride=base.stride,  # type: ignore[arg-type]
                    padding=base.padding, dilation=base.dilation,  # type: ignore[arg-type]
                    bias=False, padding_mode=base.padding_mode, device=device, dtype=dtype)
        ones = (1,) * len(base.kernel_size)
        second = cls(r, int(w.shape[0]), ones, bias=bias is not None, device=device, dtype=dtype)  # type: ignore[arg-type]
        first.weight = nn.Parameter(a.reshape(r, *base.weight.shape[1:]).contiguous(), requires_grad=req)
        second.weight = nn.Parameter(b.reshape(int(w.shape[0]), r, *ones).contiguous(), requires_grad=req)
    if bias is not None:
        second.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias)  # shared, not copied
    return LowRankFactors(first, second)


@dataclass(frozen=True)
class LowRank:
    """The rule of spec/methods/lowrank.md.

    ``layers``: the module names in scope (None: every Linear, every Conv1d/2d/3d with groups = 1
    and every LowRankFactors, in ``named_modules()`` order; ``KMR.lowrank.scope``). Knobs: ``rank``,
    ``energy`` (all layers in scope) and ``rank@<name>``, ``energy@<name>`` for each name in
    ``layers`` (``KMR.lowrank.per-layer-knob``).
    """

    layers: tuple[str, ...] | None = None
    include: Patterns | None = None
    exclude: Patterns = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", as_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude, "exclude") or ())

    @classmethod
    def for_model(cls, model: nn.Module, *, include: Sequence[str] | None = None,
                  exclude: Sequence[str] = ()) -> LowRank:
        inc, exc = as_patterns(include, "include"), as_patterns(exclude, "exclude") or ()
        return cls(tuple(n for n, _ in targets(model, None, inc, exc)), inc, exc)

    def knobs(self) -> Sequence[Knob]:
        ks = [Knob("rank", IntRange(1, RANK_MAX), "decreasing"),
              Knob("energy", energy_domain(), "decreasing")]
        for n in self.layers or ():
            ks += [Knob(f"rank@{n}", IntRange(1, RANK_MAX), "decreasing"),
                   Knob(f"energy@{n}", energy_domain(), "decreasing")]
        return ks

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        kind, _, target = knob.partition("@")
        k = find_knob(self.knobs(), knob)  # KMR.knob.unknown
        try:
            v = k.check(value)  # KMR.knob.domain
        except KnobDomainError as e:
            if kind != "rank":
                raise
            raise KnobDomainError(f"{CLAUSE}.rank-range", f"rank must be an integer >= 1: {e.message}") from e
        check_supported(model)  # KMR.rule.unsupported-module
        # KMR.select.exclude: with ``layers`` (for_model) the patterns were applied when the rule was
        # built, against the whole model; re-applying them to the narrowed scope (or to a model whose
        # layers are factorized since) would find an exclude pattern matching nothing
        scope = (targets(model, None, self.include, self.exclude) if self.layers is None
                 else targets(model, self.layers))
        if target:  # KMR.lowrank.per-layer-knob
            scope = [(n, m) for n, m in scope if n == target]
            if not scope:
                raise RuleInputError(f"{CLAUSE}.scope",
                                     f"{target!r} is not a factorizable layer of this model")
        for name, mod in scope:
            for pn, t in mod.named_parameters():
                # KMR.lowrank.dtype KMR.lowrank.nonfinite
                check_float_finite(f"{name}.{pn}", t, CLAUSE)
        plan: list[tuple[str, nn.Module, int]] = []
        for name, mod in scope:
            w = _matrix(mod)
            m, n = int(w.shape[0]), int(w.shape[1])
            if kind == "rank":
                r = int(v)
                if r >= min(m, n) and target:  # KMR.lowrank.rank-range: rank@<layer> names one layer
                    raise RuleInputError(f"{CLAUSE}.rank-range",
                                         f"{name}: rank {r} >= min(m, n) = {min(m, n)}")
            else:
                r = energy_rank(signed_svd(w)[1], Fraction(v))
            r0 = _inner_rank(mod)
            if r0 is not None and r >= r0:  # KMR.lowrank.refactor: never raises the rank
                continue
            if not r * (m + n) < m * n:  # KMR.lowrank.applicable
                continue
            plan.append((name, mod, r))
        new = clone_tree(model)  # KMR.lowrank.sharing
        for name, mod, r in plan:
            if name == "":
                return factorize(mod, r)  # the model itself is the one layer in scope
            set_submodule(new, name, factorize(mod, r))
        return new


def _weight_readers(model: nn.Module) -> dict[str, str]:
    """``KMR.lowrank.weight-readers``: {child name: parent type} of the children whose parent
    reads their ``weight`` directly (replacing them would break the parent's forward)."""
    out: dict[str, str] = {}
    for pname, parent in model.named_modules():
        for cls, kids in _WEIGHT_READERS.items():
            if isinstance(parent, cls):
                for k in kids:
                    if k in parent._modules:
                        out[f"{pname}.{k}" if pname else k] = type(parent).__name__
    return out


def targets(model: nn.Module, names: tuple[str, ...] | None, include: Patterns | None = None,
            exclude: Patterns = ()) -> list[tuple[str, nn.Module]]:
    """``KMR.lowrank.scope``: the layers in scope, in ``named_modules()`` order."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    mods = dict(model.named_modules())
    readers = _weight_readers(model)
    if names is not None:
        for n in names:
            m = mods.get(n)
            if m is None or not _factorizable(m):
                raise RuleInputError(f"{CLAUSE}.scope", f"{n!r} is not a Linear, a Conv with groups = 1 "
                                     "or LowRankFactors in this model")
            if n in readers:  # KMR.rule.runs-forward: refused before anything is built
                raise RuleInputError("KMR.rule.runs-forward", f"{n!r}: its parent {readers[n]} reads its weight "
                                     "directly (fused fast path); a factorized layer would break its forward")
        chosen = set(names)
        out = [(n, m) for n, m in mods.items() if n in chosen]
    else:
        for n, m in mods.items():
            if any(n.startswith(p + ".") for p in inside):
                continue
            if n in readers:  # KMR.lowrank.weight-readers: not in scope by default
                continue
            if _factorizable(m):
                out.append((n, m))
                if isinstance(m, LowRankFactors):
                    inside.append(n)
    # KMR.lowrank.empty: a layer with a zero-size parameter has nothing to factorize; skipped
    out = [(n, m) for n, m in out if all(p.numel() > 0 for p in m.parameters())]
    if include is not None or exclude:  # KMR.select.include, KMR.select.exclude on parameter names
        pnames = {n: [f"{n}.{pn}" if n else pn for pn, _ in m.named_parameters()] for n, m in out}
        every = [q for n, _ in out for q in pnames[n]]
        keep = set(select_names(every, every, include, exclude, "low-rank"))
        # a layer is in scope when one of its parameters is chosen and none is excluded
        out = [(n, m) for n, m in out if any(q in keep for q in pnames[n])
               and not any(_matches(q, exclude) for q in pnames[n])]
    # KMR.lowrank.scope: a layer reachable under two names, or holding a parameter another module
    # also holds, cannot be replaced without breaking the sharing: refused.
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    owners: dict[int, int] = {}
    for _, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for n, m in out:
        if uses[id(m)] > 1 or any(owners[id(p)] > 1 for p in m.parameters()):
            raise RuleInputError(f"{CLAUSE}.scope",
                                 f"{n!r} is shared (module or parameter); cannot replace it")
    return out


def _matches(name: str, patterns: Patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _factorizable(m: nn.Module) -> bool:
    if isinstance(m, LowRankFactors):  # exactly the shape factorize() builds
        if len(m) != 2:
            return False
        a, b = m[0], m[1]
        if type(a) is not type(b) or not _factorizable(a) or not _factorizable(b):
            return False
        if _layer(a).bias is not None:
            return False
        if isinstance(b, _CONV):
            return (all(k == 1 for k in b.kernel_size) and all(x == 1 for x in b.stride)
                    and b.padding in ((0,), (0, 0), (0, 0, 0)) and all(x == 1 for x in b.dilation))
        return True
    return type(m) is nn.Linear or (isinstance(m, _CONV) and type(m) in _CONV and m.groups == 1)
