"""Tests of ``proofs/`` (``kmr_proofs``) and ``kmr prove``.

* the whole ``kmr prove --json`` path, once, against its JSON contract;
* proof <-> code: Hypothesis runs of ``kmr_ref.core.budgeted_kmr`` replayed through the
  transition relation of the Algorithm 1 encoding (KMR.trace.record, KMR.alg1.interrupt), and
  every tampered copy rejected (KMR.prop1.monotone, KMR.prop1.termination,
  KMR.prop1.status-truthful, KMR.prop1.integer-bound, KMR.prop1.last-accepted);
* hand-written traces, legal and illegal, that do not come from the code;
* the rounding encodings of the lemmas against Python (KMR.quant.error-bound) and the floor
  encoding against ``prune_count`` (KMR.prune.count);
* the exit rule of ``kmr prove``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import z3
from hypothesis import given
from hypothesis import strategies as st

from kmr_proofs import lemmas
from kmr_proofs.replay import Case, replay, run_case, tampers
from kmr_proofs.runner import MutantResult, ObligationResult, Report, _finish_crosshair
from kmr_ref.core import Exact, KMRResult, Status, StepRecord

ROOT = Path(__file__).resolve().parent.parent
RESULTS = {"proved", "failed", "unknown"}
KINDS = {"induction", "bounded", "replay", "crosshair", "lemma", "exhaustive"}
HAVE_CROSSHAIR = importlib.util.find_spec("crosshair") is not None


# ---------------------------------------------------------------- kmr prove --json

@pytest.fixture(scope="module")
def prove_json() -> tuple[int, dict[str, Any]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "proofs"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "kmr_ref", "prove", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout)


def _spec_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "spec").rglob("*.md"))


@pytest.mark.slow
def test_prove_json_contract(prove_json: tuple[int, dict[str, Any]]) -> None:
    """The JSON of ``kmr prove --json``: keys, vocabularies, every obligation proved, every
    mutant refuted with a counterexample, exit status 0."""
    rc, data = prove_json
    assert set(data) >= {"obligations", "mutants", "total_seconds"}
    obs = data["obligations"]
    muts = data["mutants"]
    assert isinstance(obs, list) and isinstance(muts, list)
    ids = set()
    for o in obs:
        assert {"id", "clause", "kind", "result", "seconds", "checks"} <= set(o), o
        assert o["result"] in RESULTS and o["kind"] in KINDS, o
        # issue 8: whether each obligation is checked on the model, on the code, or both
        assert o["checks"] == {"induction": "model", "bounded": "model", "lemma": "model", "crosshair": "code",
                               "replay": "both", "exhaustive": "both"}[o["kind"]], o
        assert isinstance(o["seconds"], (int, float)) and o["seconds"] >= 0
        assert re.fullmatch(r"KMR\.[a-z0-9]+\.[a-z0-9-]+", o["clause"]), o["clause"]
        ids.add(o["id"])
        if o["kind"] != "crosshair" or HAVE_CROSSHAIR:
            assert o["result"] == "proved", o
    for m in muts:
        assert {"id", "obligation", "refuted", "counterexample"} <= set(m), m
        assert m["obligation"] in ids, m
        assert m["refuted"] is True and m["counterexample"], m
    assert rc == 0
    assert isinstance(data["total_seconds"], (int, float))


@pytest.mark.slow
def test_prove_covers_prop1_with_mutants(prove_json: tuple[int, dict[str, Any]]) -> None:
    """Every part of Proposition 1 has an induction obligation, a bounded one, a replay/CrossHair
    tie to the code, and at least one mutant that Z3 refutes with a concrete run (a trace from
    an initial state: ``s0: HEAD ...``)."""
    _, data = prove_json
    obs = data["obligations"]
    muts = data["mutants"]
    assert isinstance(obs, list) and isinstance(muts, list)
    for part, clause in (("P1a", "KMR.prop1.monotone"), ("P1b", "KMR.prop1.termination"),
                         ("P1c", "KMR.prop1.status-truthful"), ("P1d", "KMR.prop1.integer-bound"),
                         ("P1e", "KMR.prop1.last-accepted")):
        kinds = {o["kind"] for o in obs if o["clause"] == clause}
        assert {"induction", "bounded", "crosshair"} <= kinds, (clause, kinds)
        cex = [m["counterexample"] for m in muts if m["obligation"] == f"{part}-induction"]
        assert cex and all(c.startswith("s0: HEAD") and "violates:" in c for c in cex), part
    # every obligation of a kind that can have mutants has at least one
    for o in obs:
        if o["kind"] in ("induction", "lemma") and o["id"] != "quant-rounding-model":
            assert any(m["obligation"] == o["id"] for m in muts), o["id"]
    assert any(o["kind"] == "replay" and o["result"] == "proved" for o in obs)


@pytest.mark.slow
def test_prove_covers_alg10(prove_json: tuple[int, dict[str, Any]]) -> None:
    """``kmr prove`` has Algorithm 10's rows (KMR.alg10.prop1 by induction, bounded and replay;
    KMR.alg10.skip, KMR.alg10.phase-break, KMR.alg10.status), each induction row with a mutant
    refuted by a run from the pipeline's initial state (``s0: TOP ...``)."""
    _, data = prove_json
    obs, muts = data["obligations"], data["mutants"]
    assert isinstance(obs, list) and isinstance(muts, list)
    kinds = {o["kind"] for o in obs if o["clause"] == "KMR.alg10.prop1"}
    assert {"induction", "bounded"} <= kinds <= {"induction", "bounded", "crosshair"}, kinds
    assert any(o["id"] == "alg10-replay" and o["kind"] == "replay" and o["result"] == "proved" for o in obs)
    for c in ("KMR.alg10.skip", "KMR.alg10.phase-break", "KMR.alg10.status", "KMR.alg10.phase-run"):
        assert any(o["clause"] == c and o["kind"] == "induction" and o["result"] == "proved" for o in obs), c
    for o in obs:
        if o["id"].startswith("alg10-") and o["kind"] == "induction":
            cex = [m["counterexample"] for m in muts if m["obligation"] == o["id"]]
            assert cex and all(c.startswith("s0: TOP") for c in cex), o["id"]


