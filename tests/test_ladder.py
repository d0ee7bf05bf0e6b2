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
    Stop,
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


class Dials:
    """Model = a tuple of m grid positions; knob ``k<i>`` (IntRange(0, g), increasing) sets
    position i; cost = sum of a per-knob cost table at the positions (any ints: rungs may lower,
    keep or raise the cost)."""

    def __init__(self, table: list[list[int]]) -> None:
        self.table = table
        self.calls = 0

    def knobs(self) -> Sequence[Knob]:
        return [Knob(f"k{i}", IntRange(0, len(row) - 1)) for i, row in enumerate(self.table)]

    def apply(self, model: tuple[int, ...], knob: str, value: KnobValue) -> tuple[int, ...]:
        self.calls += 1
        i = int(knob[1:])
        assert isinstance(value, int)
        return (*model[:i], value, *model[i + 1:])

    def cost(self, model: tuple[int, ...]) -> int:
        return sum(row[v] for row, v in zip(self.table, model, strict=True))


def brute_force_advancing_greedy(table: list[list[int]], budget: int, n: int) -> list[tuple[str, int, int]]:
    """spec/policies.md KMR.policy.ladder-advance with KMR.policy.greedy (no quality meter), written
    from the clauses: each knob's candidate is the first rung after its current value that strictly
    lowers the cost; the largest decrease wins, the earliest knob on ties; Stop when none."""
    m = [0] * len(table)
    c = sum(row[0] for row in table)
    out: list[tuple[str, int, int]] = []
    while c > budget and len(out) < n:
        best: tuple[int, int, int] | None = None  # (decrease, -position, value)
        for i, row in enumerate(table):
            for v in range(m[i] + 1, len(row)):
                c2 = c - row[m[i]] + row[v]
                if c2 < c:
                    if best is None or (c - c2, -i) > best[:2]:
                        best = (c - c2, -i, v)
                    break
        if best is None:
            break
        i, v = -best[1], best[2]
        c -= best[0]
        m[i] = v
        out.append((f"k{i}", v, c))
    return out


def _row(start: int, steps: list[int]) -> list[int]:
    row = [start]
    for d in steps:
        row.append(max(0, row[-1] + d))
    return row


# cost rows: mostly flat rungs (0), some lowering (-1, -2), some raising (+1)
rows = st.builds(_row, st.integers(2, 9), st.lists(st.sampled_from([0, 0, 0, -1, -2, 1]), min_size=1, max_size=6))


@given(st.lists(rows, min_size=1, max_size=4), st.integers(0, 6), st.integers(0, 12), st.booleans())
def test_greedy_ladder_advances_past_flat_rungs(table: list[list[int]], budget: int, n: int, reuse: bool) -> None:
    """KMR.policy.ladder-advance, KMR.policy.greedy, KMR.alg1.strict-progress: greedy over a ladder
    passes over rungs that do not lower cost and proposes each knob's first lowering rung, so it
    never stalls Algorithm 1 and takes exactly the steps of the brute force; with the reusing
    wrapper (KMR.rule.reuse) the trace is the same."""
    from kmr_ref.core.rules import reusing

    rule = Dials(table)
    tri = KMRTriple("dials", reusing(rule) if reuse else rule, CostMeter("c", rule.cost))
    names = [f"k{i}" for i in range(len(table))]
    res = budgeted_kmr(tuple([0] * len(table)), tri, GreedyPolicy(ladder_candidates(names)), budget, n)
    assert res.status.value != "stalled"
    assert [(r.knob, r.value, r.cost_after) for r in res.trace] == brute_force_advancing_greedy(table, budget, n)
    assert all(r.accepted and r.cost_after < r.cost_before for r in res.trace)


def test_ladder_advance_examples() -> None:
    """KMR.policy.ladder-advance: knob k0's rungs 1 and 2 keep the cost, rung 3 lowers it: greedy
    proposes (k0, 3), where the bare ladder's candidate (k0, 1) would make it stop; a knob whose
    remaining rungs all keep or raise the cost contributes nothing; advance() gives the next rung,
    None at the grid's end."""
    rule = Dials([[5, 5, 5, 2], [4, 4, 9]])
    tri = KMRTriple("dials", rule, CostMeter("c", rule.cost))
    lad = ladder_candidates(["k0", "k1"])
    st0: PolicyState[tuple[int, ...]] = PolicyState((0, 0), 9, None, 0, 0, tri, ())
    assert lad(st0) == [Proposal("k0", 1), Proposal("k1", 1)]
    assert GreedyPolicy(lad)(st0) == Proposal("k0", 3)
    assert lad.advance(st0, Proposal("k0", 2)) == Proposal("k0", 3) and lad.advance(st0, Proposal("k0", 3)) is None
    # the bare ladder (a plain function of the same candidates): Stop
    assert GreedyPolicy(lambda s: lad(s))(st0) == Stop("no candidate lowers cost")
    res = budgeted_kmr((0, 0), tri, GreedyPolicy(lad), 0, 10)
    assert [(r.knob, r.value) for r in res.trace] == [("k0", 3)] and res.status.value == "policy-stop"
