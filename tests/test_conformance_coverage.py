"""Vector lint and clause coverage (``kmr_ref.conformance.coverage``, ``spec/vectors/uncovered.toml``):
unique ids across files, known clauses, a primary clause per vector that is among its clauses, and
every clause of spec/ either cited by a vector or listed with the reason it has none."""

from __future__ import annotations

import fnmatch

from kmr_ref.conformance.coverage import table, uncovered_reasons, vectors_by_clause
from kmr_ref.conformance.report import default_files
from kmr_ref.conformance.vectors import load_vectors
from kmr_ref.spec_index import defined_clauses


def test_vector_lint() -> None:
    """Ids unique across all files; primary and cited clauses defined in spec/; primary in clauses."""
    known = set(defined_clauses())
    ids: list[str] = []
    for f in default_files():
        for v in load_vectors(f):
            ids.append(v["id"])
            assert v["primary"] in v["clauses"], v["id"]
            assert set(v["clauses"]) <= known, (v["id"], sorted(set(v["clauses"]) - known))
    assert len(ids) == len(set(ids)), "duplicate vector ids across files"


def test_every_clause_has_a_vector_or_a_reason() -> None:
    missing = [r["clause"] for r in table() if not (r["primary"] or r["cited"]) and not r["reason"]]
    assert not missing, f"clauses with neither a vector nor a reason in spec/vectors/uncovered.toml: {missing}"


def test_reasons_are_not_stale() -> None:
    """Every entry of uncovered.toml matches a defined clause that really has no vector, and none
    names a clause a vector cites (so a new vector forces its reason out)."""
    covered = set(vectors_by_clause())
    defined = set(defined_clauses())
    for key, reason in uncovered_reasons().items():
        assert reason.strip(), key
        hits = {c for c in defined if fnmatch.fnmatchcase(c, key)}
        assert hits - covered, f"{key}: matches no clause without a vector (stale)"
        if "*" not in key:
            assert key not in covered, f"{key} now has a vector: remove it from uncovered.toml"


def test_coverage_at_least() -> None:
    """The kit covers the observable core: Algorithms 1 and 10, pruning, quantization (0.1.0 kit:
    63 clauses; now 73 of the committed 151 plus every Algorithm 10 behaviour clause)."""
    rows = {r["clause"]: r for r in table()}
    have = {c for c, r in rows.items() if r["primary"] or r["cited"]}
    assert len(have) >= 73
    assert {c for c in rows if c.startswith("KMR.alg10.")} <= have
