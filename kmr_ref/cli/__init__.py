"""``kmr`` command line: one module per subcommand, each exposing ``register(subparsers)``
which adds its parser and sets ``func`` (a callable ``args -> exit code``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("demo", "spec", "prove", "bench", "conform", "compress", "eval", "experiment", "select")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmr", description="Knob-Meter-Rule reference (spec 0.1.0)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f"kmr_ref.cli.{name}_cmd")
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["conform"]:  # forwarded whole: its own parser owns every option, --help too
        from kmr_ref.conformance.report import main as report_main

        return report_main(args_in[1:])
    parser = build_parser()
    args = parser.parse_args(args_in)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
