"""One measurement in a fresh process: ``python -m kmr_ref.bench.worker CASE IMPL SIZE REPEATS
THREADS DEVICE`` prints one JSON object (times, peak memory, result bytes, and for ``peer`` the
agreement with ours); ``python -m kmr_ref.bench.worker --interleave CASE SIZE REPEATS THREADS DEVICE
IMPL,IMPL,...`` times several implementations round-robin in one process (:func:`interleave`).

Implementations per case:

* ``global_prune`` — ``ours``: :func:`kmr_ref.kernels.prune_global` (the rule's out-of-place path);
  ``peer``: ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` over ``nn.Linear``
  modules wrapping the same tensors, ``amount`` = the same count k (an int, so both prune exactly
  k = floor(s·n) entries); ``copy``: ``clone()`` of every tensor; ``copy_into``: ``copy_`` of every
  tensor into a preallocated one (the bandwidth floor without the allocation's page faults).
* ``quant_per_channel`` — int8 symmetric (codes in [-127, 127]), one group per output row.
  ``ours``: :func:`kmr_ref.kernels.quant_fused.quantize_groups` (observe + codes + dequantized
  weight); ``peer``: the same observe (``torch.amin``/``amax`` and the spec's scale formula), then
  ``torch.fake_quantize_per_channel_affine``; ``copy``: ``clone()``; ``copy_into``: as above.
* ``ours_compiled`` (quantization, ``kmr bench --compile``): ours with ``compile=True`` (the quantize
  pass of each block as one ``torch.compile``d loop); the warm-up calls (the tiny model, then one
  call on the model: the compile and its recompiles for the model's block shapes) are timed apart
  (``compile_s``), the rounds time the steady state.
* ``baseline`` (both cases): the same call as ``ours`` on the kernels in the directory named by
  ``KMR_BENCH_BASELINE`` (files ``prune_select.py`` and ``quant_fused.py``, e.g. an older commit's
  ``kmr_ref/kernels``), for before/after figures measured side by side.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from kmr_ref.bench.models import make_tensors
from kmr_ref.kernels.parallel import workers_for
from kmr_ref.kernels.prune_select import magnitude_masks, prune_global
from kmr_ref.kernels.quant_fused import _qparams, quantize_groups
from kmr_ref.methods.pruning import prune_count
from kmr_ref.methods.quantization import Scheme, code_range

SPARSITY = Fraction(7, 10)
BITS = 8
SCHEME: Scheme = "symmetric"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class MemProbe:
    """Peak memory of one call: CUDA allocator stats, or RSS with the high-water mark reset
    through ``/proc/self/clear_refs`` (Linux); elsewhere ``ru_maxrss`` (no reset: an upper bound)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0
        self.method = "cuda-allocator" if device.type == "cuda" else "rss"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _status_kb("VmRSS")
            self.method = "rss (VmHWM reset by clear_refs)"
        except OSError:
            import resource
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "rss (ru_maxrss, no reset)"

    def peak_delta(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device)) - self.base
        if self.method.startswith("rss (VmHWM"):
            return _status_kb("VmHWM") - self.base
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def _nbytes(ts: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _linear_over(t: torch.Tensor) -> nn.Linear:
    m = nn.Linear(t.shape[1], t.shape[0], bias=False, device="meta")
    m.weight = nn.Parameter(t, requires_grad=False)  # shares the tensor: no copy
    return m


def _baseline(name: str) -> Any:
    """The module ``name`` (``prune_select`` or ``quant_fused``) from ``$KMR_BENCH_BASELINE``."""
    path = os.path.join(os.environ["KMR_BENCH_BASELINE"], name + ".py")
    spec = importlib.util.spec_from_file_location(f"kmr_bench_baseline_{name}", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _impl(case: str, impl: str, tensors: list[torch.Tensor]) -> tuple[Callable[[], Any], Callable[[Any], int]]:
    """(call, bytes of what the call returns and keeps) for one case and implementation."""
    n = sum(t.numel() for t in tensors)
    if impl == "copy":
        return (lambda: [t.clone() for t in tensors]), _nbytes
    if impl == "copy_into":
        dst = [torch.empty_like(t) for t in tensors]
        for d in dst:
            d.fill_(0.0)  # touch the pages before timing: no page faults in the call
        return (lambda: [d.copy_(t) for d, t in zip(dst, tensors, strict=True)]), lambda out: 0
    if case == "global_prune":
        k = prune_count(SPARSITY, n)
        if impl in ("ours", "baseline"):
            fn = _baseline("prune_select").prune_global if impl == "baseline" else prune_global

            def ours() -> list[torch.Tensor]:
                out: list[torch.Tensor] = fn(tensors, k)
                return out
            ids = {id(t) for t in tensors}
            return ours, lambda out: _nbytes([o for o in out if id(o) not in ids])

        def peer() -> list[nn.Linear]:
            mods = [_linear_over(t) for t in tensors]
            torch_prune.global_unstructured(
                [(m, "weight") for m in mods], pruning_method=torch_prune.L1Unstructured, amount=k)
            return mods
        return peer, lambda mods: _nbytes([m.weight for m in mods] + [m.weight_mask for m in mods])
    if case == "quant_per_channel":
        qmin, qmax = code_range(BITS, SCHEME)
        if impl == "ours_compiled":
            def ours_c() -> list[Any]:
                return [quantize_groups(t, BITS, SCHEME, compile=True) for t in tensors]
            return ours_c, lambda out: sum(_nbytes([q.codes, q.scale, q.zp, q.dequant]) for q in out)
        if impl in ("ours", "baseline"):
            qfn = _baseline("quant_fused").quantize_groups if impl == "baseline" else quantize_groups

            def ours_q() -> list[Any]:
                return [qfn(t, BITS, SCHEME) for t in tensors]
            return ours_q, lambda out: sum(_nbytes([q.codes, q.scale, q.zp, q.dequant]) for q in out)

        def peer_q() -> list[torch.Tensor]:
            res = []
            for t in tensors:
                scale, _, zp = _qparams(t.amin(dim=1), t.amax(dim=1), qmin, qmax, SCHEME)
                res.append(torch.fake_quantize_per_channel_affine(t, scale, zp.to(torch.int32), 0, qmin, qmax))
            return res
        return peer_q, _nbytes
    raise ValueError(f"unknown case {case!r}")


def _agree(case: str, tensors: list[torch.Tensor], peer_out: Any) -> int:
    """Entries where the peer's result differs from ours: prune masks, or dequantized bits."""
    n = sum(t.numel() for t in tensors)
    bad = 0
    if case == "global_prune":
        keep = magnitude_masks(tensors, prune_count(SPARSITY, n))
        for m, kp in zip(peer_out, keep, strict=True):
            bad += int(((m.weight_mask != 0) != kp).sum())
    else:
        for t, dq in zip(tensors, peer_out, strict=True):
            ours = quantize_groups(t, BITS, SCHEME).dequant
            assert ours is not None
            bad += int((ours.view(torch.int32) != dq.view(torch.int32)).sum())
    return bad


def measure(case: str, impl: str, size: int, repeats: int, threads: int, device: str) -> dict[str, Any]:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    with torch.no_grad():  # warm-up on a tiny model: one-time lazy initialisation (thread pool,
        _impl(case, impl, make_tensors(4096, device))[0]()  # kernels) is not charged to the call
    tensors = make_tensors(size, device)
    call, kept_bytes = _impl(case, impl, tensors)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    probe = MemProbe(dev)
    times: list[float] = []
    peak = 0
    result_bytes = 0
    out: Any = None
    with torch.no_grad():
        for r in range(repeats):
            out = None
            if r == 0:
                probe.start()
            sync()
            t0 = time.perf_counter()
            out = call()
            sync()
            times.append(time.perf_counter() - t0)
            if r == 0:
                peak = probe.peak_delta()
                result_bytes = kept_bytes(out)
        mismatches = _agree(case, tensors, out) if impl == "peer" else None
    return {
        "case": case, "impl": impl, "size": size, "times": times, "median_s": statistics.median(times),
        "peak_delta_bytes": peak, "result_bytes": result_bytes,
        "model_bytes": _nbytes(tensors), "mem_method": probe.method, "mismatches": mismatches,
    }


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the process's own symbols (looked up once), or None."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


def release_free_memory() -> bool:
    """Return the allocator's free memory to the OS (glibc ``malloc_trim(0)``), so that every timed
    call finds the same allocator state: its results on fresh pages, whichever implementation ran
    before it (else a call right after one that freed its outputs reuses their pages, and one right
    after torch's pruning, which frees 4 GB, does not). False where there is no glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def interleave(case: str, impls: list[str], size: int, repeats: int, threads: int, device: str) -> dict[str, Any]:
    """Time every implementation on one model in ONE process, round-robin (the order rotates each
    round), so that each round's figures share the machine's background load: their ratios are
    fair on a busy machine. ``ours_1t`` is ours with one intra-op thread. Returns the times, the
    workers ours chose at each of its calls, and (``ours_compiled``) the first call's time, which
    includes the compile."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    tensors = make_tensors(size, device)
    calls: dict[str, Callable[[], Any]] = {}
    compile_s: float | None = None
    with torch.no_grad():
        for impl in impls:
            base = "ours" if impl == "ours_1t" else impl
            t0 = time.perf_counter()
            _impl(case, base, make_tensors(4096, device))[0]()  # warm-up: lazy initialisation (and the compile)
            calls[impl] = _impl(case, base, tensors)[0]
            if impl == "ours_compiled":  # and its recompiles for this model's block shapes: not steady state
                calls[impl]()
                compile_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    system: dict[str, list[float]] = {impl: [] for impl in impls}  # kernel (OS) time of each call
    workers: list[int] = []

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        for r in range(repeats):
            for impl in impls[r % len(impls):] + impls[: r % len(impls)]:
                torch.set_num_threads(1 if impl == "ours_1t" else threads)
                if impl == "ours":
                    workers.append(workers_for(dev))  # what the kernel chooses at this call
                gc.collect()
                if dev.type == "cpu":
                    release_free_memory()
                sync()
                s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
                t0 = time.perf_counter()
                out = calls[impl]()
                sync()
                times[impl].append(time.perf_counter() - t0)
                system[impl].append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0)
                del out
    torch.set_num_threads(threads)
    return {"case": case, "size": size, "times": times, "system_s": system, "workers": workers, "compile_s": compile_s,
            "median_s": {impl: statistics.median(ts) for impl, ts in times.items()}}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--interleave":
        case, size, repeats, threads, device, impls = argv[1:]
        print(json.dumps(interleave(case, impls.split(","), int(size), int(repeats), int(threads), device)))
        return 0
    case, impl, size, repeats, threads, device = argv
    print(json.dumps(measure(case, impl, int(size), int(repeats), int(threads), device)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
