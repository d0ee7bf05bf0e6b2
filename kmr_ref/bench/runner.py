"""Run every (case, implementation) in its own process and assemble the ``kmr bench`` report,
quiet and, with ``load = K``, again while K busy processes compete for the cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from kmr_ref.bench import greedy

KERNEL_CASES = ("global_prune", "quant_per_channel")
CASES = (*KERNEL_CASES, greedy.NAME)  # greedy_scaling: kmr_ref/bench/greedy.py (framework, not a kernel)
DEFAULT_CASES = KERNEL_CASES  # `kmr bench` without --case (quick); greedy_scaling on request
IMPLS = ("ours", "ours_1t", "peer", "copy", "copy_into")
PEERS = {
    "global_prune": "torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=k) over nn.Linear",
    "quant_per_channel": "torch.amin/amax + spec qparams, then torch.fake_quantize_per_channel_affine",
}
OURS = {
    "global_prune": "kmr_ref.kernels.prune_global (sampled band, one write pass; out of place), sparsity 7/10",
    "quant_per_channel": "kmr_ref.kernels.quant_fused.quantize_groups (int8 symmetric, codes + dequant)",
}
PEAK_EXTRA_DEFINITION = (
    "peak_extra_bytes = (peak memory during the call) - (memory before the call, model resident) "
    "- (bytes of the new tensors the call returns and keeps: pruned copies; codes+scales+dequant; "
    "for torch's pruning the new weight AND weight_mask). Measured on the first call (after a "
    "warm-up on a 4096-parameter model) in a fresh "
    "process per (case, implementation): RSS with VmHWM reset (CPU) or allocator peak (CUDA). "
    "Raw figures: peak_delta_bytes, result_bytes."
)
TIMING_DEFINITION = (
    "ours_s, peer_s, copy_s: medians over rounds; in each round every implementation makes one call, "
    "all in one process on one model, the order rotating from round to round, so that the figures of "
    "a round share the machine's background load (peak memory is measured apart, one fresh process "
    "per implementation); torch's thread count (threads) throughout; copy_s is clone() of every tensor (allocation "
    "included, as ours and the peer allocate their results; before every timed call on CPU the "
    "allocator's free memory goes back to the OS (malloc_trim), so every implementation's results land "
    "on fresh pages whatever ran before it); copy_into_s copies into preallocated, "
    "pre-touched tensors (no page faults); ours_1t_s is ours with one thread (so one worker). "
    "system_s: the process's system (OS) time during each timed call, mostly page faults. With load K, each case "
    "also holds 'quiet' and 'loaded' timings, the latter measured while K busy-looping processes "
    "run; growth = loaded / quiet, and growth_vs_copy = ours' growth / copy's growth (goal <= 1.5). "
    "workers: the worker threads ours chose at each call (one per core not busy at the call). With "
    "--compile, ours_compiled_s is the steady state of the torch.compile'd quantize pass and compile_s "
    "its warm-up in a fresh process (a tiny model, then one call on the model: the compile and its "
    "recompiles for the model's block shapes; quiet phase: an empty inductor cache, loaded "
    "phase: the cache the quiet phase filled)."
)
LOAD_GOAL = 1.5
_LOAD_MAX_S = 3600.0  # a busy process never outlives this, nor its parent

# a bounded busy loop: integer work, exits when its deadline passes or its parent is gone
_SPIN = (
    "import os, sys, time\n"
    "end = time.monotonic() + float(sys.argv[1]); parent = int(sys.argv[2]); x = 0\n"
    "while time.monotonic() < end and os.getppid() == parent:\n"
    "    for i in range(20000):\n"
    "        x = (x * 1103515245 + 12345) & 0xFFFFFFFF\n"
)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (Linux), or None."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def default_repeats(size: int) -> int:
    return 5 if size <= 20_000_000 else 3


@contextmanager
def busy_load(k: int, max_s: float = _LOAD_MAX_S) -> Iterator[list[subprocess.Popen[bytes]]]:
    """K busy-looping processes for the duration of the block, stopped on exit, error or Ctrl-C
    (each also stops by itself after ``max_s`` seconds or when this process is gone)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(k):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(max_s), str(os.getpid())],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        time.sleep(0.2)  # let them start spinning
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _worker(args: list[str], baseline: str | None, cache_dir: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if cache_dir:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # compile time measured from this cache, not the user's
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if baseline:
        env["KMR_BENCH_BASELINE"] = os.path.abspath(baseline)
    cmd = [sys.executable, "-m", "kmr_ref.bench.worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker failed ({' '.join(args)}):\n{proc.stderr[-4000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def _memory(case: str, impl: str, size: int, threads: int, device: str) -> dict[str, Any]:
    """Peak memory of the first call (and, for the peer, its agreement with ours), fresh process."""
    return _worker([case, impl, str(size), "1", str(threads), device], None)


def _interleaved(case: str, impls: tuple[str, ...], size: int, repeats: int, threads: int, device: str,
                 baseline: str | None, cache_dir: str | None = None) -> dict[str, Any]:
    return _worker(["--interleave", case, str(size), str(repeats), str(threads), device, ",".join(impls)],
                   baseline, cache_dir)


def _extra(r: dict[str, Any]) -> int:
    return int(r["peak_delta_bytes"]) - int(r["result_bytes"])


def _bytes_moved(case: str, model_bytes: int) -> int:
    """The least memory traffic of the call: read the model, write the result (prune: a pruned
    copy; quantization: the dequantized float32 weight and int8 codes)."""
    return 2 * model_bytes if case == "global_prune" else 2 * model_bytes + model_bytes // 4


def _peak_bandwidth(device: str) -> float | None:
    """Peak memory bandwidth of a CUDA device in bytes/s (DDR: 2 transfers per clock), if known."""
    if not device.startswith("cuda"):
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def _timings(t: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{impl}_s": m for impl, m in t["median_s"].items()}
    out["times"] = t["times"]
    out["system_s"] = t.get("system_s")
    out["workers"] = t.get("workers")
    out["loadavg"] = t.get("loadavg")
    if t.get("compile_s") is not None:
        out["compile_s"] = t["compile_s"]
    return out


def case_impls(case: str, baseline: str | None, compile: bool) -> tuple[str, ...]:
    """The implementations timed for ``case``: ours, ours with one thread, the peer, the two copies;
    ``baseline`` with --baseline; ``ours_compiled`` for quantization with --compile."""
    return (IMPLS + (("baseline",) if baseline else ())
            + (("ours_compiled",) if compile and case == "quant_per_channel" else ()))


def _phase(cases: tuple[str, ...], size: int, reps: int, nthreads: int, device: str, baseline: str | None,
           compile: bool, cache_dir: str | None, label: str,
           progress: Callable[[str], None] | None) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, Any]] = {}
    for case in cases:
        impls = case_impls(case, baseline, compile)
        if progress:
            progress(f"{label}{case}: {', '.join(impls)} interleaved (size {size:,}, {reps} rounds)")
        res[case] = _interleaved(case, impls, size, reps, nthreads, device, baseline, cache_dir)
        res[case]["loadavg"] = loadavg()
    return res


def run_bench(size: int, *, repeats: int | None = None, threads: int | None = None, device: str = "cpu",
              cases: tuple[str, ...] = DEFAULT_CASES, load: int = 0, baseline: str | None = None,
              compile: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report: ``{"device", "threads", "cases": [...]}`` (the ``kmr bench --json`` contract)
    plus descriptive fields. ``load``: also measure every case while that many busy processes run
    (each case then holds ``quiet`` and ``loaded``); ``baseline``: a directory of older kernels
    (``prune_select.py``, ``quant_fused.py``) measured beside ours as ``baseline_s``; ``compile``:
    also time the ``torch.compile``d quantize pass (``ours_compiled_s``, first call ``compile_s``,
    compiled into a fresh inductor cache)."""
    kernels = tuple(c for c in cases if c != greedy.NAME)
    with tempfile.TemporaryDirectory(prefix="kmr-bench-inductor-") as tmp:
        rep = _run_bench(size, repeats, threads, device, kernels, load, baseline, compile,
                         tmp if compile else None, progress)
    if greedy.NAME in cases:  # the framework case: one greedy step at L = 50 and 200 (1 thread unless --threads)
        if progress:
            progress(f"{greedy.NAME}: one greedy step at L = {', '.join(map(str, greedy.LAYERS))}")
        rep["cases"].append(greedy.greedy_scaling(greedy.LAYERS, rounds=greedy.ROUNDS, threads=threads or 1))
    return rep


def _run_bench(size: int, repeats: int | None, threads: int | None, device: str, cases: tuple[str, ...], load: int,
               baseline: str | None, compile: bool, cache_dir: str | None,
               progress: Callable[[str], None] | None) -> dict[str, Any]:
    reps = repeats or default_repeats(size)
    nthreads = threads or torch.get_num_threads()
    load_start = loadavg()
    t0 = time.perf_counter()
    mem: dict[str, dict[str, dict[str, Any]]] = {}
    for case in cases:
        mem[case] = {}
        for impl in ("ours", "peer", "copy"):
            if progress:
                progress(f"{case}: {impl}, peak memory (size {size:,})")
            mem[case][impl] = _memory(case, impl, size, nthreads, device)
    quiet = _phase(cases, size, reps, nthreads, device, baseline, compile, cache_dir, "", progress)
    loaded: dict[str, dict[str, Any]] | None = None
    load_during: list[float] | None = None
    if load:
        with busy_load(load):
            loaded = _phase(cases, size, reps, nthreads, device, baseline, compile, cache_dir, f"load {load}: ",
                            progress)
            load_during = loadavg()
    peak_bw = _peak_bandwidth(device)
    out_cases = []
    for case in cases:
        impls = case_impls(case, baseline, compile)
        q = _timings(quiet[case])
        ms = mem[case]
        ours, peer, copy = ms["ours"], ms["peer"], ms["copy"]
        mism = int(peer["mismatches"])
        moved = _bytes_moved(case, int(ours["model_bytes"]))
        c: dict[str, Any] = {
            "name": case,
            "size": size,
            "ours_s": q["ours_s"],
            "peer_s": q["peer_s"],
            "copy_s": q["copy_s"],
            "copy_into_s": q["copy_into_s"],
            "ours_1t_s": q["ours_1t_s"],
            "speedup": q["peer_s"] / q["ours_s"],
            "vs_copy": q["ours_s"] / q["copy_s"],
            "vs_copy_into": q["ours_s"] / q["copy_into_s"],
            "peak_extra_bytes": _extra(ours),
            "model_bytes": ours["model_bytes"],
            "agree": mism == 0,
            "mismatches": mism,
            "peak_extra_ratio": _extra(ours) / ours["model_bytes"],
            "peer_peak_extra_bytes": _extra(peer),
            "copy_peak_extra_bytes": _extra(copy),
            "bytes_moved": moved,
            "bandwidth_bytes_per_s": moved / q["ours_s"],
            "bandwidth_fraction": moved / q["ours_s"] / peak_bw if peak_bw else None,
            "copy_into_bandwidth_bytes_per_s": 2 * int(ours["model_bytes"]) / q["copy_into_s"],
            "copy_into_bandwidth_fraction": (2 * int(ours["model_bytes"]) / q["copy_into_s"] / peak_bw
                                             if peak_bw else None),
            "threads": nthreads,
            "workers": q["workers"],
            "loadavg": q["loadavg"],
            "raw": {impl: {"times": q["times"][impl],
                           "peak_delta_bytes": ms[impl]["peak_delta_bytes"] if impl in ms else None,
                           "result_bytes": ms[impl]["result_bytes"] if impl in ms else None} for impl in impls},
            "ours": OURS[case],
            "peer": PEERS[case],
            "repeats": reps,
        }
        if baseline:
            c["baseline_s"] = q["baseline_s"]
            c["speedup_vs_baseline"] = q["baseline_s"] / q["ours_s"]
        if "ours_compiled_s" in q:
            c["ours_compiled_s"] = q["ours_compiled_s"]
            c["compile_s"] = q["compile_s"]
            c["vs_copy_compiled"] = q["ours_compiled_s"] / q["copy_s"]
            c["speedup_compiled"] = q["peer_s"] / q["ours_compiled_s"]
        if loaded is not None:
            ld = _timings(loaded[case])
            growth = {impl: ld[f"{impl}_s"] / q[f"{impl}_s"] for impl in impls}
            c["quiet"] = q
            c["loaded"] = ld
            c["growth"] = growth
            c["growth_vs_copy"] = growth["ours"] / growth["copy"]
            c["load_goal_met"] = c["growth_vs_copy"] <= LOAD_GOAL
        out_cases.append(c)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name(),
        "threads": nthreads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_start": load_start,
        "load": load,
        "loadavg_loaded": load_during,
        "peak_bandwidth_bytes_per_s": peak_bw,
        "wall_s": time.perf_counter() - t0,
        "mem_method": mem[cases[0]]["ours"]["mem_method"] if cases else None,
        "peak_extra_definition": PEAK_EXTRA_DEFINITION,
        "timing_definition": TIMING_DEFINITION,
        "baseline": os.path.abspath(baseline) if baseline else None,
        "compile": compile,
        "cases": out_cases,
    }