@pytest.mark.slow
def test_prove_clauses_exist_in_spec(prove_json: tuple[int, dict[str, Any]]) -> None:
    """Each obligation's clause ID is defined in spec/ (for areas whose spec file exists)."""
    _, data = prove_json
    spec = _spec_text()
    obs = data["obligations"]
    assert isinstance(obs, list)
    for o in obs:
        area = o["clause"].split(".")[1]
        if f"`KMR.{area}." in spec:
            assert f"`{o['clause']}`" in spec, o["clause"]
    for c in ("KMR.prop1.monotone", "KMR.prop1.termination", "KMR.prop1.status-truthful",
              "KMR.prop1.integer-bound", "KMR.prop1.last-accepted", "KMR.alg1.status"):
        assert f"`{c}`" in spec


# ---------------------------------------------------------------- replay (proof <-> code)

exact = st.one_of(st.integers(-4, 12),
                  st.fractions(min_value=-4, max_value=12, max_denominator=4))
cases = st.builds(
    Case,
    c0=st.one_of(st.integers(0, 12), st.fractions(min_value=0, max_value=12, max_denominator=4)),
    deltas=st.lists(st.one_of(st.integers(-4, 2), st.fractions(-4, 2, max_denominator=4)),
                    max_size=6).map(tuple),
    budget=exact,
    max_steps=st.integers(0, 6),
    greedy=st.booleans(),
    interrupt_policy_call=st.one_of(st.none(), st.integers(0, 3)),
    interrupt_record=st.one_of(st.none(), st.integers(0, 3)),
)


@given(cases)
def test_replay_accepts_every_run_of_the_code(case: Case) -> None:
    """KMR.trace.record: every recorded step of budgeted_kmr is a legal transition of the
    encoding, and the returned status/cost are a legal ending (KMR.alg1.interrupt included)."""
    res = run_case(case)
    v = replay(res, case.max_steps)
    assert v.legal, (v.failed_at, res)


