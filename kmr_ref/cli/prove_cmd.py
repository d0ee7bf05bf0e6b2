"""``kmr prove``: placeholder until its issue lands (exits 2, says so)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("prove", help="(not yet implemented)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("kmr prove: not implemented yet")
    return 2
