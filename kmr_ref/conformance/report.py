"""The per-clause conformance report: ``python -m kmr_ref.conformance`` (also ``kmr conform``).

Runs every vector file of ``spec/vectors/<SPEC_VERSION>/`` (or the given files) with one
implementation: ``--impl reference|kernels|torch``, third-party Python adapters
(``--adapter KIND=module:attr``), or any program speaking the JSON-lines protocol
(``--exec "CMD"``, ``subprocess_impl.py``). Prints, per clause ID, how many vectors passed, failed,
xfailed, were skipped or are not supported; a failure is charged to the vector's primary clause
only (``vectors.blame_of``). Every failure is listed with its diff and a reproduction command that
runs as printed from any directory and shows the vector's input and the implementation's output.

Selection: ``--id`` (an unknown id is an error), ``--clause`` (vectors citing it), ``--feature``;
``--unsupported-feature F`` declares what the implementation lacks (those vectors report
``not-supported``); ``--xfail FILE`` lists expected failures (an unexpected pass fails unless
``--no-strict``); ``--list`` lists the selected vectors; ``--junit FILE`` writes JUnit XML.
Exit status: 0 when nothing failed and something passed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.vectors import (
    ADAPTER_RUNNERS,
    BUILTIN_XFAIL,
    IMPLEMENTATIONS,
    Outcome,
    RunOptions,
    VectorResult,
    VectorRunner,
    XFail,
    clause_report,
    load_vectors,
    primary_of,
    run_vector,
)
from kmr_ref.spec_index import spec_root

Json = Any
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "skip", "xfail", "not-supported")
REPO_ROOT = Path(__file__).resolve().parents[2]


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


def default_files(version: str = SPEC_VERSION) -> list[Path]:
    """The vector files of ``spec/vectors/<version>/`` (every ``*.json`` but ``schema.json``)."""
    d = spec_root() / "vectors" / version
    return sorted(p for p in d.glob("*.json") if p.name != "schema.json")


def repro_command(path: str | Path, vid: str, impl_args: Sequence[str]) -> str:
    """A shell command that reruns one vector as printed, from any directory: the venv's own
    interpreter, absolute paths, the import path this run had, ``--show`` for input and output."""
    cwd = Path.cwd()
    pythonpath = [str(REPO_ROOT), str(cwd), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    seen: list[str] = []
    for p in pythonpath:
        if p not in seen:
            seen.append(p)
    f = Path(path)
    absf = f if f.is_absolute() else cwd / f
    parts = [sys.executable, "-m", "kmr_ref.conformance", *impl_args, "--show", "--id", vid, str(absf)]
    return (f"cd {shlex.quote(str(cwd))} && PYTHONPATH={shlex.quote(os.pathsep.join(seen))} "
            + " ".join(shlex.quote(x) for x in parts))


@dataclass(frozen=True)
class FileRun:
    path: str
    kind: str
    results: list[VectorResult]


def load_adapter(spec: str) -> tuple[str, Any]:
    """``KIND=module:attr`` -> (kind, adapter object); a class is instantiated without arguments.
    Every problem is a :class:`UsageError` with one clear line."""
    kind, _, target = spec.partition("=")
    module, _, attr = target.partition(":")
    if not kind or not module or not attr:
        raise UsageError(f"--adapter takes KIND=module:attr, got {spec!r}")
    if kind not in ADAPTER_RUNNERS:
        raise UsageError(f"--adapter {spec}: no adapter protocol for kind {kind!r}; known: {sorted(ADAPTER_RUNNERS)}")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # any import-time failure of user code is a usage problem, not a traceback
        raise UsageError(f"--adapter {spec}: cannot import {module!r}: {type(e).__name__}: {e}") from e
    if not hasattr(mod, attr):
        raise UsageError(f"--adapter {spec}: module {module!r} has no attribute {attr!r}")
    obj = getattr(mod, attr)
    try:
        return kind, obj() if isinstance(obj, type) else obj
    except Exception as e:
        raise UsageError(f"--adapter {spec}: {attr}() failed: {type(e).__name__}: {e}") from e


def select(vec: Mapping[str, Json], ids: Sequence[str] | None, clauses: Sequence[str] | None,
           features: Sequence[str] | None) -> bool:
    if ids and vec["id"] not in ids:
        return False
    if clauses and not (set(clauses) & ({primary_of(vec)} | set(vec.get("clauses", ())))):
        return False
    return not features or bool(set(features) & set(vec.get("features", ())))


def run_all(files: Sequence[str | Path], impl: str = "reference",
            runners: Mapping[str, VectorRunner] | None = None, ids: Sequence[str] | None = None,
            options: RunOptions | None = None, clauses: Sequence[str] | None = None,
            features: Sequence[str] | None = None) -> list[FileRun]:
    out = []
    for f in files:
        vf = load_vectors(f)
        res = [run_vector(vf.kind, v, f, impl, runners, options) for v in vf if select(v, ids, clauses, features)]
        out.append(FileRun(str(f), vf.kind, res))
    return out


def _file_summary(fr: FileRun) -> dict[str, Json]:
    d: dict[str, Json] = {"path": fr.path, "kind": fr.kind, "vectors": len(fr.results)}
    for o in OUTCOMES:
        d[o] = sum(r.outcome == o for r in fr.results)
    return d


def clause_counts(results: Sequence[VectorResult]) -> dict[str, dict[str, Json]]:
    """Per clause: its status and counts. A passing / skipped / not-supported vector counts for
    every clause it cites; a fail or xfail only for the clause it is blamed on."""
    status = clause_report(results)
    out: dict[str, dict[str, Json]] = {c: {"status": s, **{o: 0 for o in OUTCOMES}} for c, s in status.items()}
    for r in results:
        charged = [r.blame or r.primary] if r.outcome in ("fail", "xfail") else list(r.clauses)
        for c in charged:
            if c in out:
                out[c][r.outcome] += 1
    return out


def build_report(runs: Sequence[FileRun], impl: str) -> dict[str, Json]:
    """The report as JSON: ``{"impl", "spec_version", "results", "summary", "failures"}``."""
    results = [r for fr in runs for r in fr.results]
    failures = [{"file": fr.path, "id": r.id, "clause": r.blame, "primary": r.primary, "clauses": list(r.clauses),
                 "diff": r.diff, "reproduction": r.reproduction}
                for fr in runs for r in fr.results if r.outcome == "fail"]
    return {
        "impl": impl,
        "spec_version": SPEC_VERSION,
        "results": [{"vector": r.id, "file": fr.path, "kind": r.kind, "clause": r.blame or r.primary,
                     "primary": r.primary, "clauses": list(r.clauses), "features": list(r.features),
                     "outcome": r.outcome, "detail": r.diff,
                     **({"reproduction": r.reproduction} if r.outcome in ("fail", "xfail") else {})}
                    for fr in runs for r in fr.results],
        "summary": {
            "files": [_file_summary(fr) for fr in runs],
            "totals": {o: sum(r.outcome == o for r in results) for o in OUTCOMES},
            "clauses": clause_counts(results),
            # ok: nothing failed AND something passed (an implementation that skips or declines
            # everything conforms to nothing)
            "ok": not failures and any(r.outcome == "pass" for r in results),
        },
        "failures": failures,
    }


def format_text(rep: Mapping[str, Json]) -> str:
    s = rep["summary"]
    lines = [f"KMR conformance report: implementation {rep['impl']}, spec {rep['spec_version']}"]
    for f in s["files"]:
        lines.append(f"  {f['path']} ({f['kind']}): {f['vectors']} vectors, {f['pass']} pass, {f['fail']} fail, "
                     f"{f['xfail']} xfail, {f['skip']} skip, {f['not-supported']} not-supported")
    width = max([len(c) for c in s["clauses"]] + [6])
    lines.append("")
    lines.append(f"{'clause':{width}}  {'status':13} {'pass':>5} {'fail':>5} {'xfail':>5} {'skip':>5} {'n/s':>5}")
    for c, d in s["clauses"].items():
        lines.append(f"{c:{width}}  {d['status']:13} {d['pass']:5} {d['fail']:5} {d['xfail']:5} {d['skip']:5} "
                     f"{d['not-supported']:5}")
    t = s["totals"]
    by_status = {o: sum(1 for d in s["clauses"].values() if d["status"] == o) for o in OUTCOMES}
    lines.append("")
    lines.append(f"clauses: {len(s['clauses'])} ({', '.join(f'{n} {o}' for o, n in by_status.items() if n)})")
    lines.append(f"vectors: {sum(t.values())} ({', '.join(f'{n} {o}' for o, n in t.items() if n)})")
    for f in rep["failures"]:
        lines.append("")
        lines.append(f"FAIL {f['file']} {f['id']}  [{f['clause']}]")
        lines.extend("  " + x for x in f["diff"].splitlines())
        lines.append(f"  reproduce: {f['reproduction']}")
    return "\n".join(lines)


def write_junit(rep: Mapping[str, Json], path: str | Path) -> None:
    """One ``testsuite`` per vector file, one ``testcase`` per vector (name = id, classname = the
    primary clause); fail -> ``failure``, skip / not-supported / xfail -> ``skipped``."""
    root = ET.Element("testsuites", name=f"kmr-conformance {rep['impl']}")
    by_file: dict[str, list[Mapping[str, Json]]] = {}
    for r in rep["results"]:
        by_file.setdefault(r["file"], []).append(r)
    for f, rs in by_file.items():
        suite = ET.SubElement(root, "testsuite", name=f, tests=str(len(rs)),
                              failures=str(sum(r["outcome"] == "fail" for r in rs)),
                              skipped=str(sum(r["outcome"] in ("skip", "xfail", "not-supported") for r in rs)))
        for r in rs:
            case = ET.SubElement(suite, "testcase", name=r["vector"], classname=r["primary"])
            if r["outcome"] == "fail":
                ET.SubElement(case, "failure", message=f"[{r['clause']}]").text = (
                    r["detail"] + "\nreproduce: " + r.get("reproduction", ""))
            elif r["outcome"] != "pass":
                ET.SubElement(case, "skipped", message=f"{r['outcome']}: {r['detail'][:200]}")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _show(files: Sequence[str | Path], rep: Mapping[str, Json], runners: Mapping[str, VectorRunner] | None,
          impl: str) -> str:
    """``--show``: each selected vector's input and expected JSON, and what the implementation gave."""
    out: list[str] = []
    wanted = {(r["file"], r["vector"]): r for r in rep["results"]}
    for f in files:
        vf = load_vectors(f)
        for v in vf:
            r = wanted.get((str(f), v["id"]))
            if r is None:
                continue
            out.append(f"--- {v['id']} ({vf.kind}, primary {primary_of(v)}): {r['outcome']}")
            out.append("input: " + json.dumps(v["input"], sort_keys=True))
            out.append("expected: " + json.dumps(v["expected"], sort_keys=True))
            if r["detail"]:
                out.append("detail:\n  " + r["detail"].replace("\n", "\n  "))
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kmr_ref.conformance",
                                 description="Per-clause KMR conformance report over the frozen vectors.")
    ap.add_argument("files", nargs="*", help=f"vector files (default: spec/vectors/{SPEC_VERSION}/*.json)")
    ap.add_argument("--impl", default="reference", choices=sorted(IMPLEMENTATIONS),
                    help="a built-in implementation (default: reference)")
    ap.add_argument("--adapter", action="append", default=[], metavar="KIND=module:attr",
                    help="check a Python adapter for KIND (kmr_ref/conformance/adapters.py); repeatable")
    ap.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                    help="check a program of any language speaking JSON lines on stdin/stdout "
                         "(spec/vectors/README.md, subprocess protocol)")
    ap.add_argument("--id", action="append", dest="ids", help="run only this vector id (repeatable)")
    ap.add_argument("--clause", action="append", dest="clauses", help="run only vectors citing this clause")
    ap.add_argument("--feature", action="append", dest="features", help="run only vectors tagged with this feature")
    ap.add_argument("--unsupported-feature", action="append", default=[], dest="unsupported", metavar="FEATURE",
                    help="declare a feature the implementation lacks: its vectors report not-supported")
    ap.add_argument("--xfail", action="append", default=[], metavar="FILE",
                    help="expected failures: one vector id (or fnmatch pattern) per line, '# reason' after it")
    ap.add_argument("--no-strict", action="store_true", help="an expected failure that passes is not a failure")
    ap.add_argument("--no-builtin-xfail", action="store_true",
                    help="ignore the expected-failures file shipped with a built-in implementation (torch.xfail)")
    ap.add_argument("--list", action="store_true", help="list the selected vectors (id, primary clause, features)")
    ap.add_argument("--show", action="store_true", help="print each selected vector's input, expected and result")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    try:
        return _main(a)
    except UsageError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2


