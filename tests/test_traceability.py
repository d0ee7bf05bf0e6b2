"""Spec <-> code <-> tests traceability (spec/README.md, "Clause IDs")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kmr_ref.spec_index import (
    CITED,
    algorithm_box,
    defined_clauses,
    implementing_lines,
    line_id_of,
    property_clauses,
)

ROOT = Path(__file__).resolve().parent.parent


def _text_under(*dirs: str, suffixes: tuple[str, ...]) -> str:
    parts: list[str] = []
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*")):
            if p.is_file() and p.suffix in suffixes:
                parts.append(p.read_text(encoding="utf-8"))
    return "\n".join(parts)


def test_every_alg1_line_implemented_exactly_once() -> None:
    """Each line ID of Algorithm 1's box is cited by exactly one comment line in kmr_ref/."""
    ids = [i for i in (line_id_of(x) for x in algorithm_box("alg1")) if i is not None]
    assert len(ids) >= 14
    impl = implementing_lines()
    core_only = {k: [h for h in v if "kmr_ref/core/budgeted.py" in h[0]] for k, v in impl.items()}
    bad = {i: core_only.get(i, []) for i in ids if len(core_only.get(i, [])) != 1}
    assert not bad, f"line IDs not implemented exactly once in budgeted.py: {bad}"


def test_every_clause_cited_by_a_test_or_vector() -> None:
    """Every clause ID defined in spec/ is cited by a file under tests/ or spec/vectors/."""
    cited = set(CITED.findall(_text_under("tests", suffixes=(".py",))))
    vec = ROOT / "spec" / "vectors"
    if vec.exists():
        cited |= set(CITED.findall(_text_under("spec/vectors", suffixes=(".json", ".jsonl", ".py"))))
    missing = sorted(set(defined_clauses()) - cited)
    assert not missing, f"clauses no test or vector cites: {missing}"


def test_code_cites_only_defined_clauses() -> None:
    """No dangling IDs: every KMR.* ID the reference code raises or cites is defined in spec/."""
    defined = set(defined_clauses())
    used = set(CITED.findall(_text_under("kmr_ref", suffixes=(".py",))))
    # f-string prefixes such as "KMR.prune" (completed at run time with ".nonfinite") are not IDs
    used = {u for u in used if u.count(".") >= 2}
    dangling = sorted(used - defined)
    assert not dangling, f"IDs used in kmr_ref/ but not defined in spec/: {dangling}"


def test_every_behaviour_clause_cited_in_code() -> None:
    """Every clause that is not a (property) is cited by the reference code that implements it."""
    props = property_clauses()
    assert {"KMR.prop1.monotone", "KMR.prune.cost", "KMR.alg10.prop1"} <= props
    used = set(CITED.findall(_text_under("kmr_ref", suffixes=(".py",))))
    missing = sorted(c for c in defined_clauses() if c not in props and c not in used)
    assert not missing, f"behaviour clauses no line of kmr_ref/ cites: {missing}"


def test_clause_ids_unique_and_well_formed() -> None:
    """IDs are names (``KMR.<area>.<name>``), never section numbers."""
    for cid in defined_clauses():
        assert re.fullmatch(r"KMR\.[a-z0-9]+(\.[a-z0-9][a-z0-9-]*)+", cid), cid


def test_core_imports_no_torch() -> None:
    """KMR.core.no-torch: importing kmr_ref.core loads no torch."""
    code = "import sys, kmr_ref.core; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_annotate_prints_source_under_each_line() -> None:
    """`kmr spec --annotate alg1` shows the implementing line under every numbered line."""
    out = subprocess.run([sys.executable, "-m", "kmr_ref", "spec", "--annotate", "alg1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "no implementing line" not in out
    assert "kmr_ref/core/budgeted.py" in out and "KMR.alg1.strict-progress" in out
    assert out.count("-> kmr_ref/core/budgeted.py:") >= 15
