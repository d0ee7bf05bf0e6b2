"""Tests of the Algorithm 10 (Composed-KMR) proofs: ``kmr_proofs.alg10`` / ``prop10`` / ``replay10``.

* every obligation of Algorithm 10 (KMR.alg10.prop1, KMR.alg10.skip, KMR.alg10.phase-break,
  KMR.alg10.phase-run, KMR.alg10.status) is proved by induction and by BMC, and every mutant is
  refuted by a concrete run from an initial state;
* proof <-> code: Hypothesis runs of ``kmr_ref.core.composed_kmr`` replayed through the
  transition relation (KMR.alg10.phase-trace, KMR.alg10.init, KMR.alg10.phases,
  KMR.alg10.shared-cost, KMR.alg10.return), every tampered copy rejected;
* hand-written composed traces, legal and illegal, that do not come from the code;
* the "Proved:" lines of spec/kmr.md §9 point at README anchors and obligations that exist.
"""

from __future__ import annotations

import itertools
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmr_proofs import prop10, runner
from kmr_proofs.replay10 import Case10, PhaseCase, replay, run_case, tampers
from kmr_ref.core import ComposedResult, Exact, KMRResult, PhaseOutcome, Status, StepRecord

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- obligations and mutants

@pytest.fixture(scope="module")
def report() -> runner.Report:
    rep = runner.Report()
    runner._alg10(rep)
    return rep


def test_alg10_obligations_proved(report: runner.Report) -> None:
    """KMR.alg10.prop1 (a)-(e), KMR.alg10.skip, KMR.alg10.phase-break, KMR.alg10.phase-run,
    KMR.alg10.status: each pipeline obligation is proved by induction and by BMC, the per-phase
    reuse of Proposition 1 by induction, and the coverage check finds every command and status."""
    rows = {o.id: o for o in report.obligations}
    pipeline = [ob.id for ob in prop10.obligations()]
    assert len(pipeline) == 9
    for oid in pipeline:
        assert rows[oid].kind == "induction" and rows[oid].result == "proved", rows[oid]
        b = rows[oid.replace("-induction", "-bounded")]
        assert b.kind == "bounded" and b.result == "proved", b
    phase = [ob.id for ob in prop10.phase_obligations()]
    assert {p.removeprefix("alg10-phase-") for p in phase} >= {"P1a", "P1b", "P1c", "P1d", "P1e"}
    for oid in phase:
        assert rows[oid].result == "proved" and rows[oid].clause == "KMR.alg10.phase-run", rows[oid]
    cov = rows["alg10-coverage"]
    assert cov.result == "proved" and "all 15 commands" in cov.detail, cov
    clauses = {rows[o].clause for o in pipeline}
    assert clauses == {"KMR.alg10.prop1", "KMR.alg10.skip", "KMR.alg10.phase-break",
                       "KMR.alg10.phase-run", "KMR.alg10.status"}


def test_alg10_mutants_refuted_with_concrete_runs(report: runner.Report) -> None:
    """Non-vacuity: every obligation has mutants, each refuted by a run from an initial state
    (``s0: TOP ...``), including the ones named by the design: a stall that ends the whole
    pipeline (KMR.alg10.phase-break), each phase given N instead of N - used (KMR.alg10.prop1
    (b)), the model not carried between phases, the status taken from the first phase."""
    muts = report.mutants
    assert muts
    for m in muts:
        assert m.refuted, m
        assert m.counterexample.startswith("s0: TOP") and "violates:" in m.counterexample, m
    ids = {m.id for m in muts}
    for need in ("alg10-phase-break-induction/stall-ends-pipeline", "alg10-P1b-induction/phase-limit-N",
                 "alg10-P1a-induction/no-carry", "alg10-P1e-induction/no-carry",
                 "alg10-status-induction/status-first-phase", "alg10-P1c-induction/status-first-phase",
                 "alg10-P1d-induction/real-costs", "alg10-P1e-induction/stall-continues"):
        assert need in ids, need
    for ob in [*prop10.obligations(), *prop10.phase_obligations()]:
        assert any(m.obligation == ob.id for m in muts), ob.id
    # a counterexample crossing a phase boundary really has two phases in it
    cex = next(m.counterexample for m in muts if m.id == "alg10-P1b-induction/phase-limit-N")
    assert cex.count("--phase-start") == 2 and "violates: pipeline accepted records <= N" in cex


# ---------------------------------------------------------------- replay (proof <-> code)

