"""Torch meters (spec/meters.md): parameters, nonzeros, MACs (exact integers) and latency
(informative). No meter modifies the model it measures (not even BatchNorm running statistics).
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from kmr_ref.core.errors import MeterError
from kmr_ref.core.meters import CostMeter, InformativeMeter, derivation
from kmr_ref.core.rules import current_scope
from kmr_ref.methods.modules import PrunableFilter, check_subnormals, clone_tree, ordered_parameters

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def all_parameters(module_name: str, module: nn.Module, pname: str, p: torch.Tensor) -> bool:
    """The default filter of ``KMR.meter.nonzeros``: every parameter."""
    return True


def _unique_parameters(model: nn.Module, keep: PrunableFilter) -> list[torch.Tensor]:
    # named_modules() visits each module once; a parameter object held twice is counted once
    return [p for _, p in _unique_named(model, keep)]


def parameter_count(model: nn.Module) -> int:
    """``KMR.meter.params``: the sum of ``numel()`` over the model's distinct parameter objects
    (a tied parameter counts once; buffers do not count)."""
    return sum(int(p.numel()) for p in _unique_parameters(model, all_parameters))


def nonzero_count(model: nn.Module, keep: PrunableFilter = all_parameters) -> int:
    """``KMR.meter.nonzeros``: entries != 0 in the distinct parameters that pass ``keep``
    (``-0.0`` is zero; NaN is nonzero)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _unique_parameters(model, keep))


def _unique_named(model: nn.Module, keep: PrunableFilter) -> Iterator[tuple[str, torch.Tensor]]:
    # each distinct parameter once, at its first qualified name (KMR.prune.tensor-order's walk)
    return ordered_parameters(model, keep, checked=True)


@dataclass(frozen=True)
class _Counts:
    total: int
    per: Mapping[str, int | None]  # first name -> nonzeros (None: not counted by the filter)
    depth: int  # how many differences on top of a full count


_MAX_DEPTH = 8  # a chain of differences longer than this is flattened into one dict


class NonzeroCounter:
    """A nonzero count over the distinct parameters that ``walk`` yields (``KMR.meter.nonzeros``,
    ``KMR.prune.cost-meter``), incremental where ``KMR.meter.delta`` allows it.

    Outside an analysis scope (``KMR.rule.analysis-scope``) every call counts the whole model, as
    ``walk`` gives it. Inside one, the per-tensor counts of each model measured are kept for the
    scope (weakly: they vanish with the model); a model with a derivation record whose parent's
    counts are kept (or the parent, counted in full now and kept) is measured by recounting its
    changed tensors only; the result equals the full count."""

    def __init__(self, walk: Callable[[nn.Module], Iterable[tuple[str, torch.Tensor]]], keep: PrunableFilter,
                 check: bool) -> None:
        self.walk = walk
        self.keep = keep
        self.check = check  # the walk runs check_supported; the incremental path keeps that refusal
        self.incremental = 0  # informative: how many measurements took the incremental path

    def _full(self, model: nn.Module) -> _Counts:
        per: dict[str, int | None] = {n: int(torch.count_nonzero(p.detach())) for n, p in self.walk(model)}
        return _Counts(sum(c for c in per.values() if c is not None), per, 0)

    def _one(self, model: nn.Module, name: str) -> int | None:
        path, _, pname = name.rpartition(".")
        mod = model.get_submodule(path) if path else model
        p = mod._parameters.get(pname)
        if p is None or not self.keep(path, mod, pname, p):
            return None
        return int(torch.count_nonzero(p.detach()))

    def __call__(self, model: nn.Module) -> int:
        scope = current_scope()
        if scope is None:
            return self._full(model).total
        kept = scope.get("nonzero-counts", self)
        if not isinstance(kept, weakref.WeakKeyDictionary):
            kept = weakref.WeakKeyDictionary()
            scope.put("nonzero-counts", self, kept)
        hit = kept.get(model)
        if hit is not None:
            return int(hit.total)
        d = derivation(model)  # KMR.meter.delta
        if d is None or not isinstance(d[0], nn.Module):
            counts = self._full(model)
        else:
            parent, changed = d
            base = kept.get(parent)
            if base is None:
                base = kept[parent] = self._full(parent)
            if self.check:
                check_subnormals()  # KMR.rule.subnormals, as the full walk would
            delta = {n: self._one(model, n) for n in changed}
            total = base.total + sum(c or 0 for c in delta.values()) - sum(base.per.get(n) or 0 for n in changed)
            per: Mapping[str, int | None] = ChainMap(delta, base.per)  # type: ignore[arg-type]
            if base.depth + 1 > _MAX_DEPTH:
                per = dict(per)
            counts = _Counts(total, per, 0 if isinstance(per, dict) else base.depth + 1)
            self.incremental += 1
        kept[model] = counts
        return counts.total


