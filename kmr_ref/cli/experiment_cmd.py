"""``kmr experiment e1|e2|e3|e4``: the paper's experiments as tables, plots and JSON
(``kmr_ref.experiments``; imported on use)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

EXPERIMENTS = ("e1", "e2", "e3", "e4")  # "all"; real-models (minutes, loads MiniLM and EfficientNet) runs alone


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "experiment", help="regenerate an experiment's table, plot and JSON (docs/results/ by default)")
    p.add_argument("name", choices=[*EXPERIMENTS, "all", "real-models"])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: docs/results/ of the checkout)")
    p.add_argument("--storage", default=None,
                   help="e2: Optuna storage URL for the TPE study (default: a fresh SQLite file next to the outputs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kmr_ref.experiments.common import RESULTS

    out = args.out if args.out is not None else RESULTS
    for name in EXPERIMENTS if args.name == "all" else (args.name,):
        mod = importlib.import_module(f"kmr_ref.experiments.{name.replace('-', '_')}")
        paths = mod.run(out, storage=args.storage) if name == "e2" else mod.run(out)
        for p in paths:
            print(p)
    return 0
