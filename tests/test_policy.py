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

import pytest
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


# --- KMR.rule.reuse: Algorithm 1 takes the policy's T(M, k, v) -----------------------------------


def _jsonl(res: object) -> bytes:
    import json

    return b"".join(json.dumps(r.to_json(), sort_keys=True).encode() + b"\n"
                    for r in res.trace)  # type: ignore[attr-defined]


@given(base=st.integers(0, 60), cands=st.lists(st.tuples(st.integers(0, 20), st.integers(-6, 3), qualities),
                                               max_size=7, unique_by=lambda c: c[0]),
       budget=st.integers(0, 40), n=st.integers(0, 8), with_q=st.booleans())
def test_reuse_trace_identical(base: int, cands: list[tuple[int, int, float]], budget: int, n: int,
                               with_q: bool) -> None:
    """KMR.rule.reuse, KMR.rule.deterministic: greedy under Algorithm 1 writes byte-identical trace
    records (JSONL) with and without the reusing wrapper, ends in the same status and cost, and
    with it the inner rule runs exactly once per candidate evaluation (never again for the winner),
    holding at most two outputs at any call and at most one after each policy call."""
    from kmr_ref.core.rules import ReusingRule, reusing

    table: dict[tuple[str, KnobValue], int] = {}
    qtab: dict[int, float] = {0: 0.25}
    for v, d, q in cands:
        table.setdefault(("a", v), d)
        qtab.setdefault(table[("a", v)], q)
    props = [Proposal("a", v) for v, _, _ in cands]
    plain = TableRule(table)
    inner = TableRule(table)
    wrapped = reusing(inner)
    assert reusing(wrapped) is wrapped and isinstance(wrapped, ReusingRule)
    held: list[int] = []

    class Watch:
        def knobs(self) -> Sequence[Knob]:
            return inner.knobs()

        def apply(self, model: Box, knob: str, value: KnobValue) -> Box:
            held.append(wrapped.held)
            return inner.apply(model, knob, value)

    wrapped.rule = Watch()
    qm = QualityMeter[Box]("q", lambda b: qtab.get(b.vals[-1], -1.0) if len(b.vals) > 1 else qtab[0])
    qm = qm if with_q else None
    pol_calls: list[int] = []

    def cands_of(s: PolicyState[Box]) -> list[Proposal]:
        pol_calls.append(wrapped.held)  # at the start of each policy call
        return props

    r1 = budgeted_kmr(Box([base]), KMRTriple("t", plain, CostMeter("sum", box_cost), qm),
                      GreedyPolicy[Box](lambda s: props), budget, n)
    r2 = budgeted_kmr(Box([base]), KMRTriple("t", wrapped, CostMeter("sum", box_cost), qm),
                      GreedyPolicy[Box](cands_of), budget, n)
    assert _jsonl(r1) == _jsonl(r2)
    assert (r1.status, r1.cost_final, r1.quality_final) == (r2.status, r2.cost_final, r2.quality_final)
    assert r2.model.snapshot() == r1.model.snapshot()
    proposals = len(pol_calls)
    assert len(plain.calls) == proposals * len(props) + len(r1.trace)  # greedy, then line 7 again
    assert len(inner.calls) == proposals * len(props)  # line 7 reused the policy's output
    assert wrapped.reused == len(r2.trace) and wrapped.applied == len(inner.calls)
    assert all(h <= 2 for h in held) and all(h <= 1 for h in pol_calls)


@given(base=st.integers(0, 40), sched=st.lists(st.tuples(st.integers(0, 20), st.integers(-5, 2)), max_size=8),
       budget=st.integers(0, 40), n=st.integers(0, 10))
def test_reuse_without_policy_applications(base: int, sched: list[tuple[int, int]], budget: int, n: int) -> None:
    """KMR.rule.reuse: a policy that applies nothing (scheduled) gets, through the wrapper, every
    step applied once by Algorithm 1, and the same trace as without the wrapper."""
    from kmr_ref.core.rules import reusing

    table: dict[tuple[str, KnobValue], int] = {}
    for v, d in sched:
        table.setdefault(("a", v), d)
    props = tuple(Proposal("a", v) for v, _ in sched)
    r1 = budgeted_kmr(Box([base]), KMRTriple("t", TableRule(table), CostMeter("sum", box_cost)),
                      ScheduledPolicy[Box](props), budget, n)
    inner = TableRule(table)
    w = reusing(inner)
    r2 = budgeted_kmr(Box([base]), KMRTriple("t", w, CostMeter("sum", box_cost)), ScheduledPolicy[Box](props),
                      budget, n)
    assert _jsonl(r1) == _jsonl(r2) and r1.status == r2.status
    assert len(inner.calls) == len(r2.trace) and w.reused == 0