exact = st.one_of(st.integers(-1, 10), st.fractions(min_value=-1, max_value=10, max_denominator=4))
delta = st.one_of(st.integers(-4, 2), st.fractions(-4, 2, max_denominator=4))
cases = st.builds(
    Case10,
    c0=st.one_of(st.integers(0, 14), st.fractions(min_value=0, max_value=14, max_denominator=4)),
    phases=st.lists(st.builds(PhaseCase, deltas=st.lists(delta, max_size=4).map(tuple), greedy=st.booleans()),
                    max_size=3).map(tuple),
    budget=exact,
    max_steps=st.integers(0, 6),
    interrupt_policy_call=st.one_of(st.none(), st.integers(0, 4)),
    interrupt_record=st.one_of(st.none(), st.integers(0, 4)),
)


@given(cases)
def test_replay_accepts_every_composed_run(case: Case10) -> None:
    """KMR.alg10.phase-trace KMR.alg10.phase-run KMR.alg10.phases KMR.alg10.init
    KMR.alg10.return: every phase start, record, phase end and the return of composed_kmr are
    legal transitions of the Algorithm 10 encoding (interrupts included)."""
    out = run_case(case)
    v = replay(out, case.max_steps, len(case.phases))
    assert v.legal, (v.failed_at, out)


@given(cases)
def test_replay_rejects_every_tampered_composed_run(case: Case10) -> None:
    """Tampered pipelines violate KMR.alg10.prop1 / KMR.alg10.status / KMR.alg10.phase-break:
    the replay must reject each."""
    out = run_case(case)
    variants = tampers(out, case.max_steps)
    assert len(variants) >= 2
    for name, bad, n in variants:
        assert not replay(bad, n, len(case.phases)).legal, (name, bad)


def _rec(t: int, before: Exact, after: Exact, accepted: bool) -> StepRecord:
    return StepRecord(t, "k", 0, before, after, None, accepted,
                      "accepted" if accepted else "not-strictly-lower")


def _run(status: Status, phases: list[tuple[Status, list[StepRecord]]], budget: Exact, c0: Exact,
         c_out: Exact) -> ComposedResult[None]:
    trace = [r for _, rs in phases for r in rs]
    owners = [f"p{k}" for k, (_, rs) in enumerate(phases) for _ in rs]
    outs = [PhaseOutcome(f"p{k}", s, len(rs)) for k, (s, rs) in enumerate(phases)]
    res: KMRResult[None] = KMRResult(None, status, tuple(trace), budget, c0, c_out, None, None)
    return ComposedResult(res, tuple(outs), tuple(owners))


S, F, P, L, INT = Status.STALLED, Status.FEASIBLE, Status.POLICY_STOP, Status.STEP_LIMIT, Status.INTERRUPTED


