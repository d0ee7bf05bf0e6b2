"""Mutation testing of ``kmr_ref/core`` with mutmut (pinned in the ``dev`` extra), in a scratch copy.

``python -m kmr_proofs.mutation run [--dest /tmp/kmr-mut]`` (``make mutation``) exports the
*committed* tree (``git archive HEAD``: other people's uncommitted edits never leak in) to the
scratch folder, lays the files named by ``KMR_MUTATION_OVERLAY`` over it from the working tree
(default: none), adds the mutmut configuration below to the copy's ``pyproject.toml``, runs
``mutmut run`` there at low priority (``--max-children``: workers, default 1), and writes
``proofs/mutation_report.json``: every mutant's name and status, the score per mutated file with
that file's SHA-256 (so a report older than the code is visible: ``stale``), the survivors, and
which survivors ``proofs/equivalent_mutants.json`` lists as equivalent (with the reason). The
working tree is never mutated.

``recheck --dest D`` copies the current test files (``KMR_MUTATION_OVERLAY``, default: the core
unit tests) into the scratch folder ``D`` of an earlier run and reruns that report's survivors
and unchecked mutants there (``mutmut run NAME...``: mutmut collects the new tests' coverage and
runs only the tests that reach each mutant, in a forked worker: no torch import per mutant;
``KMR_RECHECK_SURVIVORS_ONLY=1``: the survivors only). Mutants listed as equivalent are not rerun.
``merge A B ... --out R`` combines reports of runs over different files.

``python -m kmr_proofs.mutation report`` (and ``kmr prove --mutation``) prints the committed
report; exit status 1 unless it covers every file of ``kmr_ref/core`` with mutants, matches the
current source of each (not stale), and every survivor is listed as equivalent.

The tests mutmut runs against each mutant are the ones that exercise ``kmr_ref/core`` without
torch-heavy work: the core tests, the assumption tests and the exhaustive small worlds at the
quick bound (``KMR_EXHAUSTIVE_QUICK=1``); mutmut selects, per mutant, the tests that call the
mutated function.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
REPORT = ROOT / "proofs" / "mutation_report.json"
EQUIVALENT = ROOT / "proofs" / "equivalent_mutants.json"
CORE = "kmr_ref/core"
TESTS = ["tests/test_budgeted.py", "tests/test_compose.py", "tests/test_core_edges.py", "tests/test_assumptions.py",
         "tests/test_knobs.py", "tests/test_policy.py", "tests/test_ladder.py", "tests/test_exhaustive.py",
         "tests/test_core_units.py", "tests/test_budget_changes.py"]
CONFIG = """

[tool.mutmut]
source_paths = ["kmr_ref"]
only_mutate = {only}
also_copy = ["proofs", "spec"]
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
"""
RECHECK = ["tests/test_core_units.py", "tests/test_core_edges.py"]  # files whose new tests kill survivors
# appended to the scratch copy's tests/conftest.py: each mutant's tests run fastest first (by the
# durations mutmut measured), so that with -x a killed mutant stops at its cheapest failing test
FASTEST_FIRST = """


def pytest_collection_modifyitems(session, config, items):  # added by kmr_proofs.mutation
    import json as _json
    import pathlib as _pathlib

    _p = _pathlib.Path("mutmut-stats.json")
    if _p.is_file():
        _d = _json.loads(_p.read_text(encoding="utf-8")).get("duration_by_test", {})
        items.sort(key=lambda it: _d.get(it.nodeid, 0.0))
