"""Torch meters (spec/meters.md): parameters, nonzeros, MACs (exact integers) and latency
(informative). No meter modifies the model it measures (not even BatchNorm running statistics).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from kmr_ref.core.errors import MeterError
from kmr_ref.core.meters import CostMeter, InformativeMeter
from kmr_ref.methods.modules import PrunableFilter, clone_tree

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def all_parameters(module_name: str, module: nn.Module, pname: str, p: torch.Tensor) -> bool:
    """The default filter of ``KMR.meter.nonzeros``: every parameter."""
    return True


def _unique_parameters(model: nn.Module, keep: PrunableFilter) -> list[torch.Tensor]:
    # named_modules() visits each module once; a parameter object held twice is counted once
    seen: set[int] = set()
    out: list[torch.Tensor] = []
    for mname, mod in model.named_modules():
        for pname, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if keep(mname, mod, pname, p):
                out.append(p)
    return out


def parameter_count(model: nn.Module) -> int:
    """``KMR.meter.params``: the sum of ``numel()`` over the model's distinct parameter objects
    (a tied parameter counts once; buffers do not count)."""
    return sum(int(p.numel()) for p in _unique_parameters(model, all_parameters))


def nonzero_count(model: nn.Module, keep: PrunableFilter = all_parameters) -> int:
    """``KMR.meter.nonzeros``: entries != 0 in the distinct parameters that pass ``keep``
    (``-0.0`` is zero; NaN is nonzero)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _unique_parameters(model, keep))


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
    """``KMR.meter.nonzeros`` as a cost meter."""
    fn: Callable[[nn.Module], int] = lambda m: nonzero_count(m, keep)  # noqa: E731
    return CostMeter("nonzeros", fn, "nonzero parameters")


def macs_meter(example_input: Inputs) -> CostMeter[nn.Module]:
    """``KMR.meter.macs`` as a cost meter on a fixed example input."""
    return CostMeter("macs", lambda m: macs(m, example_input), "multiply-accumulates")


def latency_meter(example_input: Inputs, repeats: int = 10) -> InformativeMeter[nn.Module]:
    """``KMR.meter.latency`` as an informative meter (never normative: ``KMR.meter.informative``)."""
    return InformativeMeter("latency_s", lambda m: latency_s(m, example_input, repeats))
