"""Algorithm 10, Composed-KMR (spec/kmr.md §9), on toy integer models with adversarial phases."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from kmr_ref.core import (
    CostMeter,
    IntRange,
    KMRTriple,
    Knob,
    KnobValue,
    Phase,
    Proposal,
    ScheduledPolicy,
    Status,
    budgeted_kmr,
    composed_kmr,
)


class Table:
    """Rule over an int model: knob 'j' with value v sets the model to table[v] (any int)."""

    def __init__(self, table: Sequence[int]) -> None:
        self.table = list(table)

    def knobs(self) -> Sequence[Knob]:
        return [Knob("j", IntRange(0, len(self.table) - 1))]

    def apply(self, model: int, knob: str, value: KnobValue) -> int:
        assert isinstance(value, int)
        return self.table[value]


COST: CostMeter[int] = CostMeter("id", lambda m: m)


@st.composite
def phases(draw: st.DrawFn) -> list[Phase[int]]:
    out: list[Phase[int]] = []
    for i in range(draw(st.integers(0, 4))):
        table = draw(st.lists(st.integers(0, 60), min_size=1, max_size=8))
        sched = draw(st.lists(st.integers(0, len(table) - 1), max_size=8))
        out.append(Phase(f"p{i}", Table(table), ScheduledPolicy(tuple(Proposal("j", v) for v in sched))))
    return out


@given(st.integers(0, 60), phases(), st.integers(0, 60), st.integers(0, 12))
def test_pipeline_proposition1(m0: int, ps: list[Phase[int]], budget: int, n: int) -> None:
    """KMR.alg10.prop1 KMR.alg10.phase-trace KMR.alg10.status KMR.alg10.return KMR.alg10.init"""
    out = composed_kmr(m0, ps, COST, budget, n)
    res = out.result
    acc = [r for r in res.trace if r.accepted]
    costs = [m0] + [int(r.cost_after) for r in acc]
    assert all(b < a for a, b in itertools.pairwise(costs))  # strict decrease across phases
    assert len(acc) <= n and len(acc) <= m0 - res.model
    assert res.model == costs[-1] == res.cost_final
    assert [r.t for r in acc] == list(range(len(acc)))  # global t over accepted records
    assert (res.status is Status.FEASIBLE) == (res.model <= budget)
    if res.status is Status.STEP_LIMIT:
        assert len(acc) == n and res.model > budget
    # each phase: accepted records first, then at most one rejected record, last in its phase
    for ph in out.phases:
        recs = [r for r, o in zip(res.trace, out.phase_of_record, strict=True) if o == ph.name]
        assert len(recs) == ph.steps
        assert all(r.accepted for r in recs[:-1])
        if recs and not recs[-1].accepted:
            assert ph.status is Status.STALLED and recs[-1].cost_after >= recs[-1].cost_before


@given(st.integers(0, 60), phases(), st.integers(0, 60), st.integers(0, 12))
def test_skip_and_phase_break(m0: int, ps: list[Phase[int]], budget: int, n: int) -> None:
    """KMR.alg10.phases KMR.alg10.skip KMR.alg10.phase-break KMR.alg10.shared-cost: phases run in
    order; a stalled/stopped phase hands over to the next; none runs once feasible or out of steps."""
    out = composed_kmr(m0, ps, COST, budget, n)
    ran = [p.name for p in out.phases]
    assert ran == [p.name for p in ps[:len(ran)]]
    for i, p in enumerate(out.phases[:-1]):
        assert p.status in (Status.STALLED, Status.POLICY_STOP), (i, p)
    if len(ran) < len(ps):
        assert out.result.cost_final <= budget or sum(r.accepted for r in out.result.trace) == n


@given(st.integers(0, 60), phases(), st.integers(0, 60), st.integers(0, 12))
def test_one_phase_equals_algorithm1(m0: int, ps: list[Phase[int]], budget: int, n: int) -> None:
    """KMR.alg10.phase-run: a one-phase pipeline is Algorithm 1 exactly."""
    if not ps:
        return
    p = ps[0]
    a = composed_kmr(m0, [p], COST, budget, n).result
    b = budgeted_kmr(m0, KMRTriple(p.name, p.rule, COST), p.policy, budget, n)
    assert (a.model, a.status, a.trace) == (b.model, b.status, b.trace)


def test_prune_then_quantize_shape() -> None:
    """KMR.alg10.phase-break: the first phase stalls, the second still runs and reaches the budget."""
    stall = Phase("prune", Table([50, 40, 45]), ScheduledPolicy((Proposal("j", 1), Proposal("j", 2))))
    quant = Phase("quant", Table([20, 10]), ScheduledPolicy((Proposal("j", 0), Proposal("j", 1))))
    out = composed_kmr(60, [stall, quant], COST, 15, 10)
    assert [(p.name, p.status) for p in out.phases] == [("prune", Status.STALLED), ("quant", Status.FEASIBLE)]
    assert out.result.status is Status.FEASIBLE and out.result.model == 10
    assert [r.t for r in out.result.trace] == [0, 1, 1, 2]
    assert out.phase_of_record == ("prune", "prune", "quant", "quant")
