"""Run every (case, implementation) in its own process and assemble the ``kmr bench`` report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

CASES = ("global_prune", "quant_per_channel")
IMPLS = ("ours", "peer", "copy")
PEERS = {
    "global_prune": "torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=k) over nn.Linear",
    "quant_per_channel": "torch.amin/amax + spec qparams, then torch.fake_quantize_per_channel_affine",
}
OURS = {
    "global_prune": "kmr_ref.kernels.prune_global (radix select, out of place), sparsity 7/10",
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


def default_repeats(size: int) -> int:
    return 5 if size <= 20_000_000 else 3


def _run_worker(case: str, impl: str, size: int, repeats: int, threads: int, device: str) -> dict[str, Any]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "kmr_ref.bench.worker", case, impl, str(size), str(repeats), str(threads), device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker failed ({' '.join(cmd[2:])}):\n{proc.stderr[-4000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def _extra(r: dict[str, Any]) -> int:
    return int(r["peak_delta_bytes"]) - int(r["result_bytes"])


def run_bench(size: int, *, repeats: int | None = None, threads: int | None = None, device: str = "cpu",
              cases: tuple[str, ...] = CASES,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The report: ``{"device", "threads", "cases": [...]}`` (the ``kmr bench --json`` contract)
    plus descriptive fields."""
    reps = repeats or default_repeats(size)
    nthreads = threads or torch.get_num_threads()
    out_cases = []
    for case in cases:
        rs: dict[str, dict[str, Any]] = {}
        for impl in IMPLS:
            if progress:
                progress(f"{case}: {impl} (size {size:,}, {reps} repeats)")
            rs[impl] = _run_worker(case, impl, size, reps, nthreads, device)
        ours, peer, copy = rs["ours"], rs["peer"], rs["copy"]
        mism = int(peer["mismatches"])
        out_cases.append({
            "name": case,
            "size": size,
            "ours_s": ours["median_s"],
            "peer_s": peer["median_s"],
            "copy_s": copy["median_s"],
            "speedup": peer["median_s"] / ours["median_s"],
            "vs_copy": ours["median_s"] / copy["median_s"],
            "peak_extra_bytes": _extra(ours),
            "model_bytes": ours["model_bytes"],
            "agree": mism == 0,
            "mismatches": mism,
            "peak_extra_ratio": _extra(ours) / ours["model_bytes"],
            "peer_peak_extra_bytes": _extra(peer),
            "copy_peak_extra_bytes": _extra(copy),
            "raw": {impl: {k: r[k] for k in ("times", "peak_delta_bytes", "result_bytes")} for impl, r in rs.items()},
            "ours": OURS[case],
            "peer": PEERS[case],
            "repeats": reps,
        })
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name(),
        "threads": nthreads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "mem_method": rs["ours"]["mem_method"] if out_cases else None,
        "peak_extra_definition": PEAK_EXTRA_DEFINITION,
        "cases": out_cases,
    }
