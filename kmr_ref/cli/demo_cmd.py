"""``kmr demo`` argument parsing; the job itself is ``kmr_ref.demo`` (imported on use, so other
subcommands do not pay for torch and scikit-learn)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="prune a digits CNN to a budget (scheduled vs greedy)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per policy run")
    p.add_argument("--train", action="store_true",
                   help="retrain the CNN (30 epochs, seeded) instead of the shipped weights; not bit-reproducible "
                        "across CPU models")
    p.add_argument("--fast", action="store_true", help="retrain with 3 epochs instead of 30 (for tests)")
    p.add_argument("--budget", type=str, default="1/5",
                   help="budget as a fraction of the trained model's nonzero weights (default 1/5)")
    p.add_argument("--max-steps", type=int, default=60, help="step limit N (default 60)")
    p.add_argument("--policy", choices=["scheduled", "greedy", "compose", "all"], default="all",
                   help="which runs: the two pruning policies, the two compositions, or all (default)")
    p.add_argument("--storage-budget", type=str, default="1/8",
                   help="composition budget as a fraction of the trained model's storage bits (default 1/8)")
    p.add_argument("--seed", type=int, default=0, help="split seed; a seed other than 0 retrains")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for streamed traces (JSONL, one line per step) and final weights")
    p.set_defaults(func=run)




def run(args: argparse.Namespace) -> int:
    from kmr_ref.demo import run as run_demo

    return run_demo(args)
