"""Code mutants of kmr_ref/core must be killed by the code-level checks
(``proofs/kmr_proofs/code_mutants.py``; each runs in a scratch copy of ``kmr_ref``, never the
working tree).

The default suite runs the three mutants named by issue 8 (each phase given N instead of N - used,
each phase started from M_0, the interrupt-reconcile branch deleted); ``make mutation`` and
``kmr prove --mutation`` run all of them, and mutmut over all of ``kmr_ref/core``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmr_proofs import code_mutants, mutation


@pytest.mark.parametrize("name", ["compose-phase-limit-N", "compose-no-carry", "budgeted-no-reconcile"])
def test_named_mutant_is_killed(name: str) -> None:
    """KMR.alg10.phase-run KMR.alg1.interrupt KMR.prop1.last-accepted KMR.alg10.prop1: the mutant
    makes a code-level check report a violation (exit 3), not a crash."""
    o = code_mutants.run_mutant(name)
    assert o.killed, o
    assert "VIOLATION [KMR." in o.detail, o


def test_every_mutation_site_exists() -> None:
    """A mutant whose text no longer occurs in the code would survive silently: each occurs once."""
    root = code_mutants.core_dir()
    for name, (fname, old, _new, _why) in code_mutants.MUTANTS.items():
        assert (root / fname).read_text(encoding="utf-8").count(old) == 1, name



# ---------------------------------------------------------------------------------------------
# The committed mutmut report (proofs/mutation_report.json; `make mutation`, `kmr prove --mutation`)


def _synthetic(tmp: Path, status: str) -> tuple[dict[str, object], Path]:
    core = tmp / "kmr_ref" / "core"
    core.mkdir(parents=True)
    (core / "__init__.py").write_text("")
    (core / "a.py").write_text("x = 1\n")
    statuses = {"kmr_ref.core.a.x_f__mutmut_1": "killed", "kmr_ref.core.a.x_f__mutmut_2": status}
    rep = mutation.summarize(statuses, 1.0, {"kmr_ref/core/a.py": {"sha256": mutation.sha256(core / "a.py")}})
    return rep, core


def test_report_problems_on_a_synthetic_core(tmp_path: Path) -> None:
    """A report passes only when every file of the core has a run, no file changed since its run
    and no survivor is unexplained; each failure is named (stale file, missing file, survivor)."""
    rep, core = _synthetic(tmp_path, "killed")
    assert mutation.problems(rep, tmp_path) == []
    assert rep["files"]["kmr_ref/core/a.py"]["score_non_equivalent"] == 1.0
    (core / "b.py").write_text("y = 2\n")
    assert mutation.problems(rep, tmp_path) == ["MISSING: kmr_ref/core/b.py has no mutation run"]
    (core / "b.py").unlink()
    (core / "a.py").write_text("x = 2\n")
    assert mutation.problems(rep, tmp_path) == [
        "STALE: kmr_ref/core/a.py changed since its mutation run (run `make mutation`)"]
    rep, _ = _synthetic(tmp_path / "s", "survived")
    assert mutation.problems(rep, tmp_path / "s") == [
        "SURVIVED (not listed as equivalent): kmr_ref.core.a.x_f__mutmut_2"]
    assert rep["score"] == 0.5 and rep["files"]["kmr_ref/core/a.py"]["survived"] == 1


def test_committed_report_is_consistent() -> None:
    """The committed report's figures follow from its statuses; every equivalent mutant listed in
    proofs/equivalent_mutants.json has a reason and is a mutant of a file the report covers; the
    files it covers are named with the hash of the source its run mutated, so `kmr prove
    --mutation` names each file changed since (stale) rather than claiming its score."""
    rep = json.loads(mutation.REPORT.read_text(encoding="utf-8"))
    again = mutation.summarize(rep["statuses"], rep["seconds"], {f: {"sha256": m["sha256"]}
                                                                  for f, m in rep["files"].items()})
    for key in ("mutants", "killed", "survived", "score", "score_non_equivalent", "survivors", "unexplained"):
        assert rep[key] == again[key], key
    for f, m in rep["files"].items():
        assert {k: m[k] for k in ("mutants", "killed", "survived", "equivalent")} == \
            {k: again["files"][f][k] for k in ("mutants", "killed", "survived", "equivalent")}, f
        assert len(m["sha256"]) == 64
    eq = json.loads(mutation.EQUIVALENT.read_text(encoding="utf-8"))["equivalent"]
    for e in eq:
        assert e["reason"].strip() and mutation._file_of(e["mutant"]) in rep["files"], e
        assert e["mutant"] in rep["statuses"], e
    problems = mutation.problems(rep)
    stale = mutation.stale(rep)
    assert [p for p in problems if p.startswith("STALE")] == [
        f"STALE: {f} changed since its mutation run (run `make mutation`)" for f in stale]
    assert (mutation.exit_code() == 0) == (problems == [])
