"""Clause coverage of the vectors: ``python -m kmr_ref.conformance.coverage [--json] [--missing]``.

For every clause of ``spec/`` the vectors citing it (primary or not), or the reason it has none
(``spec/vectors/uncovered.toml``; keys are clause IDs or ``fnmatch`` patterns).
``tests/test_conformance_coverage.py`` keeps the two complete and disjoint.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.vectors import load_vectors, primary_of
from kmr_ref.spec_index import defined_clauses, spec_root

Json = Any


def uncovered_reasons() -> dict[str, str]:
    doc = tomllib.loads((spec_root() / "vectors" / "uncovered.toml").read_text(encoding="utf-8"))
    reasons: dict[str, str] = doc["reasons"]
    return reasons


def vectors_by_clause(version: str = SPEC_VERSION) -> dict[str, dict[str, list[str]]]:
    """clause -> {"primary": [vector ids], "cited": [vector ids]} over every vector file."""
    out: dict[str, dict[str, list[str]]] = {}
    for f in sorted((spec_root() / "vectors" / version).glob("*.json")):
        if f.name == "schema.json":
            continue
        for v in load_vectors(f):
            p = primary_of(v)
            out.setdefault(p, {"primary": [], "cited": []})["primary"].append(v["id"])
            for c in v.get("clauses", ()):
                if c != p:
                    out.setdefault(c, {"primary": [], "cited": []})["cited"].append(v["id"])
    return out


def reason_for(clause: str, reasons: dict[str, str]) -> str | None:
    if clause in reasons:
        return reasons[clause]
    return next((r for k, r in reasons.items() if fnmatch.fnmatchcase(clause, k)), None)


def table() -> list[dict[str, Json]]:
    by = vectors_by_clause()
    reasons = uncovered_reasons()
    rows = []
    for c in sorted(defined_clauses()):
        d = by.get(c, {"primary": [], "cited": []})
        rows.append({"clause": c, "primary": d["primary"], "cited": d["cited"],
                     "reason": None if d["primary"] or d["cited"] else reason_for(c, reasons)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmr_ref.conformance.coverage", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--missing", action="store_true", help="only clauses without a vector")
    a = ap.parse_args(argv)
    rows = [r for r in table() if not a.missing or not (r["primary"] or r["cited"])]
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            if r["primary"] or r["cited"]:
                print(f"{r['clause']}\t{len(r['primary'])} primary, {len(r['cited'])} cited\t"
                      f"{', '.join(r['primary'][:4])}")
            else:
                print(f"{r['clause']}\tno vector\t{r['reason'] or 'NO REASON GIVEN'}")
        n = sum(1 for r in table() if r["primary"] or r["cited"])
        print(f"{n} of {len(table())} clauses have a vector")
    return 1 if any(not (r["primary"] or r["cited"]) and not r["reason"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
