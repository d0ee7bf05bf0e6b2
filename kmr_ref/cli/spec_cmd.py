"""``kmr spec``: print an algorithm box of the spec; ``--annotate`` adds, under each line, the
file:line and source line of the reference that implements it (the same IDs the traceability
test reads)."""

from __future__ import annotations

import argparse
from typing import Any

from kmr_ref.spec_index import algorithm_box, implementing_lines, line_id_of


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("spec", help="print an algorithm box of the spec")
    p.add_argument("algorithm", nargs="?", default="alg1", help="algorithm tag, e.g. alg1")
    p.add_argument("--annotate", action="store_true", help="show the implementing source line under each line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    box = algorithm_box(args.algorithm)
    impl = implementing_lines() if args.annotate else {}
    for line in box:
        print(line)
        lid = line_id_of(line)
        if args.annotate and lid is not None:
            hits = impl.get(lid, [])
            if not hits:
                print(f"      -> (no implementing line found for {lid})")
            for path, lineno, src in hits:
                print(f"      -> {path}:{lineno}: {src.strip()}")
    return 0
