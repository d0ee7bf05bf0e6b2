"""Structured pruning with physical removal of output channels (spec/methods/structured.md).

Output channels of Conv/Linear layers in a sequential stack are ranked by the L_p norm of their
weight slice; the lowest are removed from the layer (weight rows, bias entries), from the
BatchNorm that follows it (if any), and from the inputs of the next Conv/Linear. Parameters and
MACs really shrink. Anything the rule cannot analyse is refused (``KMR.structured.unsupported-graph``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import torch
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.exact import to_exact
from kmr_ref.core.knobs import Knob, KnobValue, RealInterval, find_knob
from kmr_ref.methods.modules import (
    Patterns,
    as_patterns,
    check_float_finite,
    check_supported,
    clone_tree,
    select_names,
    set_parameter,
)
from kmr_ref.methods.structured_graph import (
    GraphAnalysis,
    Group,
    analyse_graph,
    group_row_scores,
    remove_groups,
)

CLAUSE = "KMR.structured"
Scope = Literal["per-layer", "global"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# KMR.structured.next-layer: modules that act on each channel (each feature) separately and hold
# no per-channel state: they may sit between a pruned layer and the next Conv/Linear.
_ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)


def fraction_domain() -> RealInterval:
    """``KMR.structured.knob``: rationals in [0, 1), policy grid 0, 1/20, ..., 19/20."""
    return RealInterval(Fraction(0), Fraction(1), Fraction(1, 20), hi_open=True)


# ---------------------------------------------------------------------------------------------
# Graph analysis (KMR.structured.supported-graph)


@dataclass
class Layer:
    """One Conv/Linear of the stack, with what sits between it and the next Conv/Linear."""

    name: str
    module: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
    bns: list[tuple[str, nn.Module]] = field(default_factory=list)
    flatten: bool = False  # a Flatten between this Conv and the next Linear


def _leaves(m: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """Depth-first leaves of nested Sequentials (``KMR.structured.supported-graph``)."""
    for name, child in m._modules.items():
        q = f"{prefix}.{name}" if prefix else name
        if child is None:
            continue
        if _is_sequential(child):
            yield from _leaves(child, q)
        else:
            yield q, child


def _is_sequential(m: nn.Module) -> bool:
    # a Sequential subclass that keeps Sequential.forward composes its children in order
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _unsupported(msg: str) -> RuleInputError:
    return RuleInputError(f"{CLAUSE}.unsupported-graph", msg)


def _channels_out(m: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def analyse(model: nn.Module) -> list[Layer]:
    """The Conv/Linear layers of ``model`` in execution order, or RuleInputError
    ``KMR.structured.unsupported-graph``. The last layer is the output layer (never pruned)."""
    if not _is_sequential(model):  # KMR.structured.supported-graph
        raise _unsupported(f"the model must be an nn.Sequential stack, got {type(model).__name__}")
    leaves = list(_leaves(model, ""))
    seen: set[int] = set()
    for q, m in leaves:
        if id(m) in seen:
            raise _unsupported(f"module {q!r} appears twice in the stack")
        seen.add(id(m))
    pids: set[int] = set()
    for q, m in leaves:
        for p in m.parameters():
            if id(p) in pids:
                raise _unsupported(f"module {q!r} shares a parameter with another module")
            pids.add(id(p))
    layers: list[Layer] = []
    idx = [i for i, (_, m) in enumerate(leaves) if isinstance(m, (nn.Linear, *_CONV))]
    for j, i in enumerate(idx):
        q, m = leaves[i]
        assert isinstance(m, (nn.Linear, *_CONV))
        if isinstance(m, _CONV) and m.groups != 1:
            raise _unsupported(f"{q!r}: grouped convolution (groups={m.groups})")
        layers.append(Layer(q, m))
        if j + 1 == len(idx):
            break  # KMR.structured.output-layer-kept: what follows the output layer is unconstrained
        nq, nxt = leaves[idx[j + 1]]
        c = _channels_out(m)
        lay = layers[-1]
        for bq, b in leaves[i + 1: idx[j + 1]]:  # KMR.structured.next-layer
            if isinstance(b, _BN) and not lay.flatten:
                if b.num_features != c:
                    raise _unsupported(f"{bq!r} has {b.num_features} features, {q!r} gives {c}")
                lay.bns.append((bq, b))
            elif type(b) in _ELEMENTWISE or (type(b) in _POOL and not lay.flatten  # exact types
                                             and isinstance(m, _CONV)):
                continue
            elif isinstance(b, nn.Flatten) and isinstance(m, _CONV) and not lay.flatten:
                if b.start_dim != 1 or b.end_dim != -1:
                    raise _unsupported(f"{bq!r}: only Flatten(1, -1) is supported")
                lay.flatten = True
            else:
                raise _unsupported(f"{bq!r} ({type(b).__name__}) between {q!r} and {nq!r}")
        if isinstance(m, _CONV):
            if lay.flatten:
                if not isinstance(nxt, nn.Linear) or nxt.in_features % c != 0:
                    raise _unsupported(f"{nq!r} after Flatten must be a Linear with a multiple of {c} inputs")
            elif not (isinstance(nxt, _CONV) and nxt.in_channels == c):
                raise _unsupported(f"{nq!r} must be a Conv with {c} input channels after {q!r}")
        elif not (isinstance(nxt, nn.Linear) and nxt.in_features == c):
            raise _unsupported(f"{nq!r} must be a Linear with {c} inputs after {q!r}")
    return layers


# ---------------------------------------------------------------------------------------------
# Scores and selection


def channel_scores(weight: torch.Tensor, p: int) -> list[float]:
    """``KMR.structured.score``: S_c = the correctly rounded binary64 sum over the channel's
    weight slice of fl64(|w|^p) (the p-th power of the L_p norm; the root is monotone and skipped).
    |w| is converted to binary64 exactly; for p = 2 the square is one IEEE binary64 product
    (exact for fp32/fp16/bf16 weights). The sum is math.fsum (exactly rounded), so the score does
    not depend on summation order."""
    w = weight.detach().to(device="cpu", dtype=torch.float64).reshape(weight.shape[0], -1).abs()
    if p == 2:
        w = w * w
    try:
        scores = [math.fsum(row) for row in w.tolist()]
    except OverflowError:
        scores = [math.inf]
    if not all(math.isfinite(x) for x in scores):  # KMR.structured.nonfinite: the score overflows
        raise RuleInputError("KMR.structured.nonfinite", "a channel score overflows binary64")
    return scores


def removed_per_layer(scores: Sequence[float], fraction: Fraction) -> list[int]:
    """``KMR.structured.count`` + ``KMR.structured.tie-break``: k = min(floor(f * C), C - 1)
    channels with the smallest keys (S_c, c); returned in ascending channel order."""
    c = len(scores)
    k = min(math.floor(fraction * c), c - 1)  # KMR.structured.count: keep >= 1 channel
    order = sorted(range(c), key=lambda i: (scores[i], i))  # KMR.structured.tie-break
    return sorted(order[:k])


def removed_global(scores: Sequence[Sequence[float]], fan_in: Sequence[int],
                   fraction: Fraction) -> list[list[int]]:
    """``KMR.structured.global-order``: K = floor(f * sum C_l) channels, taken in ascending order of
    (S_c / fan_in_l as an exact rational, layer index l, channel index c), skipping a channel whose
    removal would leave its layer empty."""
    total = sum(len(s) for s in scores)
    k = math.floor(fraction * total)
    keys = sorted((Fraction(s) / fan_in[li], li, ci)
                  for li, ss in enumerate(scores) for ci, s in enumerate(ss))
    left = [len(s) for s in scores]
    out: list[list[int]] = [[] for _ in scores]
    for _, li, ci in keys:
        if k == 0:
            break
        if left[li] == 1:  # KMR.structured.count: keep >= 1 channel per layer
            continue
        out[li].append(ci)
        left[li] -= 1
        k -= 1
    return [sorted(r) for r in out]


# ---------------------------------------------------------------------------------------------
# The rule


@dataclass(frozen=True)
class StructuredPruning:
    """The rule of spec/methods/structured.md.

    ``p``: the norm (1 or 2) of ``KMR.structured.score``; ``scope``: ``per-layer`` or ``global``
    for the knob ``fraction``; ``layers``: module names that get a per-layer knob
    ``fraction@<name>`` (``KMR.structured.per-layer-knob``); see :meth:`for_model`.
    """

    p: int = 2
    scope: Scope = "per-layer"
    layers: tuple[str, ...] = ()
    include: Patterns | None = None  # KMR.select.include on the prunable layers' parameter names
    exclude: Patterns = ()
    graph: bool = False  # KMR.structured.graph-mode: channel groups of the traced graph

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", as_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude, "exclude") or ())
        if self.p not in (1, 2) or isinstance(self.p, bool):
            raise KnobDomainError(f"{CLAUSE}.score", f"p must be 1 or 2, got {self.p!r}")
        if self.scope not in ("per-layer", "global"):
            raise KnobDomainError(f"{CLAUSE}.global-order",
                                  f"scope must be per-layer or global, got {self.scope!r}")

    @classmethod
    def for_model(cls, model: nn.Module, p: int = 2, scope: Scope = "per-layer", *,
                  include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  graph: bool = False) -> StructuredPruning:
        """A rule with a per-layer knob for each prunable layer (with ``graph``: each prunable
        group, ``KMR.structured.graph-knob``) of ``model`` that the patterns select."""
        inc, exc = as_patterns(include, "include"), as_patterns(exclude, "exclude") or ()
        if graph:
            check_supported(model)  # KMR.rule.unsupported-module
            names = tuple(g.name for g in _chosen_groups(analyse_graph(model), inc, exc))
            return cls(p, scope, names, inc, exc, graph=True)
        chosen = _chosen(analyse(model)[:-1], inc, exc)
        return cls(p, scope, tuple(lay.name for lay in chosen), inc, exc)

    def knobs(self) -> Sequence[Knob]:
        ks = [Knob("fraction", fraction_domain(), "increasing")]  # KMR.structured.knob
        ks += [Knob(f"fraction@{n}", fraction_domain(), "increasing") for n in self.layers]
        return ks

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        f = find_knob(self.knobs(), knob).check(value)  # KMR.knob.domain / KMR.knob.unknown
        frac = Fraction(to_exact(f, clause="KMR.knob.domain", error=KnobDomainError, what="fraction"))
        check_supported(model)  # KMR.rule.unsupported-module
        if self.graph:
            return self._apply_graph(model, knob, frac)
        layers = analyse(model)
        every = layers[:-1]  # KMR.structured.output-layer-kept
        prunable = _chosen(every, self.include, self.exclude)  # KMR.structured.select
        for lay in layers:
            for pn, t in lay.module.named_parameters():
                # KMR.structured.dtype KMR.structured.empty KMR.structured.nonfinite
                check_float_finite(f"{lay.name}.{pn}", t, CLAUSE)
            for bq, b in lay.bns:
                for pn, t in b.named_parameters():
                    check_float_finite(f"{bq}.{pn}", t, CLAUSE)
        scores = [channel_scores(lay.module.weight, self.p) for lay in prunable]
        if knob == "fraction" and self.scope == "global":  # KMR.structured.scope
            fan = [int(lay.module.weight[0].numel()) for lay in prunable]
            removed = removed_global(scores, fan, frac)
        elif knob == "fraction":
            removed = [removed_per_layer(s, frac) for s in scores]
        else:
            target = knob.split("@", 1)[1]  # KMR.structured.per-layer-knob
            names = [lay.name for lay in prunable]
            if target not in names:
                raise RuleInputError(f"{CLAUSE}.per-layer-knob",
                                     f"{target!r} is not a prunable layer of this model; prunable: {names}")
            removed = [removed_per_layer(s, frac) if lay.name == target else []
                       for lay, s in zip(prunable, scores, strict=True)]
        by_name = {lay.name: r for lay, r in zip(prunable, removed, strict=True)}
        return remove_channels(model, layers, [by_name.get(lay.name, []) for lay in every])


    def _apply_graph(self, model: nn.Module, knob: str, frac: Fraction) -> nn.Module:
        """``KMR.structured.graph-mode``: the same counts, order and tie-break over the groups of
        ``KMR.structured.graph-group`` in place of the layers of a stack."""
        an = analyse_graph(model)
        for name, mod in an.modules():
            for pn, t in mod.named_parameters(recurse=False):
                # KMR.structured.dtype KMR.structured.empty KMR.structured.nonfinite
                check_float_finite(f"{name}.{pn}", t, CLAUSE)
        prunable = _chosen_groups(an, self.include, self.exclude)  # KMR.structured.graph-select
        scored = [group_row_scores(g, self.p) for g in prunable]  # KMR.structured.graph-score
        scores = [s for s, _ in scored]
        if knob == "fraction" and self.scope == "global":  # KMR.structured.scope
            removed = removed_global(scores, [f for _, f in scored], frac)
        elif knob == "fraction":
            removed = [removed_per_layer(s, frac) for s in scores]
        else:
            target = knob.split("@", 1)[1]  # KMR.structured.graph-knob
            names = [g.name for g in prunable]
            if target not in names:
                raise RuleInputError(f"{CLAUSE}.per-layer-knob",
                                     f"{target!r} is not a prunable group of this model; prunable: {names}")
            removed = [removed_per_layer(s, frac) if g.name == target else []
                       for g, s in zip(prunable, scores, strict=True)]
        out = remove_groups(model, an, {g.index: r for g, r in zip(prunable, removed, strict=True)})
        if any(removed):
            try:  # KMR.structured.graph-recheck: the pruned graph passes the same rules
                analyse_graph(out)
            except RuleInputError as e:
                raise RuleInputError(f"{CLAUSE}.graph-recheck", f"the pruned model no longer passes the "
                                                                f"grouping rules: {e.message}") from None
        return out


def _chosen_groups(an: GraphAnalysis, include: Patterns | None, exclude: Patterns) -> list[Group]:
    """``KMR.structured.graph-select``: the groups that are not pinned and whose scored members
    (the Conv/Linear layers holding their rows) are all chosen by ``include`` / ``exclude``."""
    free = [g for g in an.groups if not g.pinned]  # KMR.structured.graph-output
    if include is None and not exclude:
        return free
    seen: dict[str, Layer] = {}
    for g in an.groups:
        for name, m, _ in g.rows:
            seen.setdefault(name, Layer(name, m))
    ok = {lay.name for lay in _chosen(list(seen.values()), include, exclude)}
    return [g for g in free if all(name in ok for name, _, _ in g.rows)]


def _chosen(prunable: list[Layer], include: Patterns | None, exclude: Patterns) -> list[Layer]:
    """``KMR.select.include`` / ``KMR.select.exclude``: a prunable layer is chosen when one of its
    parameters' qualified names is selected and none matches an exclude pattern."""
    if include is None and not exclude:
        return prunable
    pnames = {lay.name: [f"{lay.name}.{pn}" for pn, _ in lay.module.named_parameters()] for lay in prunable}
    every = [q for lay in prunable for q in pnames[lay.name]]
    keep = set(select_names(every, every, include, exclude, "structured pruning"))
    return [lay for lay in prunable if any(q in keep for q in pnames[lay.name])
            and not any(fnmatch.fnmatchcase(q, x) for q in pnames[lay.name] for x in exclude)]