def _as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _eval_copy(model: nn.Module) -> nn.Module:
    # clone_tree gives every module its own __dict__, so eval() flips only the copies' flags;
    # in eval mode BatchNorm does not update the (shared) running statistics.
    return clone_tree(model).eval()


def _fused_attention_formulas() -> dict[object, object]:
    """``KMR.meter.macs``: FlopCounterMode registers its attention formula (``sdpa_flop``) for the
    CUDA kernels of scaled-dot-product attention only; the CPU kernels it dispatches to here get
    the very same formula (torch's own, not one written by hand)."""
    aten = torch.ops.aten
    formula = flop_registry[aten._scaled_dot_product_flash_attention]

    def same(*args: object, out_val: object = None, **kwargs: object) -> object:
        return formula(*args, out_val=out_val, **kwargs)

    same._get_raw = True  # type: ignore[attr-defined]  # already shape-wrapped by torch
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    return {getattr(aten, n): same for n in names if hasattr(aten, n)}


def macs(model: nn.Module, example_input: Inputs) -> int:
    """``KMR.meter.macs``: FLOPs / 2 of one forward pass on ``example_input`` in eval mode without
    autograd, as counted by ``torch.utils.flop_counter.FlopCounterMode`` (which counts
    2 * multiply-accumulates for matmul, convolution and attention and nothing for elementwise
    operations, bias additions included), with the fused paths made visible: the
    ``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` fast path is switched off for the pass
    and scaled-dot-product attention on CPU is counted by torch's attention formula."""
    m = _eval_copy(model)
    counter = FlopCounterMode(display=False, custom_mapping=_fused_attention_formulas())
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # KMR.meter.macs: the fused kernel hides its math
    try:
        with torch.no_grad(), counter:
            m(*_as_tuple(example_input))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    flops = int(counter.get_total_flops())
    if flops % 2 != 0:
        raise MeterError("KMR.meter.macs", f"FlopCounterMode counted an odd number of FLOPs ({flops})")
    return flops // 2


def latency_s(model: nn.Module, example_input: Inputs, repeats: int = 10) -> float:
    """``KMR.meter.latency`` (informative): the median wall time in seconds of ``repeats`` forward
    passes (eval mode, no autograd) after one warm-up pass."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise MeterError("KMR.meter.latency", f"repeats must be an int >= 1, got {repeats!r}")
    m = _eval_copy(model)
    args = _as_tuple(example_input)
    cuda = any(a.is_cuda for a in args)
    times: list[float] = []
    with torch.no_grad():
        m(*args)
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(*args)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def parameter_meter() -> CostMeter[nn.Module]:
    """``KMR.meter.params`` as a cost meter."""
    return CostMeter("params", parameter_count, "parameters")


def nonzero_meter(keep: PrunableFilter = all_parameters) -> CostMeter[nn.Module]:
    """``KMR.meter.nonzeros`` as a cost meter (incremental inside an analysis scope,
    ``KMR.meter.delta``: equal to :func:`nonzero_count`)."""
    return CostMeter("nonzeros", NonzeroCounter(lambda m: _unique_named(m, keep), keep, False),
                     "nonzero parameters")


def macs_meter(example_input: Inputs) -> CostMeter[nn.Module]:
    """``KMR.meter.macs`` as a cost meter on a fixed example input."""
    return CostMeter("macs", lambda m: macs(m, example_input), "multiply-accumulates")


def latency_meter(example_input: Inputs, repeats: int = 10) -> InformativeMeter[nn.Module]:
    """``KMR.meter.latency`` as an informative meter (never normative: ``KMR.meter.informative``)."""
    return InformativeMeter("latency_s", lambda m: latency_s(m, example_input, repeats))