def _main(a: argparse.Namespace) -> int:
    files = [Path(f) for f in a.files] or default_files()
    for f in files:
        if not f.is_file():
            raise UsageError(f"no such vector file: {f}")
    try:
        loaded = [load_vectors(f) for f in files]
    except (ValueError, json.JSONDecodeError) as e:
        raise UsageError(str(e)) from e
    all_ids = {v["id"] for vf in loaded for v in vf}
    unknown = sorted(set(a.ids or ()) - all_ids)
    if unknown:
        raise UsageError(f"unknown vector id(s) {', '.join(unknown)} in {', '.join(map(str, files))}")
    if a.list:
        for vf in loaded:
            for v in vf:
                if select(v, a.ids, a.clauses, a.features):
                    print(f"{vf.path}\t{v['id']}\t{primary_of(v)}\t{','.join(v.get('features', ()))}")
        return 0
    runners: dict[str, VectorRunner] | None = None
    impl_args: list[str] = []
    impl = a.impl
    closers: list[Any] = []
    unsupported = set(a.unsupported)
    if a.adapter and a.exec_cmd:
        raise UsageError("--adapter and --exec are two ways to name the implementation: give one")
    if a.adapter:
        runners = {}
        for spec in a.adapter:
            kind, adapter = load_adapter(spec)
            runners[kind] = ADAPTER_RUNNERS[kind](adapter)
            unsupported |= set(getattr(adapter, "unsupported_features", ()))
        impl = "adapter:" + ",".join(a.adapter)
        impl_args = [x for s in a.adapter for x in ("--adapter", s)]
    elif a.exec_cmd:
        from kmr_ref.conformance.subprocess_impl import ProtocolError, SubprocessImpl

        try:
            proc = SubprocessImpl(a.exec_cmd)
        except (OSError, ProtocolError) as e:
            raise UsageError(f"--exec {a.exec_cmd!r}: {e}") from e
        closers.append(proc)
        runners = proc.runners()
        unsupported |= set(proc.unsupported_features)
        impl = f"exec:{a.exec_cmd}"
        impl_args = ["--exec", a.exec_cmd]
    elif a.impl != "reference":
        impl_args = ["--impl", a.impl]
    impl_args += [x for f in a.unsupported for x in ("--unsupported-feature", f)]
    xfail = XFail(strict=not a.no_strict)
    builtin = Path(__file__).parent / BUILTIN_XFAIL.get(a.impl, "-")
    if runners is None and not a.no_builtin_xfail and builtin.is_file():
        xfail = xfail + XFail.load(builtin, strict=not a.no_strict)
    for xf in a.xfail:
        try:
            xfail = xfail + XFail.load(xf, strict=not a.no_strict)
        except OSError as e:
            raise UsageError(f"--xfail {xf}: {e}") from e
        impl_args += ["--xfail", str(Path(xf).resolve())]
    if a.no_strict:
        impl_args.append("--no-strict")
    opts = RunOptions(frozenset(unsupported), xfail, lambda p, vid: repro_command(p, vid, impl_args))
    try:
        runs = run_all(files, a.impl if runners is None else impl, runners, a.ids, opts, a.clauses, a.features)
    finally:
        for c in closers:
            c.close()
    rep = build_report(runs, impl)
    if a.junit:
        write_junit(rep, a.junit)
    if a.show:  # on stderr under --json, so that stdout stays one JSON document
        print(_show(files, rep, runners, impl), file=sys.stderr if a.json else sys.stdout)
    print(json.dumps(rep, indent=1, sort_keys=True) if a.json else format_text(rep))
    return 0 if rep["summary"]["ok"] else 1
