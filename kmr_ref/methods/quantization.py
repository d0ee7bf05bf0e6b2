"""Uniform affine quantization (paper §5.2), as ``spec/methods/quantization.md`` states it.

Clarity first. :func:`quantize_groups` / :func:`dequantize_groups` are the per-group reference on
plain tensors (every group is one row of a 2-D float32 tensor); ``kmr_ref.kernels`` holds the fused
kernel, which the tests prove bit-for-bit equal to these two functions. Every operation below is a
single IEEE binary32 operation with round-to-nearest-even, in the order the spec writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.knobs import IntRange, Knob, KnobValue, find_knob
from kmr_ref.methods.modules import (
    Empty,
    Patterns,
    PrunableFilter,
    as_patterns,
    check_float_finite,
    clone_tree,
    default_quantizable,
    selected_parameters,
)

Scheme = Literal["symmetric", "asymmetric"]
Granularity = Literal["tensor", "channel", "group"]

BITS = "bits"
GROUP_SIZE = "group_size"
MIN_BITS, MAX_BITS = 2, 16
MAX_GROUP_SIZE = 2**31
SCALE_FLOOR = 2.0**-23  # KMR.quant.scale-floor
MAGNITUDE_LIMIT = 2.0**126  # KMR.quant.magnitude
RECORDS_ATTR = "_kmr_quant"  # KMR.quant.codes-kept: {param name: QuantRecord} on the owning module
CODES_SUFFIX, SCALE_SUFFIX, ZP_SUFFIX = "_qcodes", "_qscale", "_qzp"


def code_range(bits: int, scheme: Scheme) -> tuple[int, int]:
    """``KMR.quant.bits``: (qmin, qmax): symmetric ``(-(2^(b-1)-1), 2^(b-1)-1)``, asymmetric ``(0, 2^b-1)``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise KnobDomainError("KMR.quant.bits", f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    if scheme == "asymmetric":
        return 0, 2**bits - 1
    raise ValueError(f"unknown scheme {scheme!r}")


def group_shape(shape: Sequence[int], granularity: Granularity, group_size: int) -> tuple[int, int]:
    """``KMR.quant.groups``: (G, L) such that the groups are the rows of the row-major flat weight
    reshaped to (G, L). out = shape[0] (1 for a 0-d tensor), R = numel / out."""
    n = 1
    for d in shape:
        n *= int(d)
    out = int(shape[0]) if len(shape) >= 1 else 1
    r = n // out if out else 0
    if granularity == "tensor":
        return 1, n
    if granularity == "channel":
        return out, r
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or not 1 <= group_size <= MAX_GROUP_SIZE:
            raise KnobDomainError("KMR.quant.groups", f"group_size must be an integer in [1, 2^31], got {group_size!r}")
        if r % group_size != 0:  # KMR.quant.group-divides
            raise RuleInputError("KMR.quant.group-divides", f"group_size {group_size} does not divide the "
                                 f"row length R = {r} (shape {list(shape)})")
        return n // group_size, group_size
    raise ValueError(f"unknown granularity {granularity!r}")


def quantize_groups(w2d: torch.Tensor, bits: int, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize each row of the float32 tensor ``w2d`` (G, L) as one group.

    Returns ``(codes, scale, zp)``: int32 (G, L), float32 (G,), int32 (G,). The caller guarantees
    finite values with |w| <= 2^126 (``KMR.quant.nonfinite``, ``KMR.quant.magnitude``)."""
    if w2d.dtype != torch.float32 or w2d.dim() != 2:
        raise TypeError("quantize_groups takes a 2-D float32 tensor")
    qmin, qmax = code_range(bits, scheme)
    w = w2d.contiguous()
    zero = torch.zeros((), dtype=torch.float32, device=w.device)
    lo = torch.minimum(w.amin(dim=1), zero)  # KMR.quant.range
    hi = torch.maximum(w.amax(dim=1), zero)  # KMR.quant.range
    qmax_t = torch.full_like(lo, float(qmax))
    # KMR.quant.scale: symmetric max(-lo, hi) / qmax; asymmetric fp32(hi - lo) / qmax (IEEE fp32 ops)
    span = torch.maximum(-lo, hi) if scheme == "symmetric" else hi - lo
    scale = span / qmax_t  # KMR.quant.scale: one correctly rounded fp32 division
    scale = torch.maximum(scale, torch.full_like(scale, SCALE_FLOOR))  # KMR.quant.scale-floor
    inv_scale = torch.ones_like(scale) / scale  # KMR.quant.rounding: one division per group
    if scheme == "symmetric":
        zp = torch.zeros_like(scale, dtype=torch.int64)
    else:
        zl = torch.round(lo * inv_scale).to(torch.int64)  # KMR.quant.zero-point (torch.round: half-to-even)
        zp = torch.clamp(qmin - zl, qmin, qmax)  # KMR.quant.zero-point
    r = torch.round(w * inv_scale[:, None]).to(torch.int64)  # KMR.quant.rounding: fp32 multiply, half-to-even
    codes = torch.clamp(r + zp[:, None], qmin, qmax)  # KMR.quant.clamp
    return codes.to(torch.int32), scale, zp.to(torch.int32)


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """``KMR.quant.dequant``: ``dq = fp32(fp32(q - zp) * scale)`` per row; float32 (G, L)."""
    d = (codes.to(torch.int64) - zp.to(torch.int64)[:, None]).to(torch.float32)  # exact: |q - zp| < 2^17
    return d * scale.to(torch.float32)[:, None]  # KMR.quant.dequant: one fp32 multiply


@dataclass(frozen=True)
class QuantRecord:
    """``KMR.quant.codes-kept``: how a parameter was quantized (its codes live in buffers)."""

    bits: int
    scheme: Scheme
    granularity: Granularity
    group_size: int  # L, the group length (n for "tensor", R for "channel")
    num_groups: int  # G
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return self.num_groups * self.group_size


@dataclass(frozen=True)
class KeptCodes:
    """A valid quantization of one parameter: its record, codes (G, L), scale (G,), zp (G,)."""

    record: QuantRecord
    codes: torch.Tensor
    scale: torch.Tensor
    zp: torch.Tensor

    def dequantized(self) -> torch.Tensor:
        """The weight these codes stand for, in the parameter's shape and dtype."""
        dq = dequantize_groups(self.codes, self.scale, self.zp)
        return dq.reshape(self.record.shape).to(self.record.dtype)  # KMR.quant.dtype: cast back


def kept_codes(module: nn.Module, pname: str) -> KeptCodes | None:
    """``KMR.quant.codes-kept``: the kept codes of ``module``'s parameter ``pname``, or None.

    A record is *valid* only while the parameter is, bit for bit, the dequantization of its codes
    (same shape and dtype); a parameter changed by a later rule (e.g. pruning) is a float tensor again."""
    recs = module.__dict__.get(RECORDS_ATTR)
    if not isinstance(recs, dict) or pname not in recs:
        return None
    rec = recs[pname]
    p = module._parameters.get(pname)
    codes = module._buffers.get(pname + CODES_SUFFIX)
    scale = module._buffers.get(pname + SCALE_SUFFIX)
    zp = module._buffers.get(pname + ZP_SUFFIX)
    if not isinstance(rec, QuantRecord) or p is None or codes is None or scale is None or zp is None:
        return None
    if tuple(p.shape) != rec.shape or p.dtype != rec.dtype:
        return None
    kc = KeptCodes(rec, codes, scale, zp)
    dq = kc.dequantized().reshape(-1)
    if not torch.equal(dq.view(torch.uint8), p.detach().reshape(-1).view(torch.uint8)):
        return None
    return kc


def _check_magnitude(name: str, w32: torch.Tensor) -> None:
    if bool((w32.abs() > MAGNITUDE_LIMIT).any()):  # KMR.quant.magnitude
        raise RuleInputError("KMR.quant.magnitude", f"{name} has |w| > 2^126 (after conversion to float32)")


@dataclass(frozen=True)
class UniformQuantization:
    """The uniform affine quantization rule (``KMR.quant.*``).

    Knobs: ``bits`` (2..16, more aggressive = decreasing) and, for ``granularity="group"``,
    ``group_size`` (1..2^31, more aggressive = increasing). The knob not being applied takes the
    constructor's value (``bits``, ``group_size``).
    """

    scheme: Scheme = "symmetric"
    granularity: Granularity = "channel"
    bits: int = 8
    group_size: int = 128
    quantizable: PrunableFilter = field(default=default_quantizable)
    include: Patterns | None = None
    exclude: Patterns = ()
    tensor_names: tuple[str, ...] = ()  # bits@<name> knobs (KMR.quant.per-tensor-bits)
    empty: Empty = "skip"  # KMR.quant.empty; "refuse": spec 0.1.0 (its frozen vectors)

    @classmethod
    def for_model(cls, model: nn.Module, scheme: Scheme = "symmetric", granularity: Granularity = "channel",
                  bits: int = 8, group_size: int = 128, quantizable: PrunableFilter = default_quantizable, *,
                  include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  empty: Empty = "skip") -> UniformQuantization:
        """The rule with a ``bits@<name>`` knob for every selected tensor of ``model``."""
        inc, exc = as_patterns(include, "include"), as_patterns(exclude, "exclude") or ()
        names = tuple(n for n, _ in selected_parameters(model, quantizable, inc, exc, "quantization", empty))
        return cls(scheme, granularity, bits, group_size, quantizable, inc, exc, names, empty)

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", as_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude, "exclude") or ())
        if self.scheme not in ("symmetric", "asymmetric"):
            raise ValueError(f"scheme must be 'symmetric' or 'asymmetric', got {self.scheme!r}")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {self.granularity!r}")
        code_range(self.bits, self.scheme)
        if (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                or not 1 <= self.group_size <= MAX_GROUP_SIZE):
            raise KnobDomainError("KMR.quant.groups", f"group_size must be in [1, 2^31], got {self.group_size!r}")

    def knobs(self) -> Sequence[Knob]:
        ks = [Knob(BITS, IntRange(MIN_BITS, MAX_BITS), "decreasing")]  # KMR.quant.bits
        if self.granularity == "group":
            ks.append(Knob(GROUP_SIZE, IntRange(1, MAX_GROUP_SIZE), "increasing"))  # KMR.quant.groups
        # KMR.quant.per-tensor-bits
        ks += [Knob(f"{BITS}@{n}", IntRange(MIN_BITS, MAX_BITS), "decreasing") for n in self.tensor_names]
        return ks

    def targets(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        """``KMR.quant.selection``: the selected parameters in ``KMR.prune.tensor-order``, narrowed
        by ``include`` / ``exclude``; zero-size tensors are skipped (``KMR.quant.empty``)."""
        return selected_parameters(model, self.quantizable, self.include, self.exclude, "quantization", self.empty)

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        k = find_knob(self.knobs(), knob)  # KMR.knob.unknown
        kind, _, target = knob.partition("@")
        try:
            v = k.check(value)
        except KnobDomainError as e:
            clause = "KMR.quant.bits" if kind == BITS else "KMR.quant.groups"
            raise KnobDomainError(clause, e.message) from e
        assert isinstance(v, int)
        targets = self.targets(model)
        if target:  # KMR.quant.per-tensor-bits: this tensor alone, the others keep what they are
            targets = [(n, t) for n, t in targets if n == target]
            if not targets:
                raise KnobDomainError("KMR.knob.unknown", f"the model has no quantizable tensor {target!r}")
        bits, gsize = (v, self.group_size) if kind == BITS else (self.bits, v)
        return quantize_model(model, bits, self.scheme, self.granularity, gsize, self.quantizable, targets=targets)


def quantize_model(model: nn.Module, bits: int, scheme: Scheme, granularity: Granularity, group_size: int,
                   quantizable: PrunableFilter = default_quantizable,
                   targets: list[tuple[str, torch.Tensor]] | None = None) -> nn.Module:
    """The rule's body: validate every selected tensor, then quantize them into a clone."""
    code_range(bits, scheme)  # KMR.quant.bits
    if targets is None:
        targets = selected_parameters(model, quantizable, None, (), "quantization")  # KMR.quant.empty: skipped
    plans: list[tuple[str, torch.Tensor, torch.Tensor, int, int]] = []
    for name, t in targets:  # every check runs before anything is built
        check_float_finite(name, t, "KMR.quant")  # KMR.quant.dtype, KMR.quant.nonfinite (.empty if "refuse")
        w32 = t.detach().to(torch.float32)  # KMR.quant.dtype: fp32 arithmetic
        _check_magnitude(name, w32)
        g, length = group_shape(tuple(t.shape), granularity, group_size)  # KMR.quant.group-divides
        plans.append((name, t, w32, g, length))
    out = clone_tree(model)  # KMR.rule.no-mutation
    owners = {id(m): m for m in out.modules()}
    for name, t, w32, g, length in plans:
        codes, scale, zp = quantize_groups(w32.reshape(g, length), bits, scheme)
        dq = dequantize_groups(codes, scale, zp).reshape(t.shape).to(t.dtype)  # KMR.quant.dtype: cast back
        if not bool(torch.isfinite(dq).all()):  # KMR.quant.magnitude: overflow of a narrow dtype
            raise RuleInputError("KMR.quant.magnitude", f"{name}: a dequantized value overflows {t.dtype}")
        newp = nn.Parameter(dq, requires_grad=t.requires_grad)
        for m in owners.values():  # a tied parameter is replaced under every name that holds it
            for pn, p in list(m._parameters.items()):
                if p is t:
                    m._parameters[pn] = newp
        *path, leaf = name.split(".")
        owner = out.get_submodule(".".join(path)) if path else out
        owner._non_persistent_buffers_set = set(owner._non_persistent_buffers_set)  # own set: no-mutation
        owner.register_buffer(leaf + CODES_SUFFIX, codes, persistent=False)  # KMR.quant.codes-kept
        owner.register_buffer(leaf + SCALE_SUFFIX, scale, persistent=False)
        owner.register_buffer(leaf + ZP_SUFFIX, zp, persistent=False)
        rec = QuantRecord(bits, scheme, granularity, length, g, tuple(int(d) for d in t.shape), t.dtype)
        old = owner.__dict__.get(RECORDS_ATTR)
        recs = dict(old) if isinstance(old, dict) else {}
        recs[leaf] = rec
        object.__setattr__(owner, RECORDS_ATTR, recs)  # a new dict: the input's dict is never touched
    return out
