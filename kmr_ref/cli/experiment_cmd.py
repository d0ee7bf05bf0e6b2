"""``kmr experiment e1|e2|e3|e4``: the paper's experiments as tables, plots and JSON
(``kmr_ref.experiments``; imported on use)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

EXPERIMENTS = ("e1", "e2", "e3", "e4")  # "all"; real-models (minutes, loads MiniLM and EfficientNet) runs alone
ALONE: tuple[str, ...] = ("distill-minilm", "distill-prune-quantize")  # the training methods' figures (each runs alone)
ALONE += ("structured",)  # issue 12: structured pruning on the real models (minutes)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "experiment", help="regenerate an experiment's table, plot and JSON (docs/results/ by default)")
    p.add_argument("name", choices=[*EXPERIMENTS, "all", "real-models", *ALONE])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: docs/results/ of the checkout)")
    p.add_argument("--model", choices=["digits", "minilm"], default="digits",
                   help="test bed: the digits CNN (default) or MiniLM-L6 (e1, e2; minutes; outside the default tests)")
    p.add_argument("--storage", default=None,
                   help="e2: Optuna storage URL for the TPE study (default: a fresh SQLite file next to the outputs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kmr_ref.experiments.common import RESULTS

    out = args.out if args.out is not None else RESULTS
    todo: tuple[str, ...] = EXPERIMENTS if args.name == "all" else (args.name,)
    if args.name == "all" and args.model != "digits":
        todo = ("e1", "e2")  # the experiments with a MiniLM variant
    for name in todo:
        mod = importlib.import_module(f"kmr_ref.experiments.{name.replace('-', '_')}")
        if args.model != "digits" and name not in ("e1", "e2"):
            print(f"kmr experiment: {name} runs on the digits CNN only", file=sys.stderr)
            return 2
        kw = {"model": args.model} if args.model != "digits" else {}
        paths = mod.run(out, storage=args.storage, **kw) if name == "e2" else mod.run(out, **kw)
        for p in paths:
            print(p)
    return 0