@given(cases)
def test_replay_rejects_every_tampered_run(case: Case) -> None:
    """Tampered traces violate Proposition 1 (KMR.prop1.monotone, KMR.prop1.termination,
    KMR.prop1.status-truthful, KMR.prop1.last-accepted): the replay must reject each."""
    res = run_case(case)
    variants = tampers(res, case.max_steps)
    assert len(variants) >= 2
    for name, bad, n in variants:
        assert not replay(bad, n).legal, (name, bad)


def _rec(t: int, before: Exact, after: Exact, accepted: bool) -> StepRecord:
    return StepRecord(t, "k", 0, before, after, None, accepted,
                      "accepted" if accepted else "not-strictly-lower")


def _res(status: Status, trace: list[StepRecord], budget: Exact, c0: Exact, c_out: Exact) -> KMRResult[None]:
    return KMRResult(None, status, tuple(trace), budget, c0, c_out, None, None)


def test_replay_hand_written_traces() -> None:
    """Traces written by hand from spec/kmr.md §7, not produced by the code (KMR.alg1.feasible,
    KMR.alg1.early-break, KMR.alg1.step-limit, KMR.alg1.interrupt)."""
    legal = [
        (_res(Status.FEASIBLE, [_rec(0, 5, 3, True), _rec(1, 3, 2, True)], 2, 5, 2), 3),
        (_res(Status.STALLED, [_rec(0, 5, 4, True), _rec(1, 4, 4, False)], 2, 5, 4), 3),
        (_res(Status.STEP_LIMIT, [_rec(0, 5, 4, True), _rec(1, 4, 3, True)], 2, 5, 3), 2),
        (_res(Status.POLICY_STOP, [], 2, 5, 5), 3),
        (_res(Status.FEASIBLE, [], 7, 5, 5), 0),
        # interrupted right after a rejected record was appended (on_record)
        (_res(Status.INTERRUPTED, [_rec(0, 5, 9, False)], 2, 5, 5), 3),
        # interrupted after an accepted record made the model feasible: feasible wins
        (_res(Status.FEASIBLE, [_rec(0, 5, 1, True)], 2, 5, 1), 3),
        (_res(Status.FEASIBLE, [_rec(0, Fraction(5, 2), Fraction(3, 2), True)], 2, Fraction(5, 2),
              Fraction(3, 2)), 1),
    ]
    for r, n in legal:
        v = replay(r, n)
        assert v.legal, (r, v)
    illegal = [
        (_res(Status.FEASIBLE, [_rec(0, 5, 3, True)], 2, 5, 3), 3),  # 3 > B: not feasible
        (_res(Status.STEP_LIMIT, [_rec(0, 5, 4, True)], 2, 5, 4), 2),  # 1 accepted, N = 2
        (_res(Status.STALLED, [_rec(0, 5, 6, True)], 2, 5, 6), 3),  # accepted a cost increase
        (_res(Status.STALLED, [_rec(0, 5, 5, False)], 2, 5, 4), 3),  # M_out not last accepted
        (_res(Status.POLICY_STOP, [_rec(0, 5, 7, False)], 2, 5, 5), 3),  # rejected record + stop
        (_res(Status.FEASIBLE, [_rec(0, 5, 3, True), _rec(0, 3, 2, True)], 2, 5, 2), 3),  # t not counted
        (_res(Status.FEASIBLE, [_rec(0, 5, 1, True)], 2, 5, 1), 0),  # N = 0: no step may run
        (_res(Status.FEASIBLE, [_rec(0, 1, 0, True)], 2, 1, 0), 3),  # c0 <= B: loop never runs
    ]
    for r, n in illegal:
        assert not replay(r, n).legal, r


# ---------------------------------------------------------------- lemma encodings vs code

