"""Distil, prune, quantize under one storage budget (``kmr_ref/examples/distill_prune_quantize.toml``,
Algorithm 10 with distillation as its first phase). ``kmr experiment distill-prune-quantize`` runs
the TOML through ``kmr compress`` twice, each in its own process, checks that both give the same
``model.safetensors`` and ``trace.jsonl`` bytes, and writes ``distill-prune-quantize.md`` and
``distill-prune-quantize.json``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from kmr_ref.core.trace import json_value
from kmr_ref.experiments.common import _atomic, machine, md_table

COMMAND = "kmr experiment distill-prune-quantize"
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "distill_prune_quantize.toml"
NAME = "distill-prune-quantize"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_run(out: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "kmr_ref", "compress", str(CONFIG), "--out", str(out), "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kmr compress exited {r.returncode}: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def run(out: Path) -> list[Path]:
    from kmr_ref.compress import load
    from kmr_ref.examples import digits_factory

    mach = machine()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        wall = [_one_run(a), _one_run(b)]
        same = {f: _sha(a / f) == _sha(b / f) for f in ("model.safetensors", "trace.jsonl")}
        rep = json.loads((a / "report.json").read_text())
        model = load(a)
        test_initial = digits_factory.test_accuracy(digits_factory.trained_cnn())
        test_final = digits_factory.test_accuracy(model)
        file_bytes = (a / "model.safetensors").stat().st_size
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = []
    for s in rep["steps"]:
        c = Fraction(s["cost"])
        rows.append([str(s["t"]), s["phase"], s["knob"], str(s["value"]),
                     f"{c.numerator:,}".replace(",", " ") if c.denominator == 1 else str(c),
                     f"{s['quality']:.4f}", "yes" if s["accepted"] else "no"])
    md = "\n".join([
        "# Distil, prune, quantize under one storage budget", "",
        f"Regenerate: `{COMMAND}` (runs `kmr_ref/examples/distill_prune_quantize.toml` through `kmr compress` twice, "
        "each in its own process, and compares the bytes of the two runs).", "",
        "Digits CNN (the shipped weights) as teacher; phase 1 distils it into narrower students "
        "(`spec/methods/distillation.md`, each step from the last accepted model), phase 2 prunes (global "
        "magnitude), phase 3 quantizes (symmetric, per channel); one cost meter for all three: composed storage "
        "bits (`KMR.quant.composed-storage`). Quality: validation accuracy (the policy's); test accuracy below.", "",
        md_table(["t", "phase", "knob", "value", "storage bits", "val acc", "accepted"], rows,
                 [True, False, False, True, True, True, False]),
        f"Status {rep['status']}: {rep['initial']['cost']} → {rep['final']['cost']} bits, budget {rep['budget']} "
        f"bits (1/32 of the teacher's); val accuracy {rep['initial']['quality']:.4f} → "
        f"{rep['final']['quality']:.4f}, test accuracy {test_initial:.4f} → {test_final:.4f}; packed model file "
        f"{file_bytes} bytes.", "",
        "Two runs in separate processes: model.safetensors "
        f"{'identical' if same['model.safetensors'] else 'DIFFERENT'}, trace.jsonl "
        f"{'identical' if same['trace.jsonl'] else 'DIFFERENT'} (`KMR.train.scope`: same device type, same torch).", "",
        f"Timing (informative; {mach['cpu']}, {mach['cores']} cores shared with other work, torch {mach['torch']}, "
        f"load average {' '.join(mach['loadavg_at_start'])} at the start and {load_end} at the end): "
        f"{wall[0]:.1f} s and {wall[1]:.1f} s wall per `kmr compress` process, imports included.", "",
    ])
    payload: dict[str, Any] = {"experiment": NAME, "command": COMMAND, "machine": mach, "report": rep,
                               "test_accuracy": {"initial": test_initial, "final": test_final},
                               "file_bytes": file_bytes, "identical_bytes": same,
                               "wall_seconds": [round(w, 1) for w in wall], "loadavg_end": load_end}
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.json"]
    _atomic(paths[0], md.encode())
    _atomic(paths[1], (json.dumps(payload, indent=1, default=json_value) + "\n").encode())
    return paths