"""
KILLED = ("killed", "timeout", "segfault")
SURVIVED = ("survived", "no tests", "suspicious")
# "check was interrupted by user": the mutant let a KeyboardInterrupt escape Algorithm 1 into
# pytest, which stops as if Ctrl-C were pressed (exit 2): a test did not pass, so it is killed
LEAKED = "check was interrupted by user"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def core_files(root: Path = ROOT) -> list[str]:
    """The files of kmr_ref/core that hold code mutmut mutates (``__init__.py`` only re-exports)."""
    return sorted(f"{CORE}/{p.name}" for p in (root / CORE).glob("*.py") if p.name != "__init__.py")


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def _copy(dest: Path) -> list[str]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    tar = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")
    overlay = [t for t in os.environ.get("KMR_MUTATION_OVERLAY", "").split() if (ROOT / t).is_file()]
    for t in overlay:
        (dest / t).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / t, dest / t)
    conftest = dest / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text(encoding="utf-8") + FASTEST_FIRST, encoding="utf-8")
    py = dest / "pyproject.toml"
    tests = [t for t in (os.environ.get("KMR_MUTATION_TESTS") or " ".join(TESTS)).split() if (dest / t).exists()]
    py.write_text(py.read_text(encoding="utf-8") + CONFIG.format(tests=json.dumps(tests), only=json.dumps(_only())),
                  encoding="utf-8")
    return overlay


def _only() -> list[str]:
    """The files mutated: all of kmr_ref/core, or ``KMR_MUTATE_ONLY`` (space-separated globs)."""
    return (os.environ.get("KMR_MUTATE_ONLY") or "kmr_ref/core/*").split()


def _file_of(mutant: str) -> str:
    return "/".join(mutant.split(".")[:3]) + ".py"


def _tests_of(dest: Path) -> list[str]:
    text = (dest / "pyproject.toml").read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("pytest_add_cli_args_test_selection"))
    tests: list[str] = json.loads(line.split("=", 1)[1])
    return tests


def _mutmut() -> list[str]:
    exe = Path(sys.executable).parent / "mutmut"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mutmut"]


def _env() -> dict[str, str]:
    return dict(os.environ, KMR_EXHAUSTIVE_QUICK="1", HYPOTHESIS_PROFILE="dev")


def _results(dest: Path) -> dict[str, str]:
    res = subprocess.run([*_mutmut(), "results", "--all", "true"], cwd=dest, env=_env(), capture_output=True,
                         text=True)
    statuses: dict[str, str] = {}
    for line in res.stdout.splitlines():
        if ":" in line:
            name, st = line.strip().rsplit(":", 1)
            statuses[name.strip()] = st.strip()
    return statuses


def _diffs(dest: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        d = subprocess.run([*_mutmut(), "show", name], cwd=dest, env=_env(), capture_output=True, text=True)
        out[name] = d.stdout[-1500:]
    return out


def run(dest: Path, max_children: int = 1, out: Path = REPORT, base: Path | None = None) -> dict[str, Any]:
    """Run mutmut in ``dest``. With ``base`` (an earlier report, e.g. of a run with fewer tests),
    only its survivors are run again and its other verdicts are kept: adding tests never revives
    a killed mutant."""
    t0 = time.perf_counter()
    head = _head()
    overlay = _copy(dest)
    prior: dict[str, str] = {}
    names: list[str] = []
    if base is not None:
        prior = json.loads(base.read_text(encoding="utf-8"))["statuses"]
        names = sorted(n for n, st in prior.items()
                       if st not in (*KILLED, LEAKED) and any(fnmatch.fnmatch(_file_of(n), g) for g in _only()))
        prior = {n: st for n, st in prior.items() if any(fnmatch.fnmatch(_file_of(n), g) for g in _only())}
    cmd = ["nice", "-n", "10", *_mutmut(), "run", "--max-children", str(max_children), *names]
    p = subprocess.run(cmd, cwd=dest, env=_env(), capture_output=True, text=True)
    statuses = _results(dest)
    if prior:  # a rerun mutant gets its new status ("not checked" if the run stopped before it)
        statuses = {**prior, **{n: statuses.get(n, "not checked") for n in names}}
    seconds = time.perf_counter() - t0
    files = {f: {"sha256": sha256(dest / f), "commit": head, "seconds": round(seconds, 1)}
             for f in sorted({_file_of(n) for n in statuses})}
    rep = summarize(statuses, seconds, files)
    rep["mutmut_exit"] = p.returncode
    rep["mutmut_tail"] = (p.stdout + p.stderr)[-2000:]
    rep["diffs"] = _diffs(dest, rep["survivors"])
    rep["tests"] = _tests_of(dest)
    rep["overlay"] = overlay
    out.write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return rep


def recheck(dest: Path, report_path: Path, tests: list[str]) -> dict[str, Any]:
    """Rerun every survivor of ``report_path`` in the scratch folder ``dest`` of the run that made
    it, against the current ``tests`` (copied in from the working tree): ``mutmut run NAME...``.
    The mutated files are not touched, so the report's hashes stay those of the run."""
    t0 = time.perf_counter()
    rep = json.loads(report_path.read_text(encoding="utf-8"))
    for t in tests:
        if (ROOT / t).is_file():
            shutil.copy2(ROOT / t, dest / t)
    eq = equivalents()  # a mutant listed as equivalent survived every test; new tests do not change that
    unchecked = [] if os.environ.get("KMR_RECHECK_SURVIVORS_ONLY") else [
        n for n, st in rep["statuses"].items() if st == "not checked"]
    names = sorted({*(n for n in rep["survivors"] if n not in eq), *rep.get("not_rerun", []), *unchecked})
    statuses: dict[str, str] = rep["statuses"]
    if names:
        cmd = ["nice", "-n", "10", *_mutmut(), "run", "--max-children", "1", *names]
        p = subprocess.run(cmd, cwd=dest, env=_env(), capture_output=True, text=True)
        got = _results(dest)
        statuses.update({n: got[n] for n in names if got.get(n, "not checked") != "not checked"})
        rep["mutmut_tail"] = (p.stdout + p.stderr)[-2000:]
    new = summarize(statuses, rep["seconds"], rep.get("files", {}))
    new["diffs"] = _diffs(dest, new["survivors"])
    new["recheck_seconds"] = round(rep.get("recheck_seconds", 0) + time.perf_counter() - t0, 1)
    rep.pop("not_rerun", None)
    report_path.write_text(json.dumps({**rep, **new}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return new


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """One report from reports of runs over different files (a later report wins for its files)."""
    statuses: dict[str, str] = {}
    files: dict[str, Any] = {}
    diffs: dict[str, str] = {}
    runs = []
    tests: list[str] = []
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        mine = set(r.get("files", {})) or {_file_of(n) for n in r["statuses"]}
        statuses = {n: s for n, s in statuses.items() if _file_of(n) not in mine}
        statuses.update({n: s for n, s in r["statuses"].items() if _file_of(n) in mine})
        files.update(r.get("files", {}))
        diffs.update(r.get("diffs", {}))
        tests = sorted(set(tests) | set(r.get("tests", [])))
        runs.append({"files": sorted(mine), "seconds": r["seconds"], "recheck_seconds": r.get("recheck_seconds", 0),
                     "mutants": r["mutants"]})
    rep = summarize(statuses, sum(x["seconds"] for x in runs), files)
    rep["recheck_seconds"] = round(sum(x["recheck_seconds"] for x in runs), 1)
    rep["diffs"] = {k: v for k, v in diffs.items() if k in rep["survivors"]}
    rep["runs"] = runs
    rep["tests"] = tests
    out.write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return rep


def equivalents() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    data = json.loads(EQUIVALENT.read_text(encoding="utf-8"))
    return {e["mutant"]: e["reason"] for e in data["equivalent"]}


def summarize(statuses: dict[str, str], seconds: float, files: dict[str, Any] | None = None) -> dict[str, Any]:
    leaked = sorted(n for n, s in statuses.items() if s == LEAKED)
    killed = sorted(n for n, s in statuses.items() if s in KILLED) + leaked
    survivors = sorted(n for n, s in statuses.items() if s in SURVIVED)
    other = sorted(n for n, s in statuses.items() if n not in killed and n not in survivors)
    eq = equivalents()
    listed = [n for n in survivors if n in eq]
    score = len(killed) / max(1, len(killed) + len(survivors))
    score_ne = len(killed) / max(1, len(killed) + len(survivors) - len(listed))
    per_file: dict[str, Any] = {}
    for f, meta in sorted((files or {}).items()):
        ns = [n for n in statuses if _file_of(n) == f]
        k = sum(1 for n in ns if n in killed)
        sv = [n for n in ns if n in survivors]
        e = sum(1 for n in sv if n in eq)
        per_file[f] = {**meta, "mutants": len(ns), "killed": k, "survived": len(sv), "equivalent": e,
                       "other": sum(1 for n in ns if n in other),
                       "score_non_equivalent": round(k / max(1, k + len(sv) - e), 4)}
    return {"mutants": len(statuses), "killed": len(killed), "survived": len(survivors), "other": other,
            "score": round(score, 4), "score_non_equivalent": round(score_ne, 4),
            "survivors": survivors, "equivalent_listed": listed, "killed_by_leaked_interrupt": leaked,
            "unexplained": [n for n in survivors if n not in eq], "seconds": round(seconds, 1),
            "statuses": statuses, "diffs": {}, "files": per_file}


def stale(rep: dict[str, Any], root: Path = ROOT) -> list[str]:
    """The mutated files whose source differs from the one the report's run mutated."""
    return sorted(f for f, meta in rep.get("files", {}).items()
                  if not (root / f).is_file() or sha256(root / f) != meta.get("sha256"))


def missing(rep: dict[str, Any], root: Path = ROOT) -> list[str]:
    """The files of kmr_ref/core that the report does not cover."""
    return [f for f in core_files(root) if f not in rep.get("files", {})]


def load_report(path: Path = REPORT) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data.pop("diffs", None)
    data.pop("statuses", None)
    data.pop("mutmut_tail", None)
    data["stale"] = stale(data)
    data["missing"] = missing(data)
    return data


def problems(rep: dict[str, Any], root: Path = ROOT) -> list[str]:
    """Why the report does not establish 100 % of non-equivalent mutants for the current core."""
    out = [f"SURVIVED (not listed as equivalent): {n}" for n in rep["unexplained"]]
    if rep.get("not_rerun"):
        out.append(f"{len(rep['not_rerun'])} mutants not yet run against the current tests")
    unchecked = [n for n, st in rep.get("statuses", {}).items() if st == "not checked"]
    if unchecked:
        out.append(f"{len(unchecked)} mutants not checked (the run was stopped): "
                   f"{', '.join(sorted({_file_of(n) for n in unchecked}))}")
    out += [f"STALE: {f} changed since its mutation run (run `make mutation`)" for f in stale(rep, root)]
    out += [f"MISSING: {f} has no mutation run" for f in missing(rep, root)]
    return out


def exit_code(path: Path = REPORT) -> int:
    if not path.exists():
        return 1
    return 1 if problems(json.loads(path.read_text(encoding="utf-8"))) else 0


def report(path: Path = REPORT) -> int:
    if not path.exists():
        print(f"no mutation report at {path}: run `make mutation` (about 4 min here with two workers)")
        return 1
    rep = json.loads(path.read_text(encoding="utf-8"))
    print(f"mutmut on kmr_ref/core: {rep['mutants']} mutants, {rep['killed']} killed, {rep['survived']} survived "
          f"({len(rep['equivalent_listed'])} listed as equivalent in proofs/equivalent_mutants.json); "
          f"score {100 * rep['score']:.1f} %, of non-equivalent mutants {100 * rep['score_non_equivalent']:.1f} %; "
          f"mutmut runs {rep['seconds'] / 60:.0f} min, rechecks {rep.get('recheck_seconds', 0) / 60:.0f} min")
    old = set(stale(rep))
    for f, m in rep.get("files", {}).items():
        print(f"  {f}: {m['mutants']} mutants, {m['killed']} killed, {m['equivalent']} equivalent, "
              f"{m['survived'] - m['equivalent']} unexplained, {m.get('other', 0)} not checked: "
              f"{100 * m['score_non_equivalent']:.1f} % of the checked non-equivalent"
              f"{' (STALE: the file changed since this run)' if f in old else ''}")
    eq = equivalents()
    for n in rep["equivalent_listed"]:
        print(f"  equivalent: {n}: {eq.get(n, '')}")
    bad = problems(rep)
    for line in bad:
        print(f"  {line}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmr_proofs.mutation")
    ap.add_argument("cmd", choices=["run", "report", "recheck", "merge"])
    ap.add_argument("inputs", nargs="*", help="merge: the reports to combine")
    ap.add_argument("--dest", default="/tmp/kmr-mut")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--out", default=str(REPORT), help="where the JSON report goes")
    ap.add_argument("--base", default=None, help="an earlier report: rerun only its survivors")
    a = ap.parse_args(argv)
    if a.cmd == "recheck":  # the test files given by KMR_MUTATION_OVERLAY (default: the core unit tests)
        recheck(Path(a.dest), Path(a.out), (os.environ.get("KMR_MUTATION_OVERLAY") or " ".join(RECHECK)).split())
    if a.cmd == "merge":
        merge([Path(x) for x in a.inputs], Path(a.out))
    if a.cmd == "run":
        rep = run(Path(a.dest), a.max_children, Path(a.out), Path(a.base) if a.base else None)
        print(f"mutmut exit {rep['mutmut_exit']}")
    return report(Path(a.out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