def remove_channels(model: nn.Module, layers: list[Layer], removed: Sequence[Sequence[int]]) -> nn.Module:
    """``KMR.structured.removal``: physically remove channels ``removed[l]`` of layer l (l over the
    prunable layers ``layers[:-1]``) and the matching BN channels and next-layer inputs.
    Kept channels keep their relative order; tensors of untouched modules are shared."""
    new = clone_tree(model)  # KMR.structured.sharing: untouched tensors are shared, none is modified
    n = len(layers)
    keep_out: list[list[int] | None] = [None] * n
    for li, rem in enumerate(removed):
        if rem:
            c = _channels_out(layers[li].module)
            r = set(rem)
            keep_out[li] = [i for i in range(c) if i not in r]
    for li, lay in enumerate(layers):
        ko = keep_out[li]
        ki = keep_out[li - 1] if li > 0 else None
        if ki is not None and layers[li - 1].flatten:  # KMR.structured.flatten: blocks of size s
            assert isinstance(lay.module, nn.Linear)
            s = lay.module.in_features // _channels_out(layers[li - 1].module)
            ki = [c * s + j for c in ki for j in range(s)]
        if ko is None and ki is None:
            continue
        src = lay.module
        mod = new.get_submodule(lay.name)
        assert isinstance(mod, (nn.Linear, *_CONV))
        w = src.weight.detach()
        dev = w.device
        if ko is not None:
            w = w.index_select(0, torch.tensor(ko, dtype=torch.long, device=dev))  # KMR.structured.removal
            if src.bias is not None:
                set_parameter(new, f"{lay.name}.bias",
                              src.bias.detach().index_select(0, _index(ko, src.bias)))
            if isinstance(mod, nn.Linear):
                mod.out_features = len(ko)
            else:
                mod.out_channels = len(ko)
            for bq, bn in lay.bns:  # KMR.structured.bn
                bmod = new.get_submodule(bq)
                assert isinstance(bmod, _BN)
                for pn, t in bn.named_parameters(recurse=False):
                    set_parameter(new, f"{bq}.{pn}", t.detach().index_select(0, _index(ko, t)))
                for bn_name in ("running_mean", "running_var"):
                    buf = bn._buffers.get(bn_name)
                    if buf is not None:
                        bmod._buffers[bn_name] = buf.index_select(0, _index(ko, buf))
                bmod.num_features = len(ko)
        if ki is not None:  # KMR.structured.next-layer-inputs
            w = w.index_select(1, torch.tensor(ki, dtype=torch.long, device=dev))
            if isinstance(mod, nn.Linear):
                mod.in_features = len(ki)
            else:
                mod.in_channels = len(ki)
        set_parameter(new, f"{lay.name}.weight", w.contiguous())
    return new


def _index(keep: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(keep, dtype=torch.long, device=like.device)
