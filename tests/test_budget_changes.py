"""Algorithm 1 with a budget that changes between steps (spec/kmr.md §6 ``KMR.budget.schedule``,
``KMR.budget.read``; §7 ``KMR.trace.budget``; §8 ``KMR.prop1.changing-budget``).

Hand-worked runs (expected values written by hand from the spec text), every small world of
``kmr_proofs.budgets`` through the code against its interpreter and Proposition 1, and the Z3
obligations for any budget sequence with their mutants.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest

from kmr_proofs import budgets
from kmr_ref.core import (
    BudgetError,
    CostMeter,
    IntRange,
    KMRTriple,
    Knob,
    KnobValue,
    PolicyState,
    Proposal,
    ScheduledPolicy,
    Status,
)
from kmr_ref.core.budgeted import BudgetState, budgeted_kmr


@dataclass
class _Minus:
    """The model is its own cost; knob ``d`` subtracts (floored at 0). Counts its applications."""

    calls: int = 0

    def knobs(self) -> Sequence[Knob]:
        return (Knob("d", IntRange(0, 10)),)

    def apply(self, model: int, knob: str, value: KnobValue) -> int:
        assert isinstance(value, int)
        self.calls += 1
        return max(0, model - value)


def _triple(rule: _Minus | None = None) -> KMRTriple[int]:
    return KMRTriple("minus", rule or _Minus(), CostMeter("value", lambda m: m))


def _policy(*ds: int) -> ScheduledPolicy[int]:
    return ScheduledPolicy(tuple(Proposal("d", d) for d in ds))


def test_lowered_then_raised_stream_by_hand() -> None:
    """KMR.budget.read, KMR.trace.budget: c0 = 10, proposals -3 each, budgets 8, 2, 9. B_0 = 8:
    10 > 8, accept 7 (record budget 8); B_1 = 2 (lowered): 7 > 2, accept 4 from the current model
    (budget 2); B_2 = 9 (raised): 4 <= 9, feasible, no third rule application, nothing undone."""
    rule = _Minus()
    res = budgeted_kmr(10, _triple(rule), _policy(3, 3, 3), iter([8, 2, 9]), 5)
    assert [(r.t, r.cost_before, r.cost_after, r.accepted, r.budget) for r in res.trace] == [
        (0, 10, 7, True, 8), (1, 7, 4, True, 2)]
    assert res.status is Status.FEASIBLE and res.model == 4 and res.cost_final == 4
    assert res.budget == 9 and rule.calls == 2
    assert [r.to_json()["budget"] for r in res.trace] == [8, 2]


def test_raised_budget_never_undoes_and_status_is_against_budget_in_force() -> None:
    """KMR.budget.read: budgets 5 then 100: one step (10 -> 7) is kept, the raise ends the loop
    feasible at 7 (not 10); budgets 9 then 1 with N = 1: step-limit judged against B_1 = 1."""
    res = budgeted_kmr(10, _triple(), _policy(3, 3), iter([5, 100]), 5)
    assert (res.status, res.model, res.budget, len(res.trace)) == (Status.FEASIBLE, 7, 100, 1)
    res = budgeted_kmr(10, _triple(), _policy(3, 3), iter((9, 1)), 1)
    assert (res.status, res.model, res.budget) == (Status.STEP_LIMIT, 7, 1)
    # 7 <= B_0 = 9 would have been feasible: under B_1 = 1 the loop goes on and stalls at 7
    res = budgeted_kmr(10, _triple(), _policy(3, 0), iter((9, 1)), 5)
    assert (res.status, res.model, res.budget) == (Status.STALLED, 7, 1)
    assert [(r.cost_before, r.cost_after, r.budget) for r in res.trace] == [(10, 7, 9), (7, 7, 1)]


def test_exhausted_stream_keeps_last_budget_and_policy_sees_budget_in_force() -> None:
    """KMR.budget.schedule: a stream of one value is a fixed budget; the policy is shown B_t."""
    shown: list[tuple[int, Any]] = []
    base = _policy(1, 1, 1, 1)

    def pol(st: PolicyState[int]) -> Proposal:
        shown.append((st.t, st.budget))
        out = base(st)
        assert isinstance(out, Proposal)
        return out

    res = budgeted_kmr(6, _triple(), pol, iter([5, 3]), 9)
    assert shown == [(0, 5), (1, 3), (2, 3)] and res.model == 3 and res.status is Status.FEASIBLE


def test_callable_schedule_sees_state() -> None:
    """KMR.budget.schedule: a callable is called with BudgetState (t, model, cost, quality, history)
    once per guard evaluation (KMR.budget.read): here at t = 0, 1, 2."""
    seen: list[tuple[int, int, int, int]] = []

    def budget(st: BudgetState[int]) -> int:
        seen.append((st.t, st.model, int(st.cost), len(st.history)))
        return st.cost - 1 if st.t < 2 else 100  # always just below the current cost, then raised

    res = budgeted_kmr(9, _triple(), _policy(2, 2, 2), budget, 9)
    assert seen == [(0, 9, 9, 0), (1, 7, 7, 1), (2, 5, 5, 2)]
    assert [r.budget for r in res.trace] == [8, 6] and res.budget == 100 and res.status is Status.FEASIBLE


def test_fixed_budget_trace_unchanged() -> None:
    """KMR.trace.budget: a fixed budget's records carry no budget field and their JSON is as
    before; a constant schedule gives the same run except for that field (KMR.budget.schedule)."""
    fixed = budgeted_kmr(10, _triple(), _policy(3, 3, 3), 4, 5)
    assert [r.to_json() for r in fixed.trace] == [
        {"t": 0, "knob": "d", "value": 3, "cost_before": 10, "cost": 7, "quality": None, "accepted": True,
         "reason": "accepted"},
        {"t": 1, "knob": "d", "value": 3, "cost_before": 7, "cost": 4, "quality": None, "accepted": True,
         "reason": "accepted"}]
    assert all(r.budget is None for r in fixed.trace)
    const = budgeted_kmr(10, _triple(), _policy(3, 3, 3), lambda st: 4, 5)
    assert const.status is fixed.status and const.model == fixed.model and const.budget == fixed.budget
    assert [dataclasses.replace(r, budget=None) for r in const.trace] == list(fixed.trace)
    assert [r.budget for r in const.trace] == [4, 4]
    assert json.dumps([r.to_json() for r in const.trace]).count('"budget": 4') == 2


def test_bad_budget_values() -> None:
    """KMR.budget.schedule: an empty stream or an invalid B_0 raises BudgetError before any rule
    runs; an invalid B_1 raises BudgetError carrying the accepted step (KMR.alg1.error) and the
    budget in force before the read; "7/2" is an exact spelling (KMR.exact.binary64)."""
    rule = _Minus()
    with pytest.raises(BudgetError, match=r"^\[KMR\.budget\.schedule\]") as ei:
        budgeted_kmr(10, _triple(rule), _policy(3), iter([]), 5)
    assert rule.calls == 0 and getattr(ei.value, "kmr_partial", None) is None
    with pytest.raises(BudgetError, match=r"^\[KMR\.budget\.schedule\]"):
        budgeted_kmr(10, _triple(rule), _policy(3), lambda st: float("inf"), 5)
    assert rule.calls == 0

    def stream() -> Iterator[object]:
        yield 8
        yield float("nan")

    with pytest.raises(BudgetError, match=r"^\[KMR\.budget\.schedule\]") as ei:
        budgeted_kmr(10, _triple(rule), _policy(3, 3), stream(), 5)
    part = ei.value.kmr_partial  # type: ignore[attr-defined]
    assert part.model == 7 and part.budget == 8 and part.status is Status.FEASIBLE and len(part.trace) == 1
    res = budgeted_kmr(10, _triple(), _policy(3, 3, 3), iter(["7/2"]), 5)
    assert res.budget == Fraction(7, 2) and res.model == 1 and res.status is Status.FEASIBLE


def test_small_worlds_through_the_code() -> None:
    """KMR.budget.read, KMR.budget.schedule, KMR.trace.budget, KMR.prop1.changing-budget: every
    world of ``budgets.SMALL`` (stream and callable schedules, faults while the budget is read)
    equals the interpreter and satisfies Proposition 1; a sample replays through the encoding."""
    s = budgets.check_all(budgets.SMALL, replay_sample=25)
    assert s.worlds > 30000 and s.changed > 1000 and s.replays == 25
    assert set(s.statuses) == {"feasible", "stalled", "step-limit", "policy-stop", "interrupted"}


def test_replay_rejects_tampered_budgets() -> None:
    """KMR.prop1.changing-budget: the by-hand run replays through the encoding; a record whose
    budget would have ended the loop, or a final budget the cost does not meet, does not."""
    res = budgeted_kmr(10, _triple(), _policy(3, 3, 3), iter([8, 2, 9]), 5)
    assert budgets.replay(res, 5, [8, 2, 9])
    bad = dataclasses.replace(res, trace=(res.trace[0], dataclasses.replace(res.trace[1], budget=7)))
    assert not budgets.replay(bad, 5, [8, 7, 9])
    assert not budgets.replay(dataclasses.replace(res, budget=3), 5, [8, 2, 3])
    assert not budgets.replay(res, 5, [8, 2, 3])  # the schedule read 9, not 3


def test_z3_obligations_for_any_budget_sequence() -> None:
    """KMR.prop1.changing-budget, KMR.budget.read: P1a-P1e and the budget in force are proved by
    induction for an uninterpreted budget sequence; every mutant is refuted by a concrete run;
    the coverage goals (budget lowered, raised, feasible only by a raise) are reachable."""
    obs = budgets.obligations()
    assert {o.id for o in obs} == {"P1a-budgets-induction", "P1b-budgets-induction", "P1c-budgets-induction",
                                   "P1d-budgets-induction", "P1e-budgets-induction", "budget-in-force-induction"}
    for ob in obs:
        assert budgets.prove(ob).result == "proved", ob.id
        assert ob.mutants, ob.id
        for mu in ob.mutants:
            r = budgets.refute(ob, mu, 6)
            assert r.refuted and r.counterexample.startswith("s0: HEAD"), (ob.id, mu)
    assert budgets.coverage(8)[0] == "proved"
