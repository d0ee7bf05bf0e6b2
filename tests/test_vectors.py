"""Frozen conformance vectors (``spec/vectors/<version>/``): schema, regeneration, reference run.

1. every vector file validates against ``schema.json`` (the ``jsonschema`` library, draft 2020-12;
   tampered files are shown rejected);
2. every ``spec/vectors/generate_*.py`` regenerates its files byte for byte (frozen vectors);
3. every vector of a kind with a runner passes against the reference (``kmr_ref``), and a
   tampered expectation fails, with a copy-paste reproduction printed on failure.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.vectors import (
    RUNNERS,
    VectorResult,
    clause_report,
    load_vectors,
    register_runner,
    run_alg1_vector,
    run_file,
    run_vector,
)
from tests.strategies import spec_clause_ids

ROOT = Path(__file__).resolve().parent.parent
VDIR = ROOT / "spec" / "vectors" / SPEC_VERSION
SCHEMA = json.loads((VDIR / "schema.json").read_text(encoding="utf-8"))
FILES = sorted(p for p in VDIR.glob("*.json") if p.name != "schema.json")
GENERATORS = sorted((ROOT / "spec" / "vectors").glob("generate_*.py"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def validate(doc: Any) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(doc)]
ALG1 = VDIR / "alg1.json"


def _alg1_ids() -> list[str]:
    return [v["id"] for v in load_vectors(ALG1)]


def test_files_present() -> None:
    """The alg1 vector file and its generator exist (KMR.alg1.loop-guard is checked through them)."""
    assert ALG1 in FILES
    assert ROOT / "spec" / "vectors" / "generate_alg1.py" in GENERATORS


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_schema_valid(path: Path) -> None:
    """Every vector file matches schema.json (draft 2020-12, the jsonschema library)."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    doc = json.loads(path.read_text(encoding="utf-8"))
    errs = validate(doc)
    assert not errs, "\n".join(errs[:20])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ids_unique_and_clauses_exist(path: Path) -> None:
    """Vector ids are unique in their file; every cited clause is a clause of spec/."""
    vf = load_vectors(path)
    ids = [v["id"] for v in vf]
    assert len(ids) == len(set(ids))
    known = spec_clause_ids()
    for v in vf:
        missing = set(v["clauses"]) - known
        assert not missing, f"{v['id']} cites unknown clauses {sorted(missing)}"
        assert v["primary"] in v["clauses"], f"{v['id']}: the primary clause is not among its clauses"


def _tamper(doc: dict[str, Any], how: str) -> None:
    v = doc["vectors"][0]
    if how == "missing-id":
        del v["id"]
    elif how == "bad-clause":
        v["clauses"] = ["alg1.loop-guard"]
    elif how == "extra-field":
        v["extra"] = 1
    elif how == "bad-status":
        v["expected"] = {**v["expected"], "status": "done"}
    elif how == "float-cost":
        doc["vectors"][1]["input"]["cost"]["0"] = 2.5
    elif how == "bad-rational":
        doc["vectors"][1]["input"]["cost"]["0"] = "3/0"
    elif how == "bad-policy":
        v["input"]["policy"] = {"type": "random"}
    elif how == "bad-state-key":
        v["input"]["cost"]["x"] = 1
    elif how == "kind-wrong-version":
        doc["spec_version"] = "9.9.9"
    elif how == "record-missing-field":
        rec = next(x for x in doc["vectors"] if x["expected"].get("trace"))
        del rec["expected"]["trace"][0]["reason"]
    elif how == "bool-as-integer":
        v["input"]["initial_state"] = True
    elif how == "no-primary":
        del v["primary"]
    elif how == "record-extra-field":
        rec = next(x for x in doc["vectors"] if x["expected"].get("trace"))
        rec["expected"]["trace"][0]["phase"] = "p"


@pytest.mark.parametrize("how", ["missing-id", "bad-clause", "extra-field", "bad-status", "float-cost",
                                 "bad-rational", "bad-policy", "bad-state-key", "kind-wrong-version",
                                 "record-missing-field", "bool-as-integer", "no-primary",
                                 "record-extra-field"])
