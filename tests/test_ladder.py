"""The ladder candidate list (KMR.policy.ladder) on a toy integer model."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from kmr_ref.core import (
    CostMeter,
    GreedyPolicy,
    IntRange,
    KMRTriple,
    Knob,
    KnobValue,
    PolicyState,
    Proposal,
    budgeted_kmr,
    real_knob,
)
from kmr_ref.core.policy import ladder_candidates
from kmr_ref.core.trace import StepRecord


class TwoDials:
    """Model = (bits, sparsity); a decreasing int knob and an increasing real knob."""

    def knobs(self) -> Sequence[Knob]:
        return [Knob("bits", IntRange(2, 8), "decreasing"), real_knob("s", 0, 1, Fraction(1, 4))]

    def apply(self, model: tuple[int, Fraction], knob: str, value: KnobValue) -> tuple[int, Fraction]:
        assert not isinstance(value, str)
        return (int(value), model[1]) if knob == "bits" else (model[0], Fraction(value))


def cost(m: tuple[int, Fraction]) -> Fraction:
    return m[0] * (1 - m[1]) * 100


TRI: KMRTriple[tuple[int, Fraction]] = KMRTriple("dials", TwoDials(), CostMeter("c", cost))


def state(history: tuple[StepRecord, ...]) -> PolicyState[tuple[int, Fraction]]:
    return PolicyState((8, Fraction(0)), Fraction(800), None, len(history), 0, TRI, history)


def test_ladder_starts_at_least_aggressive_end() -> None:
    """KMR.policy.ladder: bits (decreasing, grid 2..8) starts at 8 -> proposes 7; s proposes 1/4."""
    assert ladder_candidates(["bits", "s"])(state(())) == [Proposal("bits", 7), Proposal("s", Fraction(1, 4))]


@given(st.integers(2, 8), st.sampled_from([Fraction(i, 4) for i in range(5)]))
def test_ladder_follows_last_accepted(b: int, s: Fraction) -> None:
    """KMR.policy.ladder: the next grid value after the last accepted one; none at the grid's end;
    rejected records do not count."""
    hist = (StepRecord(0, "bits", b, 1, 0, None, True, "accepted"),
            StepRecord(1, "s", s, 1, 0, None, True, "accepted"),
            StepRecord(2, "bits", 2, 1, 1, None, False, "not-strictly-lower"))
    got = ladder_candidates(["bits", "s"])(state(hist))
    expect = ([Proposal("bits", b - 1)] if b > 2 else []) + ([Proposal("s", s + Fraction(1, 4))] if s < 1 else [])
    assert got == expect


def test_greedy_over_ladder_reaches_budget() -> None:
    """KMR.policy.greedy over a ladder reaches a budget on the toy model with strictly falling cost."""
    res = budgeted_kmr((8, Fraction(0)), TRI, GreedyPolicy(ladder_candidates(["bits", "s"])), 150, 30)
    assert res.status.value == "feasible" and res.cost_final <= 150
    costs = [r.cost_after for r in res.trace]
    assert all(b < a for a, b in zip([Fraction(800), *costs], costs, strict=False))
