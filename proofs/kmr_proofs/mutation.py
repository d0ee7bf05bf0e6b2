"""Mutation testing of ``kmr_ref/core`` with mutmut (pinned in the ``dev`` extra), in a scratch copy.

``python -m kmr_proofs.mutation run [--dest /tmp/kmr-mut]`` (``make mutation``) copies the
repository (without ``.git``, ``.venv`` and caches) to the scratch folder, adds the mutmut
configuration below to the *copy's* ``pyproject.toml``, runs ``mutmut run`` there with one worker
at low priority, and writes ``proofs/mutation_report.json`` in this checkout: every mutant's name
and status, the score, the survivors, and which survivors ``proofs/equivalent_mutants.json``
lists as equivalent (with the reason). The working tree is never mutated.

``python -m kmr_proofs.mutation report`` (and ``kmr prove --mutation``) prints the committed
report; exit status 1 when a survivor is neither killed nor listed as equivalent.

The tests mutmut runs against each mutant are the ones that exercise ``kmr_ref/core`` without
torch-heavy work: the core tests, the assumption tests and the exhaustive small worlds at the
quick bound (``KMR_EXHAUSTIVE_QUICK=1``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
REPORT = ROOT / "proofs" / "mutation_report.json"
EQUIVALENT = ROOT / "proofs" / "equivalent_mutants.json"
TESTS = ["tests/test_budgeted.py", "tests/test_compose.py", "tests/test_core_edges.py", "tests/test_assumptions.py",
         "tests/test_knobs.py", "tests/test_policy.py", "tests/test_ladder.py", "tests/test_exhaustive.py",
         "tests/test_core_units.py"]
CONFIG = """