def test_schema_rejects_tampered(how: str) -> None:
    """The schema and validator are not vacuous: each tampering of alg1.json is rejected."""
    doc = json.loads(ALG1.read_text(encoding="utf-8"))
    _tamper(doc, how)
    assert validate(doc), f"tampering {how!r} was accepted"


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda p: p.name)
def test_vectors_frozen(gen: Path, tmp_path: Path) -> None:
    """Frozen vectors: the generator, rerun into a temp dir, writes the committed files byte for byte.
    (To change a released file, bump the spec version: see spec/vectors/README.md.)"""
    proc = subprocess.run([sys.executable, str(gen), str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    written = sorted(tmp_path.glob("*.json"))
    assert written, f"{gen.name} wrote nothing"
    for f in written:
        committed = VDIR / f.name
        assert committed.exists(), f"{f.name} is generated but not committed"
        assert f.read_bytes() == committed.read_bytes(), (
            f"{committed} differs from what {gen.name} generates; rerun: python {gen.relative_to(ROOT)}")


def test_generator_independent() -> None:
    """The expected values come from the generator's own interpreter, never from kmr_ref: no
    generator imports it statically. (The method generators' optional cross-check step loads the
    reference by importlib after the file's content is fixed; tests/test_method_vectors.py proves by
    behaviour that their output is the same bytes with kmr_ref and torch unimportable.)"""
    for gen in GENERATORS:
        src = gen.read_text(encoding="utf-8")
        assert "import kmr_ref" not in src and "from kmr_ref" not in src, gen.name


def test_alg1_coverage() -> None:
    """The alg1 vectors cover every status Algorithm 1 can end with on a table world (all but
    interrupted), N = 0, rational and binary64 budgets, greedy ties and typed errors."""
    vf = load_vectors(ALG1)
    statuses = {v["expected"].get("status") for v in vf}
    assert {"feasible", "stalled", "step-limit", "policy-stop"} <= statuses
    errors = {v["expected"].get("error") for v in vf}
    assert {"KnobDomainError", "BudgetError"} <= errors
    assert any(v["input"]["max_steps"] == 0 for v in vf)
    assert any(isinstance(v["input"]["budget"], str) for v in vf)
    assert any(isinstance(v["input"]["budget"], float) for v in vf)
    assert any(v["input"]["policy"]["type"] == "greedy" and "KMR.policy.greedy-ties" in v["clauses"] for v in vf)
    ok = [v for v in vf if "status" in v["expected"]]
    assert any(not v["expected"]["trace"] and v["expected"]["status"] == "feasible" for v in ok)
    assert any(v["expected"]["trace"] and v["expected"]["status"] == "feasible" for v in ok)
    # canonical exact numbers: "p/q" strings are in lowest terms with q > 1
    for v in ok:
        for r in v["expected"]["trace"]:
            for k in ("value", "cost_before", "cost"):
                if isinstance(r[k], str):
                    q = Fraction(r[k])
                    assert q.denominator > 1 and r[k] == f"{q.numerator}/{q.denominator}"


@pytest.mark.parametrize("vid", _alg1_ids())
def test_alg1_vector_passes(vid: str) -> None:
    """Each alg1 vector, run through the reference adapter, matches its frozen expectation
    (clauses: see the vector's "clauses")."""
    vf = load_vectors(ALG1)
    vec = vf.by_id(vid)
    res = run_vector(vf.kind, vec, ALG1.relative_to(ROOT))
    assert res.outcome == "pass", (
        f"{vid} failed:\n{res.diff}\nreproduce: {res.reproduction}\n"
        f"vector: {json.dumps(vec, sort_keys=True)}")


def _mutations(vec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    e = vec["expected"]
    if "error" in e:
        m = copy.deepcopy(vec)
        m["expected"] = {"error": "PolicyError"}
        out.append(m)
        return out
    m = copy.deepcopy(vec)
    m["expected"]["status"] = "stalled" if e["status"] != "stalled" else "feasible"
    out.append(m)
    m = copy.deepcopy(vec)
    m["expected"]["final_state"] = e["final_state"] + 1
    out.append(m)
    if e["trace"]:
        m = copy.deepcopy(vec)
        m["expected"]["trace"] = e["trace"][:-1]
        out.append(m)
        m = copy.deepcopy(vec)
        r = m["expected"]["trace"][-1]
        r["cost"] = f"{Fraction(r['cost']) * 2 + 1}" if isinstance(r["cost"], str) else r["cost"] + 1
        out.append(m)
    return out


def test_runner_detects_wrong_expectations() -> None:
    """The runner is not vacuous: every mutated expectation of every alg1 vector fails, with a diff."""
    for vec in load_vectors(ALG1):
        for m in _mutations(vec):
            ok, diff = run_alg1_vector(m)
            assert not ok and diff, f"mutation of {vec['id']} passed"


def test_runner_registry_and_report(tmp_path: Path) -> None:
    """Dispatch by the file's "kind": unknown kinds are not-supported; register_runner extends;
    the per-clause report puts fail above pass; failures carry a reproduction command."""
    assert RUNNERS["alg1"] is run_alg1_vector
    vec: dict[str, Any] = {"id": "x-1", "clauses": ["KMR.budget"], "input": {}, "expected": {}, "tolerance": None}
    assert run_vector("no-such-kind", vec).outcome == "not-supported"
    register_runner("test-kind", lambda v: (v["id"] == "x-1", "diff"))
    try:
        f = tmp_path / "t.json"
        f.write_text(json.dumps({"kind": "test-kind", "spec_version": SPEC_VERSION,
                                 "vectors": [vec, {**vec, "id": "x-2", "clauses": ["KMR.budget", "KMR.triple"]}]}))
        res = run_file(f)
        assert [r.outcome for r in res] == ["pass", "fail"]
        assert "--id x-2" in res[1].reproduction and str(f) in res[1].reproduction
        # the failure is charged to x-2's primary clause (its first, as it names none) alone
        assert clause_report(res) == {"KMR.budget": "fail"}
        assert clause_report([VectorResult("a", "k", ("KMR.x",), "pass", "", "")]) == {"KMR.x": "pass"}
    finally:
        del RUNNERS["test-kind"]


def test_cli_reproduction() -> None:
    """``python -m kmr_ref.conformance.vectors FILE --id ID`` reruns one vector and shows it."""
    vid = _alg1_ids()[0]
    proc = subprocess.run([sys.executable, "-m", "kmr_ref.conformance.vectors", str(ALG1), "--id", vid],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"--- {vid} (alg1, primary " in proc.stdout and "vectors: 1 (1 pass)" in proc.stdout
    assert "Warning" not in proc.stderr
