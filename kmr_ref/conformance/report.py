"""The per-clause conformance report: ``python -m kmr_ref.conformance [--impl IMPL] [--json] [FILES...]``.

Runs every vector file of ``spec/vectors/<SPEC_VERSION>/`` (or the given files) with one
implementation (``reference``, ``kernels``, or third-party adapters given as
``--adapter KIND=module:attr``) and prints, per clause ID, how many vectors citing it passed, failed,
were skipped or are not supported. A clause *fails* if any vector citing it fails
(``spec/README.md``, Conformance vocabulary). Every failure is listed with its diff and a
copy-paste reproduction command. Exit status: 1 if any vector failed, else 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.vectors import (
    ADAPTER_RUNNERS,
    IMPLEMENTATIONS,
    Outcome,
    VectorResult,
    VectorRunner,
    clause_report,
    load_vectors,
    run_vector,
)
from kmr_ref.spec_index import spec_root

Json = Any
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "skip", "xfail", "not-supported")


def default_files(version: str = SPEC_VERSION) -> list[Path]:
    """The vector files of ``spec/vectors/<version>/`` (every ``*.json`` but ``schema.json``)."""
    d = spec_root() / "vectors" / version
    files = sorted(p for p in d.glob("*.json") if p.name != "schema.json")
    cwd = Path.cwd()
    return [p.relative_to(cwd) if p.is_relative_to(cwd) else p for p in files]


@dataclass(frozen=True)
class FileRun:
    path: str
    kind: str
    results: list[VectorResult]


def load_adapter(spec: str) -> tuple[str, Any]:
    """``KIND=module:attr`` -> (kind, adapter object); a class is instantiated without arguments."""
    kind, _, target = spec.partition("=")
    module, _, attr = target.partition(":")
    if not kind or not module or not attr:
        raise ValueError(f"--adapter takes KIND=module:attr, got {spec!r}")
    if kind not in ADAPTER_RUNNERS:
        raise ValueError(f"no adapter protocol for kind {kind!r}; known: {sorted(ADAPTER_RUNNERS)}")
    obj = getattr(importlib.import_module(module), attr)
    return kind, obj() if isinstance(obj, type) else obj


def run_all(files: Sequence[str | Path], impl: str = "reference",
            runners: Mapping[str, VectorRunner] | None = None, ids: Sequence[str] | None = None) -> list[FileRun]:
    out = []
    for f in files:
        vf = load_vectors(f)
        res = [run_vector(vf.kind, v, f, impl, runners) for v in vf if not ids or v["id"] in ids]
        out.append(FileRun(str(f), vf.kind, res))
    return out


def _file_summary(fr: FileRun) -> dict[str, Json]:
    d: dict[str, Json] = {"path": fr.path, "kind": fr.kind, "vectors": len(fr.results)}
    for o in OUTCOMES:
        d[o] = sum(r.outcome == o for r in fr.results)
    return d


def build_report(runs: Sequence[FileRun], impl: str) -> dict[str, Json]:
    """The report as JSON: totals, per-clause counts and status, failures with reproductions."""
    results = [r for fr in runs for r in fr.results]
    status = clause_report(results)
    clauses: dict[str, dict[str, Json]] = {}
    for c in sorted(status):
        entry: dict[str, Json] = {"status": status[c]}
        for o in OUTCOMES:
            entry[o] = sum(1 for r in results if c in r.clauses and r.outcome == o)
        clauses[c] = entry
    failures = [{"file": fr.path, "id": r.id, "clauses": list(r.clauses), "diff": r.diff,
                 "reproduction": r.reproduction}
                for fr in runs for r in fr.results if r.outcome == "fail"]
    return {
        "impl": impl,
        "spec_version": SPEC_VERSION,
        "files": [_file_summary(fr) for fr in runs],
        "totals": {o: sum(r.outcome == o for r in results) for o in OUTCOMES},
        "clauses": clauses,
        "failures": failures,
        # ok: nothing failed AND something passed (an adapter that skips or declines everything
        # conforms to nothing)
        "ok": not failures and any(r.outcome == "pass" for r in results),
    }


def format_text(rep: Mapping[str, Json]) -> str:
    lines = [f"KMR conformance report: implementation {rep['impl']}, spec {rep['spec_version']}"]
    for f in rep["files"]:
        lines.append(f"  {f['path']} ({f['kind']}): {f['vectors']} vectors, {f['pass']} pass, {f['fail']} fail, "
                     f"{f['skip']} skip, {f['not-supported']} not-supported")
    width = max([len(c) for c in rep["clauses"]] + [6])
    lines.append("")
    lines.append(f"{'clause':{width}}  {'status':13} {'pass':>5} {'fail':>5} {'skip':>5} {'n/s':>5}")
    for c, d in rep["clauses"].items():
        lines.append(f"{c:{width}}  {d['status']:13} {d['pass']:5} {d['fail']:5} {d['skip']:5} {d['not-supported']:5}")
    t = rep["totals"]
    by_status = {o: sum(1 for d in rep["clauses"].values() if d["status"] == o) for o in OUTCOMES}
    lines.append("")
    lines.append(f"clauses: {len(rep['clauses'])} ({', '.join(f'{n} {o}' for o, n in by_status.items() if n)})")
    lines.append(f"vectors: {sum(t.values())} ({', '.join(f'{n} {o}' for o, n in t.items() if n)})")
    for f in rep["failures"]:
        lines.append("")
        lines.append(f"FAIL {f['file']} {f['id']}  [{', '.join(f['clauses'])}]")
        lines.extend("  " + x for x in f["diff"].splitlines())
        lines.append(f"  reproduce: {f['reproduction']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmr_ref.conformance",
                                 description="Per-clause KMR conformance report over the frozen vectors.")
    ap.add_argument("files", nargs="*", help=f"vector files (default: spec/vectors/{SPEC_VERSION}/*.json)")
    ap.add_argument("--impl", default="reference", choices=sorted(IMPLEMENTATIONS),
                    help="which implementation runs the vectors (default: reference)")
    ap.add_argument("--adapter", action="append", default=[], metavar="KIND=module:attr",
                    help="check a third-party adapter for KIND (see kmr_ref/conformance/adapters.py); "
                         "kinds without one report not-supported")
    ap.add_argument("--id", action="append", dest="ids", help="run only this vector id (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    files = a.files or default_files()
    runners: dict[str, VectorRunner] | None = None
    impl = a.impl
    if a.adapter:
        runners = {}
        for spec in a.adapter:
            kind, adapter = load_adapter(spec)
            runners[kind] = ADAPTER_RUNNERS[kind](adapter)
        impl = "adapter:" + ",".join(a.adapter)
    runs = run_all(files, a.impl if runners is None else impl, runners, a.ids)
    rep = build_report(runs, impl)
    if runners is not None:  # a third-party failure reproduces with the same adapters
        for f in rep["failures"]:
            opts = " ".join(f"--adapter {s}" for s in a.adapter)
            f["reproduction"] = f"python -m kmr_ref.conformance {opts} --id {f['id']} {f['file']}"
    print(json.dumps(rep, indent=1, sort_keys=True) if a.json else format_text(rep))
    return 0 if rep["ok"] else 1