@given(st.fractions(min_value=-10**4, max_value=10**4, max_denominator=64))
def test_round_half_even_encoding_is_python_round(x: Fraction) -> None:
    """KMR.quant.error-bound rests on the rounding encoding: it admits exactly round(x)."""
    r = z3.Int("r")
    xv = z3.RealVal(f"{x.numerator}/{x.denominator}")
    s = z3.Solver()
    s.add(lemmas.round_half_even(xv, r))
    assert s.check() == z3.sat
    assert s.model()[r].as_long() == round(x)
    s.add(r != round(x))
    assert s.check() == z3.unsat


@given(st.fractions(min_value=0, max_value=1, max_denominator=200), st.integers(0, 10**6))
def test_prune_count_satisfies_floor_encoding(s: Fraction, n: int) -> None:
    """KMR.prune.count: the reference's prune_count is the k of the lemma (floor(s*n))."""
    from kmr_ref.methods.pruning import prune_count

    k = prune_count(s, n)
    x = z3.RealVal(f"{s.numerator * n}/{s.denominator}")
    for cand, want in ((k, True), (k - 1, False), (k + 1, False)):
        assert z3.is_true(z3.simplify(lemmas.floor_def(x, z3.IntVal(cand)))) == want
    assert k == (s.numerator * n) // s.denominator  # independent formula


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_quant_lemma_range_is_the_code_range(scheme: str) -> None:
    """KMR.quant.error-bound / KMR.quant.clamp-error are proved for the code range of
    KMR.quant.bits: the lemma's (qmin, qmax) at P = 2^(b-1) is code_range(b) for b = 2..16."""
    from kmr_ref.methods.quantization import code_range

    for b in range(2, 17):
        lo, hi = lemmas.code_range(z3.IntVal(2 ** (b - 1)), scheme == "asymmetric")
        got = (z3.simplify(lo).as_long(), z3.simplify(hi).as_long())
        assert got == code_range(b, scheme)  # type: ignore[arg-type]
        want = (0, 2**b - 1) if scheme == "asymmetric" else (-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1)
        assert got == want


def test_lemmas_are_proved_and_mutants_refuted() -> None:
    """KMR.prune.count, KMR.prune.cost, KMR.prune.monotone, KMR.quant.error-bound,
    KMR.quant.clamp-error, KMR.quant.storage-monotone, KMR.lowrank.applicable."""
    for lem in lemmas.LEMMAS:
        assert lemmas.prove_lemma(lem)[0] == "proved", lem.id
        assert lem.mutants, lem.id
        for mu in lem.mutants:
            refuted, cex = lemmas.refute_lemma(lem, mu)
            assert refuted and "=" in cex, (lem.id, mu, cex)


# ---------------------------------------------------------------- exit rule

def test_exit_rule() -> None:
    """Non-zero when an obligation is not proved or a mutant survives; a CrossHair 'unknown'
    fails only with --strict."""
    ok = ObligationResult("a", "KMR.prop1.monotone", "induction", "proved", 0.1)
    mut = MutantResult("a/m", "a", True, "s0: ...")
    assert Report([ok], [mut]).exit_code() == 0
    assert Report([ok], [MutantResult("a/m", "a", False, "")]).exit_code() == 1
    failed = ObligationResult("b", "KMR.prop1.monotone", "induction", "failed", 0.1)
    assert Report([ok, failed], [mut]).exit_code() == 1
    unknown_z3 = ObligationResult("c", "KMR.prop1.monotone", "bounded", "unknown", 0.1)
    assert Report([ok, unknown_z3], [mut]).exit_code() == 1
    rep = Report([ok], [mut])
    _finish_crosshair(rep, "crosshair-tool is not installed", 0.0)
    ch = [o for o in rep.obligations if o.kind == "crosshair"]
    assert len(ch) == 6 and all(o.result == "unknown" and "not installed" in o.detail for o in ch)
    assert {o.checks for o in ch} == {"code"}  # CrossHair runs the code itself (P1a-e and alg10-crosshair)
    assert rep.exit_code() == 0
    assert rep.exit_code(strict=True) == 1
