"""``kmr conform``: the per-clause conformance report over the frozen vectors (same options as
``python -m kmr_ref.conformance``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "conform", help="run the frozen spec vectors against an implementation; per-clause report",
        add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kmr_ref.conformance.report import main as report_main

    rc: int = report_main(args.rest)
    return rc