[tool.mutmut]
source_paths = ["kmr_ref"]
only_mutate = {only}
also_copy = ["proofs", "spec"]
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
"""


def _copy(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "mutants"))
    py = dest / "pyproject.toml"
    tests = [t for t in (os.environ.get("KMR_MUTATION_TESTS") or " ".join(TESTS)).split() if (dest / t).exists()]
    py.write_text(py.read_text(encoding="utf-8") + CONFIG.format(tests=json.dumps(tests), only=json.dumps(_only())),
                  encoding="utf-8")


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


def run(dest: Path, max_children: int = 1, out: Path = REPORT, base: Path | None = None) -> dict[str, Any]:
    """Run mutmut in ``dest``. With ``base`` (an earlier report, e.g. of a run with fewer tests),
    only its survivors are run again and its other verdicts are kept: adding tests never revives
    a killed mutant."""
    t0 = time.perf_counter()
    _copy(dest)
    env = dict(os.environ, KMR_EXHAUSTIVE_QUICK="1", HYPOTHESIS_PROFILE="dev")
    prior: dict[str, str] = {}
    names: list[str] = []
    if base is not None:
        prior = json.loads(base.read_text(encoding="utf-8"))["statuses"]
        names = sorted(n for n, st in prior.items()
                       if st not in ("killed", "timeout", "segfault", "check was interrupted by user")
                       and any(fnmatch.fnmatch(_file_of(n), g) for g in _only()))
        prior = {n: st for n, st in prior.items() if any(fnmatch.fnmatch(_file_of(n), g) for g in _only())}
    cmd = ["nice", "-n", "10", *_mutmut(), "run", "--max-children", str(max_children), *names]
    p = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
    res = subprocess.run([*_mutmut(), "results", "--all", "true"], cwd=dest, env=env, capture_output=True, text=True)
    statuses: dict[str, str] = {}
    for line in res.stdout.splitlines():
        if ":" in line:
            name, st = line.strip().rsplit(":", 1)
            statuses[name.strip()] = st.strip()
    if prior:
        statuses = {**prior, **{n: st for n, st in statuses.items() if n in names and st != "not checked"}}
    rep = summarize(statuses, time.perf_counter() - t0)
    rep["mutmut_exit"] = p.returncode
    rep["mutmut_tail"] = (p.stdout + p.stderr)[-2000:]
    for name in rep["survivors"]:
        d = subprocess.run([*_mutmut(), "show", name], cwd=dest, env=env, capture_output=True, text=True)
        rep["diffs"][name] = d.stdout[-1500:]
    rep["tests"] = _tests_of(dest)
    out.write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return rep


def recheck(dest: Path, report_path: Path, tests: list[str]) -> dict[str, Any]:
    """Run every survivor of ``report_path`` again against the current ``tests`` (copied into the
    scratch run's ``mutants/`` folder), exactly as mutmut runs a mutant: its trampolines select
    the mutant named by ``MUTANT_UNDER_TEST``. Killed survivors are marked ``killed``."""
    rep = json.loads(report_path.read_text(encoding="utf-8"))
    mdir = dest / "mutants"
    for t in tests:
        shutil.copy2(ROOT / t, mdir / t)
    env = dict(os.environ, KMR_EXHAUSTIVE_QUICK="1", HYPOTHESIS_PROFILE="dev")
    statuses: dict[str, str] = rep["statuses"]
    for name in rep["survivors"]:
        env["MUTANT_UNDER_TEST"] = name
        p = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            *tests], cwd=mdir, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            statuses[name] = "killed"
    new = summarize(statuses, rep["seconds"])
    new["diffs"] = {k: v for k, v in rep.get("diffs", {}).items() if k in new["survivors"]}
    new["tests"] = tests
    report_path.write_text(json.dumps({**rep, **new}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return new


def equivalents() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    data = json.loads(EQUIVALENT.read_text(encoding="utf-8"))
    return {e["mutant"]: e["reason"] for e in data["equivalent"]}


def summarize(statuses: dict[str, str], seconds: float) -> dict[str, Any]:
    # "check was interrupted by user": the mutant let a KeyboardInterrupt escape Algorithm 1 into
    # pytest, which stops as if Ctrl-C were pressed (exit 2): a test did not pass, so it is killed
    leaked = sorted(n for n, s in statuses.items() if s == "check was interrupted by user")
    killed = sorted(n for n, s in statuses.items() if s in ("killed", "timeout", "segfault")) + leaked
    survivors = sorted(n for n, s in statuses.items() if s in ("survived", "no tests", "suspicious"))
    other = sorted(n for n, s in statuses.items() if n not in killed and n not in survivors)
    eq = equivalents()
    listed = [n for n in survivors if n in eq]
    score = len(killed) / max(1, len(killed) + len(survivors))
    score_ne = len(killed) / max(1, len(killed) + len(survivors) - len(listed))
    return {"mutants": len(statuses), "killed": len(killed), "survived": len(survivors), "other": other,
            "score": round(score, 4), "score_non_equivalent": round(score_ne, 4),
            "survivors": survivors, "equivalent_listed": listed, "killed_by_leaked_interrupt": leaked,
            "unexplained": [n for n in survivors if n not in eq], "seconds": round(seconds, 1),
            "statuses": statuses, "diffs": {}}


def load_report(path: Path = REPORT) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data.pop("diffs", None)
    data.pop("statuses", None)
    data.pop("mutmut_tail", None)
    return data


def exit_code(path: Path = REPORT) -> int:
    rep = load_report(path)
    return 1 if rep is None or rep["unexplained"] or rep.get("not_rerun") else 0


def report(path: Path = REPORT) -> int:
    if not path.exists():
        print(f"no mutation report at {path}: run `make mutation` (takes tens of minutes)")
        return 1
    rep = json.loads(path.read_text(encoding="utf-8"))
    print(f"mutmut on kmr_ref/core: {rep['mutants']} mutants, {rep['killed']} killed, {rep['survived']} survived "
          f"({len(rep['equivalent_listed'])} listed as equivalent in proofs/equivalent_mutants.json); "
          f"score {100 * rep['score']:.1f} %, of non-equivalent mutants {100 * rep['score_non_equivalent']:.1f} %; "
          f"{rep['seconds'] / 60:.0f} min")
    eq = equivalents()
    pending = rep.get("not_rerun", [])
    if pending:
        print(f"  {len(pending)} mutants not yet run against the current tests (run `make mutation`)")
    for n in rep["unexplained"]:
        print(f"  SURVIVED (not listed as equivalent): {n}")
    for n in rep["equivalent_listed"]:
        print(f"  equivalent: {n}: {eq.get(n, '')}")
    return 1 if rep["unexplained"] or pending else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmr_proofs.mutation")
    ap.add_argument("cmd", choices=["run", "report", "recheck"])
    ap.add_argument("--dest", default="/tmp/kmr-mut")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--out", default=str(REPORT), help="where the JSON report goes")
    ap.add_argument("--base", default=None, help="an earlier report: rerun only its survivors")
    a = ap.parse_args(argv)
    if a.cmd == "recheck":
        recheck(Path(a.dest), Path(a.out), [t for t in TESTS if (ROOT / t).exists()])
    if a.cmd == "run":
        rep = run(Path(a.dest), a.max_children, Path(a.out), Path(a.base) if a.base else None)
        print(f"mutmut exit {rep['mutmut_exit']}")
    return report(Path(a.out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
