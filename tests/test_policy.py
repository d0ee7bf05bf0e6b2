"""Properties of the scheduled and greedy policies (``KMR.policy.*``).

The greedy choice is recomputed by :func:`brute_force_greedy`, written from spec/kmr.md §5:
candidates whose cost does not strictly drop are dropped; the rest are sorted by
(score descending, cost decrease descending, list position ascending), where
score = (Q(M') - Q(M)) / (C(M) - C(M')) in exact rationals on the binary64 values of Q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    QualityMeter,
    ScheduledPolicy,
    Status,
    Stop,
    budgeted_kmr,
    real_knob,
)
from tests.strategies import Box, box_cost


@dataclass
class TableRule:
    """A pure toy rule on Box models: T(M, k, v) appends ``max(table[(k, v)], -C(M))`` (a cost
    change, clamped so that the cost stays >= 0) to a copy of M. Records every call."""

    table: dict[tuple[str, KnobValue], int]
    calls: list[tuple[Box, tuple[int, ...]]] = field(default_factory=list)

    def knobs(self) -> Sequence[Knob]:
        return (Knob("a", IntRange(0, 20)), real_knob("b", 0, 1))

    def apply(self, model: Box, knob: str, value: KnobValue) -> Box:
        self.calls.append((model, model.snapshot()))
        return Box([*model.vals, max(self.table[(knob, value)], -box_cost(model))])


def quality_of(qtab: dict[int, float]) -> QualityMeter[Box]:
    """Quality of a Box = qtab[its last appended delta] (the initial Box has key 0)."""
    return QualityMeter("q", lambda b: qtab[b.vals[-1] if len(b.vals) > 1 else 0])


def brute_force_greedy(c: int, q: float | None, cands: list[tuple[int, float | None]]) -> int | None:
    """Index of the spec's greedy choice among (C(M'), Q(M')) pairs, or None for Stop."""
    rows = []
    for i, (c2, q2) in enumerate(cands):
        if c2 >= c:
            continue  # dropped: does not strictly lower cost
        dc = c - c2
        score = Fraction(0) if q is None or q2 is None else (Fraction(q2) - Fraction(q)) / dc
        rows.append((score, dc, i))
    if not rows:
        return None
    rows.sort(key=lambda r: r[2])  # earliest first ...
    rows.sort(key=lambda r: r[1], reverse=True)  # ... then larger decrease (stable sort) ...
    rows.sort(key=lambda r: r[0], reverse=True)  # ... then highest score
    return rows[0][2]


def state_for(model: Box, tri: KMRTriple[Box], t: int = 0) -> PolicyState[Box]:
    q = tri.quality(model) if tri.quality is not None else None
    return PolicyState(model, tri.cost(model), q, t, 0, tri, ())


qualities = st.one_of(st.floats(-4, 4, allow_nan=False), st.integers(-3, 3).map(float),
                      st.sampled_from([0.1, 0.2, 0.3, 0.7, 1e-17]))


@given(base=st.integers(12, 30),
       cands=st.lists(st.tuples(st.integers(0, 20), st.integers(-12, 6), qualities), min_size=0, max_size=8),
       q0=qualities, with_q=st.booleans())
def test_greedy_matches_brute_force(base: int, cands: list[tuple[int, int, float]], q0: float,
                                    with_q: bool) -> None:
    """KMR.policy.greedy, KMR.policy.greedy-ties, KMR.policy.stop, KMR.rule.no-mutation: the greedy
    proposal is the brute-force best candidate (or Stop); the current model is never mutated."""
    table: dict[tuple[str, KnobValue], int] = {}
    qtab: dict[int, float] = {0: q0}
    props: list[Proposal] = []
    for v, d, q in cands:
        if ("a", v) in table:
            d = table[("a", v)]
        table[("a", v)] = d
        qtab.setdefault(d, q)  # Box with last delta d has quality qtab[d]
        props.append(Proposal("a", v))
    rule = TableRule(table)
    tri = KMRTriple("t", rule, CostMeter("sum", box_cost), quality_of(qtab) if with_q else None)
    m = Box([base])
    pol: GreedyPolicy[Box] = GreedyPolicy(lambda s: props)
    got = pol(state_for(m, tri))
    pairs = [(base + table[("a", p.value)], qtab[table[("a", p.value)]] if with_q else None) for p in props]
    exp = brute_force_greedy(base, qtab[0] if with_q else None, pairs)
    if exp is None:
        assert isinstance(got, Stop)
    else:
        assert got is props[exp]  # identity: the earliest of equal candidates
    assert m.snapshot() == (base,)
    assert all(b is m for b, _ in rule.calls)


@given(base=st.integers(10, 40), s_num=st.integers(-4, 4), s_den=st.sampled_from([1, 2, 4, 8]),
       dcs=st.lists(st.integers(1, 9), min_size=1, max_size=7), data=st.data())
def test_greedy_exact_ties(base: int, s_num: int, s_den: int, dcs: list[int], data: st.DataObject) -> None:
    """KMR.policy.greedy-ties: with dyadic qualities every candidate has *exactly* the same score
    s, so the largest cost decrease wins, and among equal decreases the earliest in the list."""
    s = Fraction(s_num, s_den)
    q0 = 0.5
    props = [Proposal("a", i) for i in range(len(dcs))]
    table: dict[tuple[str, KnobValue], int] = {("a", i): -dc for i, dc in enumerate(dcs)}
    # Box after candidate i ends with -dc_i; Q = q0 + s*dc_i exactly (dyadic, small: exact in binary64)
    qm = QualityMeter[Box]("q", lambda b: float(Fraction(q0) + s * -b.vals[-1]) if len(b.vals) > 1 else q0)
    with_q = data.draw(st.booleans())
    tri = KMRTriple("t", TableRule(table), CostMeter("sum", box_cost), qm if with_q else None)
    got = GreedyPolicy[Box](lambda st_: props)(state_for(Box([base]), tri))
    best = max(dcs)
    assert got is props[dcs.index(best)]


def test_greedy_examples() -> None:
    """KMR.policy.greedy, KMR.policy.greedy-ties: hand-checked choices.

    Q(M)=0; candidate A: dc=1, Q'=0.1; B: dc=2, Q'=0.1 -> scores 1/10 > 1/20: A (smaller dc wins
    on score). Candidate C: dc=3, Q'=-1 -> negative score. No quality meter: largest dc (C)."""
    table: dict[tuple[str, KnobValue], int] = {("a", 0): -1, ("a", 1): -2, ("a", 2): -3, ("a", 3): 5}
    qtab = {0: 0.0, -1: 0.1, -2: 0.1, -3: -1.0, 5: 9.0}
    props = [Proposal("a", 3), Proposal("a", 0), Proposal("a", 1), Proposal("a", 2)]
    tri = KMRTriple("t", TableRule(table), CostMeter("sum", box_cost), quality_of(qtab))
    assert GreedyPolicy[Box](lambda s: props)(state_for(Box([10]), tri)) is props[1]
    tri0 = KMRTriple("t", TableRule(table), CostMeter("sum", box_cost), None)
    assert GreedyPolicy[Box](lambda s: props)(state_for(Box([10]), tri0)) is props[3]
    # only a cost-raising candidate: Stop
    assert isinstance(GreedyPolicy[Box](lambda s: props[:1])(state_for(Box([10]), tri)), Stop)
    assert isinstance(GreedyPolicy[Box](lambda s: [])(state_for(Box([10]), tri)), Stop)


def test_greedy_score_uses_exact_binary_values() -> None:
    """KMR.policy.greedy: scores are exact rationals of the binary64 qualities. Q(M)=0,
    A: dc=1, Q'=0.1; B: dc=3, Q'=0.3. As binary64, 0.1/1 > 0.3/3 (0.3 is just below 3*0.1), so A
    wins; a float division (0.3/3 == 0.09999999999999999) agrees here but the point is exactness."""
    assert Fraction(0.1) > Fraction(0.3) / 3
    table: dict[tuple[str, KnobValue], int] = {("a", 0): -3, ("a", 1): -1}
    qtab = {0: 0.0, -1: 0.1, -3: 0.3}
    props = [Proposal("a", 0), Proposal("a", 1)]
    tri = KMRTriple("t", TableRule(table), CostMeter("sum", box_cost), quality_of(qtab))
    assert GreedyPolicy[Box](lambda s: props)(state_for(Box([10]), tri)) is props[1]


@given(sched=st.lists(st.integers(0, 20), max_size=8), t=st.integers(0, 12))
def test_scheduled_policy(sched: list[int], t: int) -> None:
    """KMR.policy.scheduled, KMR.policy.stop: at iteration t propose p_t, Stop when t >= L."""
    props = tuple(Proposal("a", v) for v in sched)
    tri = KMRTriple("t", TableRule({}), CostMeter("sum", box_cost))
    st_ = PolicyState(Box([1]), 1, None, t, 0, tri, ())
    got = ScheduledPolicy[Box](props)(st_)
    if t < len(sched):
        assert got is props[t]
    else:
        assert isinstance(got, Stop)


@given(base=st.integers(0, 40), sched=st.lists(st.tuples(st.integers(0, 20), st.integers(-5, 2)), max_size=8),
       budget=st.integers(0, 40), n=st.integers(0, 10))
def test_scheduled_in_alg1(base: int, sched: list[tuple[int, int]], budget: int, n: int) -> None:
    """KMR.policy.scheduled, KMR.alg1.policy-stop, KMR.alg1.step-limit: under Algorithm 1 the
    trace proposes exactly the schedule prefix, and an exhausted schedule is policy-stop."""
    table: dict[tuple[str, KnobValue], int] = {}
    for v, d in sched:
        table.setdefault(("a", v), d)
    props = tuple(Proposal("a", v) for v, _ in sched)
    tri = KMRTriple("t", TableRule(table), CostMeter("sum", box_cost))
    res = budgeted_kmr(Box([base]), tri, ScheduledPolicy[Box](props), budget, n)
    assert [(r.knob, r.value) for r in res.trace] == [(p.knob, p.value) for p in props[: len(res.trace)]]
    c, exp = base, "feasible"
    for t in range(len(props) + 1):
        if c <= budget:
            exp = "feasible"
            break
        if t == n:
            exp = "step-limit"
            break
        if t == len(props):
            exp = "policy-stop"
            break
        c2 = max(0, c + table[("a", props[t].value)])
        if c2 >= c:
            exp = "stalled"
            break
        c = c2
    assert res.status.value == exp


@given(base=st.integers(0, 40), cands=st.lists(st.tuples(st.integers(0, 20), st.integers(-5, 3)), max_size=6),
       budget=st.integers(0, 40), n=st.integers(0, 10))
def test_greedy_never_stalls(base: int, cands: list[tuple[int, int]], budget: int, n: int) -> None:
    """KMR.policy.greedy, KMR.alg1.strict-progress: with a deterministic rule, the greedy policy
    only proposes strictly improving steps, so Algorithm 1 never ends stalled, and each step
    takes the largest available decrease (no quality meter)."""
    table: dict[tuple[str, KnobValue], int] = {}
    for v, d in cands:
        table.setdefault(("a", v), d)
    props = [Proposal("a", v) for v, _ in cands]
    tri = KMRTriple("t", TableRule(table), CostMeter("sum", box_cost))
    res = budgeted_kmr(Box([base]), tri, GreedyPolicy[Box](lambda s: props), budget, n)
    assert res.status is not Status.STALLED
    best = min((table[("a", p.value)] for p in props), default=0)
    for r in res.trace:
        assert r.cost_after == max(0, r.cost_before + best) < r.cost_before
    if res.status is Status.POLICY_STOP:
        assert best >= 0 or res.cost_final == 0


def test_greedy_evaluates_normalized_values() -> None:
    """KMR.policy.greedy, KMR.alg1.knob-domain, KMR.exact.binary64: the greedy policy must judge
    a candidate by the same M' that Algorithm 1 will build, i.e. T(M, k, normalize(v)); a rule
    that sees the float 0.5 where Algorithm 1 passes Fraction(1, 2) may build a different model."""
    seen: list[object] = []

    @dataclass
    class R:
        def knobs(self) -> Sequence[Knob]:
            return (real_knob("b", 0, 1),)

        def apply(self, model: Box, knob: str, value: KnobValue) -> Box:
            seen.append(value)
            return Box([*model.vals, -1])

    tri = KMRTriple("t", R(), CostMeter("sum", box_cost))
    GreedyPolicy[Box](lambda s: [Proposal("b", 0.5)])(state_for(Box([3]), tri))  # type: ignore[arg-type]
    assert seen == [Fraction(1, 2)] and type(seen[0]) is Fraction
