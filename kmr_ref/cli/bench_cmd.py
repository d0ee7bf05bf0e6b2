"""``kmr bench [--json] [--size N] [--load K] [--baseline DIR] [--compile]``: our kernels vs torch's peers vs a
plain copy, quiet and under load (informative)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kmr_ref.bench import greedy
from kmr_ref.bench.models import parse_size
from kmr_ref.bench.runner import (
    CASES,
    DEFAULT_CASES,
    LOAD_GOAL,
    PEAK_EXTRA_DEFINITION,
    TIMING_DEFINITION,
    run_bench,
)

DEFAULT_SIZE = "10M"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmark the fast kernels against torch's peers and a plain copy")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--size", default=DEFAULT_SIZE, type=parse_size,
                   help=f"float32 parameters in the model: 10M, 100M, 12345 (default {DEFAULT_SIZE})")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (median)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--case", action="append", choices=CASES,
                   help=f"run only this case (repeatable; default {', '.join(DEFAULT_CASES)})")
    p.add_argument("--load", type=int, default=0, metavar="K",
                   help="also measure every case while K busy processes run (stopped afterwards)")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="older kernels (prune_select.py, quant_fused.py) to time beside ours")
    p.add_argument("--compile", action="store_true",
                   help="also time the torch.compile'd quantize pass (steady state; the compile apart)")
    p.set_defaults(func=run)


def _mb(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB"


def _table(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    la = rep["loadavg_start"]
    t = Table(title=f"kmr bench — device {rep['device']} ({rep['device_name']}), threads {rep['threads']}, "
                    f"torch {rep['torch']}, load average at start {la[0] if la else '?'}")
    base = any("baseline_s" in c for c in rep["cases"])
    comp = any("ours_compiled_s" in c for c in rep["cases"])
    cols = ["case", "size", "ours s", "1 thread s", "peer s", "copy s", "copy-into s", "speedup", "vs copy",
            "peak extra (ours)", "peak extra (peer)", "model", "agree"]
    cols += (["baseline s"] if base else []) + (["compiled s (compile s)"] if comp else [])
    for col in cols:
        t.add_column(col, justify="right" if col not in ("case", "agree") else "left")
    for c in rep["cases"]:
        row = [c["name"], f"{c['size']:,}", f"{c['ours_s']:.3f}", f"{c['ours_1t_s']:.3f}", f"{c['peer_s']:.3f}",
               f"{c['copy_s']:.3f}", f"{c['copy_into_s']:.3f}", f"{c['speedup']:.1f}x", f"{c['vs_copy']:.2f}x",
               f"{_mb(c['peak_extra_bytes'])} ({c['peak_extra_ratio']:.3f}x)", _mb(c["peer_peak_extra_bytes"]),
               _mb(c["model_bytes"]), "yes" if c["agree"] else f"no ({c['mismatches']:,} entries differ)"]
        if base:
            row.append(f"{c['baseline_s']:.3f}")
        if comp:
            row.append(f"{c['ours_compiled_s']:.3f} ({c['compile_s']:.1f})" if "ours_compiled_s" in c else "")
        t.add_row(*row)
    con = Console(width=None if sys.stdout.isatty() else 160)
    con.print(t)
    if rep["load"]:
        lt = Table(title=f"under load: {rep['load']} busy processes (load average then {rep['loadavg_loaded']})")
        for col in ("case", "ours s", "1 thread s", "peer s", "copy s", "copy-into s", "ours growth", "copy growth",
                    "copy-into growth", "growth vs copy"):
            lt.add_column(col, justify="left" if col == "case" else "right")
        for c in rep["cases"]:
            ld, g = c["loaded"], c["growth"]
            mark = "" if c["load_goal_met"] else f" (goal <= {LOAD_GOAL})"
            lt.add_row(c["name"], f"{ld['ours_s']:.3f}", f"{ld['ours_1t_s']:.3f}", f"{ld['peer_s']:.3f}",
                       f"{ld['copy_s']:.3f}", f"{ld['copy_into_s']:.3f}", f"{g['ours']:.2f}x", f"{g['copy']:.2f}x",
                       f"{g['copy_into']:.2f}x", f"{c['growth_vs_copy']:.2f}x{mark}")
        con.print(lt)
    for c in rep["cases"]:
        con.print(f"[bold]{c['name']}[/]: ours = {c['ours']}; peer = {c['peer']}; medians of {c['repeats']}")
    con.print(f"[dim]{TIMING_DEFINITION}[/]")
    con.print(f"[dim]{PEAK_EXTRA_DEFINITION}[/]")


def run(args: argparse.Namespace) -> int:
    cases = tuple(args.case) if args.case else DEFAULT_CASES
    def progress(msg: str) -> None:
        if not args.json:
            print(f"… {msg}", file=sys.stderr, flush=True)
    if args.load < 0:
        print("kmr bench: --load takes K >= 0", file=sys.stderr)
        return 2
    rep = run_bench(args.size, repeats=args.repeats, threads=args.threads, device=args.device, cases=cases,
                    load=args.load, baseline=args.baseline, compile=args.compile, progress=progress)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        kernels = [c for c in rep["cases"] if c["name"] != greedy.NAME]
        if kernels:
            _table({**rep, "cases": kernels})
        for c in rep["cases"]:
            if c["name"] == greedy.NAME:  # kmr_ref/bench/greedy.py
                from rich.console import Console

                Console(width=None if sys.stdout.isatty() else 160).print(greedy.table(c))
                print(c["definition"])
    return 0
