"""Unit checks of kmr_ref/core that kill mutants the behavioural suites let through
(``make mutation``; proofs/mutation_report.json). Each names the clause it pins down."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import pytest

from kmr_ref.core import (
    BudgetError,
    CostMeter,
    GreedyPolicy,
    InformativeMeter,
    IntRange,
    KMRTriple,
    Knob,
    KnobValue,
    Phase,
    PolicyError,
    PolicyState,
    Proposal,
    QualityMeter,
    ScheduledPolicy,
    Status,
    Stop,
    budgeted_kmr,
    composed_kmr,
)


class SetTo:
    def knobs(self) -> Sequence[Knob]:
        return [Knob("v", IntRange(0, 100))]

    def apply(self, model: int, knob: str, value: KnobValue) -> int:
        assert isinstance(value, int)
        return value


def _tri(quality: bool = False) -> KMRTriple[int]:
    return KMRTriple("t", SetTo(), CostMeter("c", lambda m: m), QualityMeter("q", lambda m: -m) if quality else None)


@pytest.mark.parametrize("run", ["alg1", "alg10"])
@pytest.mark.parametrize("bad", [-1, True, 1.0, "3"])
def test_step_limit_validated(run: str, bad: object) -> None:
    """KMR.alg1.validate: N must be an int >= 0 (not a bool, float or string), in both algorithms;
    the error names the clause and what was wrong."""
    with pytest.raises(BudgetError) as e:
        if run == "alg1":
            budgeted_kmr(5, _tri(), ScheduledPolicy(()), 0, bad)  # type: ignore[arg-type]
        else:
            composed_kmr(5, [], CostMeter("c", lambda m: m), 0, bad)  # type: ignore[arg-type]
    assert str(e.value) == f"[KMR.alg1.validate] step limit N must be an int >= 0, got {bad!r}"


@pytest.mark.parametrize("run", ["alg1", "alg10"])
def test_budget_validated(run: str) -> None:
    """KMR.alg1.validate: a non-finite budget is refused, naming the clause."""
    with pytest.raises(BudgetError) as e:
        if run == "alg1":
            budgeted_kmr(5, _tri(), ScheduledPolicy(()), float("nan"), 3)
        else:
            composed_kmr(5, [], CostMeter("c", lambda m: m), float("inf"), 3)
    assert e.value.clause == "KMR.alg1.validate"
    assert str(e.value) in ("[KMR.alg1.validate] budget B must be finite, got nan",
                            "[KMR.alg1.validate] budget B must be finite, got inf")


def test_policy_returning_junk() -> None:
    """KMR.policy.proposal: anything but a Proposal or Stop raises PolicyError naming its type."""
    with pytest.raises(PolicyError) as e:
        budgeted_kmr(5, _tri(), lambda st: 42, 0, 3)  # type: ignore[arg-type,return-value]
    assert str(e.value) == "[KMR.policy.proposal] policy returned int"


def test_greedy_stop_reason_and_state_without_triple_quality() -> None:
    """KMR.policy.greedy: with no candidate lowering cost it returns Stop("no candidate lowers
    cost"); a state carrying a quality while the triple has no quality meter scores 0 (no crash)."""
    tri = _tri()
    st = PolicyState(5, 5, 0.5, 0, 0, tri, ())
    assert GreedyPolicy(lambda s: [Proposal("v", 7)])(st) == Stop("no candidate lowers cost")
    assert GreedyPolicy(lambda s: [Proposal("v", 3), Proposal("v", 1)])(st) == Proposal("v", 1)
    st2 = PolicyState(5, 5, None, 0, 0, _tri(quality=True), ())
    assert GreedyPolicy(lambda s: [Proposal("v", 3), Proposal("v", 1)])(st2) == Proposal("v", 1)


def test_informative_meter_measures_the_model() -> None:
    """KMR.meter.informative: an informative meter reports a float of the model it is given."""
    m = InformativeMeter[int]("size", lambda x: x * 2)
    assert m(3) == 6.0 and type(m(3)) is float and m.kind == "informative"


def test_phase_outcomes_and_tags() -> None:
    """KMR.alg10.phase-trace KMR.alg10.phase-break: phase outcomes, record tags and global t."""
    a = Phase("a", SetTo(), ScheduledPolicy((Proposal("v", 9), Proposal("v", 12))))
    b = Phase("b", SetTo(), ScheduledPolicy((Proposal("v", 4),)))
    seen: list[tuple[str, int, int]] = []
    out = composed_kmr(10, [a, b], CostMeter("c", lambda m: m), 0, 5,
                       on_record=lambda n, r: seen.append((n, r.t, int(r.cost_after))))
    assert seen == [("a", 0, 9), ("a", 1, 12), ("b", 1, 4)]
    assert out.phase_of_record == ("a", "a", "b")
    assert [(p.name, p.status, p.steps) for p in out.phases] == [("a", Status.STALLED, 2),
                                                                  ("b", Status.POLICY_STOP, 1)]
    assert out.result.status is Status.POLICY_STOP and out.result.model == 4
    assert out.result.cost_initial == 10 and out.result.budget == 0
    assert Fraction(out.result.cost_final) == 4


@pytest.mark.parametrize("refusal", [AttributeError, TypeError])
def test_exception_refusing_attributes_propagates_unchanged(refusal: type[Exception]) -> None:
    """KMR.alg1.error: an exception that refuses the kmr_partial attribute (its __setattr__ raises
    AttributeError or TypeError) still propagates unchanged, without a partial result."""
    class Frozen(Exception):
        def __setattr__(self, name: str, value: object) -> None:
            raise refusal(name)

    class Failing(SetTo):
        def apply(self, model: int, knob: str, value: KnobValue) -> int:
            raise Frozen("rule failed")

    tri: KMRTriple[int] = KMRTriple("t", Failing(), CostMeter("c", lambda m: m))
    with pytest.raises(Frozen) as e:
        budgeted_kmr(5, tri, ScheduledPolicy((Proposal("v", 1),)), 0, 3)
    assert not hasattr(e.value, "kmr_partial")
    with pytest.raises(Frozen):
        composed_kmr(5, [Phase("a", Failing(), ScheduledPolicy((Proposal("v", 1),)))],
                     CostMeter("c", lambda m: m), 0, 3)


def test_partial_status_follows_line_13() -> None:
    """KMR.alg1.error KMR.alg1.feasible: an error after an accepted step that reached the budget
    carries a partial result with status feasible (as line 13 sets it); above it, interrupted."""
    for budget, want in ((1, Status.FEASIBLE), (0, Status.INTERRUPTED)):
        def boom(r: object) -> None:
            raise RuntimeError("log failed")

        with pytest.raises(RuntimeError) as e:
            budgeted_kmr(5, _tri(), ScheduledPolicy((Proposal("v", 1),)), budget, 3, on_record=boom)
        part = e.value.kmr_partial  # type: ignore[attr-defined]
        assert part.status is want and part.model == 1 and part.cost_final == 1


def test_phase_policy_sees_its_triple() -> None:
    """KMR.alg10.shared-cost KMR.policy.state: each phase's policy is shown a triple named after
    the phase, with the phase's rule and the pipeline's one cost meter (and quality meter)."""
    seen: list[tuple[str, str, str | None]] = []
    cost = CostMeter[int]("c", lambda m: m)
    qual = QualityMeter[int]("q", lambda m: -m)

    def pol(state: PolicyState[int]) -> Proposal | Stop:
        tri = state.triple
        seen.append((tri.name, tri.cost.name, None if tri.quality is None else tri.quality.name))
        return Stop()

    composed_kmr(10, [Phase("a", SetTo(), pol), Phase("b", SetTo(), pol)], cost, 0, 5, quality=qual)
    assert seen == [("a", "c", "q"), ("b", "c", "q")]
