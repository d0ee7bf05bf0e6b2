"""``kmr bench [--json] [--size N]``: our kernels vs torch's peers vs a plain copy (informative)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kmr_ref.bench.models import parse_size
from kmr_ref.bench.runner import CASES, PEAK_EXTRA_DEFINITION, run_bench

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
    p.add_argument("--case", action="append", choices=CASES, help="run only this case (repeatable)")
    p.set_defaults(func=run)


def _mb(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB"


def _table(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"kmr bench — device {rep['device']} ({rep['device_name']}), threads {rep['threads']}")
    for col in ("case", "size", "ours s", "peer s", "copy s", "speedup", "vs copy",
                "peak extra (ours)", "peak extra (peer)", "model", "agree"):
        t.add_column(col, justify="right" if col not in ("case", "agree") else "left")
    for c in rep["cases"]:
        t.add_row(c["name"], f"{c['size']:,}", f"{c['ours_s']:.3f}", f"{c['peer_s']:.3f}", f"{c['copy_s']:.3f}",
                  f"{c['speedup']:.1f}x", f"{c['vs_copy']:.2f}x",
                  f"{_mb(c['peak_extra_bytes'])} ({c['peak_extra_ratio']:.3f}x)", _mb(c["peer_peak_extra_bytes"]),
                  _mb(c["model_bytes"]), "yes" if c["agree"] else f"no ({c['mismatches']:,} entries differ)")
    con = Console(width=None if sys.stdout.isatty() else 160)
    con.print(t)
    for c in rep["cases"]:
        con.print(f"[bold]{c['name']}[/]: ours = {c['ours']}; peer = {c['peer']}; medians of {c['repeats']}")
    con.print(f"[dim]{PEAK_EXTRA_DEFINITION}[/]")


def run(args: argparse.Namespace) -> int:
    cases = tuple(args.case) if args.case else CASES
    def progress(msg: str) -> None:
        if not args.json:
            print(f"… {msg}", file=sys.stderr, flush=True)
    rep = run_bench(args.size, repeats=args.repeats, threads=args.threads, device=args.device, cases=cases,
                    progress=progress)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        _table(rep)
    return 0
