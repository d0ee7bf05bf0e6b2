"""``kmr compress CONFIG.toml``: compress your own model as a TOML file says (``spec/compress.md``).

Exit codes (``KMR.compress.exit-code``): 0 the budget is met (status ``feasible``); 1 the run ended
above the budget (``stalled``, ``step-limit``, ``policy-stop``); 2 the config, its sources or a rule
refused the input (the message names the clause); 130 interrupted above the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "compress", help="compress your own torch.nn.Module to a budget, as a TOML file says")
    p.add_argument("config", type=Path, help="the TOML config (see spec/compress.md)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for trace.jsonl, model.safetensors, report.json "
                        "(default: out_dir in the TOML; neither: nothing is written)")
    p.add_argument("--json", action="store_true", help="print report.json's object on stdout")
    p.add_argument("--overwrite", action="store_true", help="replace results already in the output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kmr_ref.compress import compress, load_config, load_model
    from kmr_ref.core.errors import KMRError
    from kmr_ref.core.trace import Status

    try:
        cfg = load_config(args.config)
        model = load_model(cfg)
        rep = compress(model, cfg, out_dir=args.out, overwrite=args.overwrite)
    except KMRError as e:  # KMR.compress.exit-code: 2, the message names the clause
        print(f"kmr compress: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # KMR.compress.exit-code: 3, the user's code (factory, quality, input) failed
        kept = " (trace.jsonl keeps every step streamed before it)" if args.out is not None else ""
        print(f"kmr compress: the run failed in user code: {type(e).__name__}: {e}{kept}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
    else:
        _print_summary(rep)
    if rep.status is Status.FEASIBLE:  # KMR.compress.exit-code
        return 0
    return 130 if rep.status is Status.INTERRUPTED else 1


def _print_summary(rep: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    tab = Table(title=f"kmr compress: {rep.meter} to budget {rep.budget} {rep.unit}")
    for col in ("t", "phase: knob = value", "cost", "quality", "accepted"):
        tab.add_column(col, justify="left" if col.startswith("phase") else "right")
    for r, ph in zip(rep.steps, rep.step_phases, strict=True):
        tab.add_row(str(r.t), f"{ph}: {r.knob} = {r.value}", str(r.cost_after),
                    "" if r.quality is None else f"{r.quality:.4f}", "yes" if r.accepted else f"no ({r.reason})")
    con.print(tab)
    q0 = "" if rep.quality_initial is None else f", quality {rep.quality_initial:.4f}"
    q1 = "" if rep.quality_final is None else f", quality {rep.quality_final:.4f}"
    con.print("phases: " + ", ".join(f"{p.name} -> {p.status.value}" for p in rep.phases))
    con.print(f"status [bold]{rep.status.value}[/]: cost {rep.cost_initial}{q0} -> {rep.cost_final}{q1} "
              f"(budget {rep.budget}), {rep.seconds:.1f} s")
    where = f"written to {rep.out_dir}" if rep.out_dir is not None else "nothing written (no --out, no out_dir)"
    con.print(where)