def test_reuse_keys_and_bounds() -> None:
    """KMR.rule.reuse: the same input object and (k, v) give the same output object; another
    value type (0 vs Fraction(0)), another input object or a failing call are not reused; a new
    input drops what was kept; retain keeps one output, clear none."""
    from kmr_ref.core.rules import reusing

    rule = TableRule({("a", 1): -1, ("a", 2): -2, ("b", Fraction(1, 2)): -3, ("b", 0): -4})
    w = reusing(rule)
    m = Box([10])
    o1 = w.apply(m, "a", 1)
    assert w.apply(m, "a", 1) is o1 and len(rule.calls) == 1 and w.held == 1
    o2 = w.apply(m, "a", 2)
    assert o2 is not o1 and w.held == 2
    assert w.apply(m, "b", 0) is not w.apply(m, "b", Fraction(0)) and len(rule.calls) == 4
    with pytest.raises(KeyError):
        w.apply(m, "a", 7)  # no table entry: the inner rule fails, nothing is kept
    assert w.held == 4
    w.retain(m, "a", 2)
    assert w.held == 1 and w.apply(m, "a", 2) is o2
    other = Box([10])
    assert w.apply(other, "a", 2) is not o2 and w.held == 1  # another object, equal bytes: applied
    w.retain(m, "a", 2)  # not the latest input: nothing is kept
    assert w.held == 0
    w.apply(m, "a", 1)
    w.clear()
    assert w.held == 0 and w.knobs() == rule.knobs()


# --- KMR.rule.analysis-scope ---------------------------------------------------------------------


def test_analysis_scope() -> None:
    """KMR.rule.analysis-scope: no scope outside a block; nested blocks share the outermost; a
    kept value is found for the same object only (not an equal one) and dropped at the end; the
    greedy policy evaluates its candidates inside one scope."""
    from kmr_ref.core.rules import analysis_scope, current_scope

    assert current_scope() is None
    a, b = Box([1]), Box([1])
    with analysis_scope() as s:
        assert current_scope() is s
        with analysis_scope() as inner:
            assert inner is s
        s.put("k", a, 7)
        assert s.get("k", a) == 7 and s.get("k", b) is None and s.get("other", a) is None and len(s) == 1
    assert current_scope() is None
    with analysis_scope() as s2:
        assert s2 is not s and s2.get("k", a) is None
    seen: list[object] = []

    class R:
        def knobs(self) -> Sequence[Knob]:
            return (Knob("a", IntRange(0, 5)),)

        def apply(self, model: Box, knob: str, value: KnobValue) -> Box:
            seen.append(current_scope())
            return Box([*model.vals, -1])

    tri = KMRTriple("t", R(), CostMeter("sum", box_cost))
    GreedyPolicy[Box](lambda s: [Proposal("a", 1), Proposal("a", 2)])(state_for(Box([3]), tri))
    assert len(seen) == 2 and seen[0] is not None and seen[0] is seen[1]
    assert current_scope() is None


def test_derivation_record() -> None:
    """KMR.meter.delta: a record gives (parent, changed) while both live; it vanishes with the
    child, reads None once the parent is gone, and is skipped for models that cannot be weakly
    referenced."""
    import gc

    from kmr_ref.core.meters import derivation, record_derivation

    class M:
        pass

    parent, child = M(), M()
    record_derivation(child, parent, ["w", "v", "w"])
    assert derivation(child) == (parent, frozenset({"w", "v"}))
    assert derivation(parent) is None
    del parent
    gc.collect()
    assert derivation(child) is None
    p2, c2 = M(), M()
    record_derivation(c2, p2, ["x"])
    import kmr_ref.core.meters as meters_mod

    n = len(meters_mod._DERIVED)
    del c2
    gc.collect()
    assert len(meters_mod._DERIVED) == n - 1
    record_derivation((1, 2), p2, ["x"])  # a tuple: no weak reference, no record
    assert derivation((1, 2)) is None
