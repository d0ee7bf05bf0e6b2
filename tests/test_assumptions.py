"""The assumptions of Proposition 1 as clauses, and what the reference enforces of them
(spec/kmr.md: KMR.exact.plain, KMR.meter.deterministic, KMR.policy.no-mutation,
KMR.alg1.callbacks-return, KMR.alg1.after-loop; proofs/README.md, "Assumed")."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import pytest

from kmr_ref.core import (
    BudgetError,
    CostMeter,
    IntRange,
    KMRTriple,
    Knob,
    KnobDomainError,
    KnobValue,
    MeterError,
    Phase,
    PolicyState,
    Proposal,
    QualityMeter,
    ScheduledPolicy,
    Status,
    Stop,
    budgeted_kmr,
    composed_kmr,
    real_knob,
    to_exact,
)
from kmr_ref.core.checked import checked
from kmr_ref.core.errors import ContractError


class Lying(int):
    """An int whose `<` always says yes: Algorithm 1 would accept every rising cost."""

    def __lt__(self, other: object) -> bool:
        return True


class Set:
    """Model: a list [cost]; knob 'v' sets the cost to v (a new list: no mutation)."""

    def knobs(self) -> Sequence[Knob]:
        return [Knob("v", IntRange(0, 100))]

    def apply(self, model: list[int], knob: str, value: KnobValue) -> list[int]:
        assert isinstance(value, int)
        return [value]


def _triple(cost: Any = None, quality: Any = None, rule: Any = None) -> KMRTriple[list[int]]:
    return KMRTriple("t", rule or Set(), cost or CostMeter("c", lambda m: m[0]), quality)


def test_subclass_cost_refused() -> None:
    """KMR.exact.plain: a cost meter returning an int subclass with its own `<` raises MeterError
    (else Algorithm 1 would accept 5 -> 9 as progress); so does a Fraction subclass."""
    class F(Fraction):
        pass

    for bad in (lambda m: Lying(m[0] + 4), lambda m: F(m[0] + 4, 1)):
        with pytest.raises(MeterError) as e:
            budgeted_kmr([5], _triple(CostMeter("c", bad)), ScheduledPolicy((Proposal("v", 9),)), 0, 3)
        assert e.value.clause == "KMR.exact.plain"
    assert type(CostMeter[int]("c", lambda m: Fraction(4, 2))(0)) is Fraction  # plain values pass


def test_subclass_budget_and_knob_value_refused() -> None:
    """KMR.exact.plain: a budget or a knob value of an int subclass is refused with a typed error."""
    with pytest.raises(BudgetError) as e:
        budgeted_kmr([5], _triple(), ScheduledPolicy(()), Lying(3), 3)
    assert e.value.clause == "KMR.exact.plain"
    with pytest.raises(KnobDomainError):
        real_knob("s", 0, 1).check(Lying(0))
    assert type(to_exact(Fraction(6, 3), clause="x", error=BudgetError, what="b")) is int


def test_nondeterministic_meter_detected() -> None:
    """KMR.meter.deterministic: a cost meter that measures the returned model differently the
    second time raises MeterError after the loop, with the partial result attached
    (KMR.alg1.after-loop); Algorithm 10 compares each phase's first measurement with its cache."""
    ticks = itertools.count()
    drift = CostMeter[list[int]]("drift", lambda m: m[0] + (next(ticks) >= 2))
    with pytest.raises(MeterError) as e:
        budgeted_kmr([5], _triple(drift), ScheduledPolicy((Proposal("v", 3),)), 0, 1)
    assert e.value.clause == "KMR.meter.deterministic"
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert part.model == [3] and [r.cost_after for r in part.trace] == [3]
    ticks2 = itertools.count()
    drift2 = CostMeter[list[int]]("drift", lambda m: m[0] + (next(ticks2) >= 1))
    ph = Phase("a", Set(), ScheduledPolicy((Proposal("v", 3),)))
    with pytest.raises(MeterError) as e2:
        composed_kmr([5], [ph], drift2, 0, 3)
    assert e2.value.clause == "KMR.meter.deterministic"
    assert "phase 'a': cost meter 'drift' measured the same model as 5, then as 6" in str(e2.value)
    assert "cost meter 'drift' measured the returned model as 3, then differently" in str(e.value)


def test_checked_mode_catches_mutation() -> None:
    """KMR.policy.no-mutation KMR.rule.no-mutation KMR.meter.deterministic: checked() raises
    ContractError at the first call that modified what it was shown, or measured one model twice
    with different values; honest callbacks pass unchanged."""
    def sneaky_policy(state: PolicyState[list[int]]) -> Proposal | Stop:
        state.model.append(0)
        return Stop()

    class SneakyRule(Set):
        def apply(self, model: list[int], knob: str, value: KnobValue) -> list[int]:
            model[0] = 0
            return [value]

    def sneaky_quality(m: list[int]) -> float:
        m.append(1)
        return 0.0

    ticks = itertools.count()
    cases: list[tuple[KMRTriple[list[int]], Any, str]] = [
        (_triple(), sneaky_policy, "KMR.policy.no-mutation"),
        (_triple(rule=SneakyRule()), ScheduledPolicy((Proposal("v", 3),)), "KMR.rule.no-mutation"),
        (_triple(quality=QualityMeter("q", sneaky_quality)), ScheduledPolicy(()), "KMR.policy.no-mutation"),
        (_triple(CostMeter("c", lambda m: m[0] + next(ticks))), ScheduledPolicy((Proposal("v", 9),)),
         "KMR.meter.deterministic"),
    ]
    for tri, pol, clause in cases:
        t2, p2 = checked(tri, pol)
        with pytest.raises(ContractError) as e:
            budgeted_kmr([5], t2, p2, 0, 3)
        assert e.value.clause == clause, (clause, e.value)
    t2, p2 = checked(_triple(), ScheduledPolicy((Proposal("v", 3), Proposal("v", 1))))
    res = budgeted_kmr([5], t2, p2, 0, 3)
    assert res.model == [1] and res.status is Status.POLICY_STOP


def test_policy_calls_bounded_by_iterations() -> None:
    """KMR.alg1.callbacks-return KMR.prop1.termination: Algorithm 1 calls the policy at most N
    times and the rule at most N times (P1b counts iterations; each call must itself return)."""
    calls = {"policy": 0, "rule": 0}

    class Counting(Set):
        def apply(self, model: list[int], knob: str, value: KnobValue) -> list[int]:
            calls["rule"] += 1
            return [model[0] - 1]

    def pol(state: PolicyState[list[int]]) -> Proposal | Stop:
        calls["policy"] += 1
        return Proposal("v", 0)

    res = budgeted_kmr([50], _triple(rule=Counting()), pol, 0, 7)
    assert res.status is Status.STEP_LIMIT and calls == {"policy": 7, "rule": 7}


def test_interrupt_after_loop_carries_result() -> None:
    """KMR.alg1.after-loop: an interrupt raised after the loop (here by the final re-measurement)
    propagates with kmr_partial holding every accepted step."""
    n = itertools.count()

    def c(m: list[int]) -> int:
        if next(n) == 2:  # C(M_0), C(M'), then the re-measurement of the returned model
            raise KeyboardInterrupt
        return m[0]

    with pytest.raises(KeyboardInterrupt) as e:
        budgeted_kmr([5], _triple(CostMeter("c", c)), ScheduledPolicy((Proposal("v", 3),)), 0, 1)
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert part.model == [3] and part.status is Status.INTERRUPTED and len(part.trace) == 1