def test_replay_hand_written_composed_traces() -> None:
    """Traces written by hand from spec/kmr.md §9 (KMR.alg10.phase-break, KMR.alg10.skip,
    KMR.alg10.status, KMR.alg10.phase-trace), not produced by the code: (run, N, P)."""
    legal = [
        # the paper's third experiment: the first phase stalls, the second reaches the budget
        (_run(F, [(S, [_rec(0, 60, 50, True), _rec(1, 50, 55, False)]),
                  (F, [_rec(1, 50, 20, True), _rec(2, 20, 10, True)])], 15, 60, 10), 10, 2),
        (_run(S, [(P, [_rec(0, 5, 4, True)]), (S, [_rec(1, 4, 6, False)])], 2, 5, 4), 3, 2),
        (_run(P, [], 2, 5, 5), 3, 0),  # no phase at all
        (_run(L, [], 2, 5, 5), 0, 2),  # N = 0: no phase runs, step-limit
        (_run(F, [], 7, 5, 5), 3, 2),  # feasible at once: no phase runs
        (_run(L, [(P, [_rec(0, 9, 8, True)]), (L, [_rec(1, 8, 7, True)])], 2, 9, 7), 2, 3),
        (_run(P, [(P, []), (P, [])], 2, 5, 5), 3, 2),
        (_run(F, [(F, [_rec(0, Fraction(5, 2), Fraction(3, 2), True)])], 2, Fraction(5, 2),
              Fraction(3, 2)), 1, 1),
        # an interrupt after the N-th accepted step is reported as interrupted (the code's rule)
        (_run(INT, [(INT, [_rec(0, 10, 9, True)])], 0, 10, 9), 1, 2),
    ]
    for r, n, p in legal:
        v = replay(r, n, p)
        assert v.legal, (r, v)
    illegal = [
        # a stall ends the pipeline although a phase is left (KMR.alg10.phase-break)
        (_run(S, [(S, [_rec(0, 5, 5, False)])], 2, 5, 5), 3, 2),
        # the second phase starts from M_0, not from the last accepted model
        (_run(P, [(P, [_rec(0, 5, 4, True)]), (P, [_rec(1, 5, 3, True)])], 2, 5, 3), 3, 2),
        # the second phase is given N again instead of N - used: 3 accepted steps > N = 2
        (_run(L, [(P, [_rec(0, 9, 8, True)]), (L, [_rec(1, 8, 7, True), _rec(2, 7, 6, True)])], 2, 9, 6), 2, 2),
        # the status of the first phase instead of the last
        (_run(S, [(S, [_rec(0, 5, 5, False)]), (P, [])], 2, 5, 5), 3, 2),
        # t not shifted by the steps used before the phase
        (_run(P, [(P, [_rec(0, 5, 4, True)]), (P, [_rec(0, 4, 3, True)])], 2, 5, 3), 3, 2),
        # a phase runs although the model is feasible (KMR.alg10.skip)
        (_run(F, [(F, [_rec(0, 5, 1, True)]), (F, [_rec(1, 1, 0, True)])], 2, 5, 0), 3, 2),
        # more phases than given
        (_run(P, [(P, []), (P, [])], 2, 5, 5), 3, 1),
        # two rejected records in one phase
        (_run(S, [(S, [_rec(0, 5, 5, False), _rec(0, 5, 6, False)])], 2, 5, 5), 3, 1),
        # the spec's literal line 8 would say step-limit here; the code (and the encoding)
        # keep interrupted (proofs/README.md#a10-status)
        (_run(L, [(INT, [_rec(0, 10, 9, True)])], 0, 10, 9), 1, 2),
    ]
    for r, n, p in illegal:
        assert not replay(r, n, p).legal, r


def test_interrupt_after_last_step_is_the_code_rule() -> None:
    """KMR.alg10.status: composed_kmr interrupted after its N-th accepted step (C > B) returns
    interrupted; the replay accepts that run and rejects it relabelled step-limit."""
    case = Case10(10, (PhaseCase((-1, -1)), PhaseCase((-1,))), 0, 1, interrupt_record=0)
    out = run_case(case)
    assert out.result.status is Status.INTERRUPTED and out.result.accepted_steps == 1
    assert replay(out, 1, 2).legal
    bad = ComposedResult(_with_status(out.result, Status.STEP_LIMIT), out.phases, out.phase_of_record)
    assert not replay(bad, 1, 2).legal


def _with_status(r: KMRResult[Exact], s: Status) -> KMRResult[Exact]:
    return KMRResult(r.model, s, r.trace, r.budget, r.cost_initial, r.cost_final, r.quality_initial,
                     r.quality_final)


# ---------------------------------------------------------------- spec <-> proofs

def test_spec_section9_proved_links() -> None:
    """Each "Proved:" line of spec/kmr.md §9 names README anchors that exist and obligations of
    prop10 (KMR.alg10.prop1, KMR.alg10.skip, KMR.alg10.phase-break, KMR.alg10.phase-run)."""
    spec = (ROOT / "spec" / "kmr.md").read_text(encoding="utf-8")
    sec9 = spec[spec.index("## 9. Algorithm 10"):]
    readme = (ROOT / "proofs" / "README.md").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', readme))
    ids = {ob.id for ob in [*prop10.obligations(), *prop10.phase_obligations()]} | {
        ob.id.replace("-induction", "-bounded") for ob in prop10.obligations()} | {"alg10-replay"}
    lines = sec9.splitlines()
    proved = []  # each "Proved:" line with its continuation lines
    for k, ln in enumerate(lines):
        if ln.strip().startswith("Proved:"):
            more = list(itertools.takewhile(lambda x: x.startswith("  "), lines[k + 1:]))
            proved.append(" ".join([ln, *more]))
    assert len(proved) >= 4
    for ln in proved:
        links = re.findall(r"proofs/README\.md#([a-z0-9-]+)", ln)
        assert links and all(a in anchors for a in links), ln
        named = re.findall(r"`(alg10-[a-zA-Z0-9-]+)`", ln)
        assert named and all(n in ids for n in named), ln
