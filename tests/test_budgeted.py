"""Hypothesis properties of Algorithm 1 (``kmr_ref.core.budgeted.budgeted_kmr``) on toy models.

The expected outcome of every run is recomputed by :func:`oracle`, a transcription of the
algorithm box of spec/kmr.md §7 over the *scripted* events (the costs the rule will produce and
the actions the policy will return); Proposition 1 is also checked clause by clause on the result
itself, without the oracle.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmr_ref.core import (
    BudgetError,
    KMRResult,
    KnobDomainError,
    MeterError,
    PolicyError,
    Proposal,
    RuleInputError,
    Status,
    StepRecord,
    Stop,
    budgeted_kmr,
)
from tests.strategies import (
    Box,
    Interrupt,
    PolicyAction,
    ScriptedPolicy,
    ScriptedRule,
    assert_clause_error,
    box_cost,
    budgets_any,
    deltas,
    exact_budgets,
    exact_of_budget,
    expected_normal,
    in_domain_proposals,
    initial_vals,
    toy_quality,
    toy_triple,
)

STATUSES = {"feasible", "stalled", "step-limit", "policy-stop", "interrupted"}


def oracle(c0: int, B: int | Fraction, N: int, actions: list[PolicyAction],
           ds: list[int]) -> tuple[str, list[tuple[int, int | Fraction, int | Fraction, bool]]]:
    """Algorithm 1 of spec/kmr.md §7 over scripted events. Returns the status and the trace as
    (t, cost_before, cost_after, accepted). Policy and rule are each called once per iteration."""
    c: int | Fraction = c0
    t = 0
    trace: list[tuple[int, int | Fraction, int | Fraction, bool]] = []
    while c > B:  # line 2
        if t == N:  # line 3
            return "step-limit", trace
        a = actions[t] if t < len(actions) else Stop()  # line 4
        if isinstance(a, Stop):  # line 5
            return "policy-stop", trace
        c2 = max(0, c + (ds[t] if t < len(ds) else 0))  # lines 7-8
        if c2 < c:  # line 9
            trace.append((t, c, c2, True))
            c = c2
        else:  # line 11
            trace.append((t, c, c2, False))
            return "stalled", trace
        t += 1
    return "feasible", trace


def check_prop1(res: KMRResult[Box], m0: Box, N: int, B: int | Fraction, rule: ScriptedRule,
                streamed: list[StepRecord]) -> None:
    """KMR.prop1.monotone, KMR.prop1.termination, KMR.prop1.status-truthful,
    KMR.prop1.integer-bound, KMR.prop1.last-accepted, KMR.trace.record, KMR.alg1.return,
    KMR.alg1.status, KMR.rule.no-mutation, checked on the result alone."""
    tr = list(res.trace)
    acc = [r for r in tr if r.accepted]
    rej = [r for r in tr if not r.accepted]
    c0 = box_cost(m0)
    assert res.status.value in STATUSES  # KMR.alg1.status
    assert res.cost_initial == c0
    # KMR.trace.record: accepted records in order, then at most one rejected record, which is last
    assert tr[: len(acc)] == acc
    assert len(rej) <= 1
    assert [r.t for r in tr] == list(range(len(tr)))
    prev: int | Fraction = c0
    for r in tr:
        assert r.cost_before == prev
        assert r.reason == ("accepted" if r.accepted else "not-strictly-lower")
        if r.accepted:
            prev = r.cost_after
    assert streamed == tr  # on_record streams exactly the final trace, in order
    # KMR.prop1.monotone
    costs = [c0] + [r.cost_after for r in acc]
    assert all(b < a for a, b in itertools.pairwise(costs))
    assert res.cost_final <= c0
    # KMR.prop1.termination
    assert len(acc) <= N and len(tr) <= N
    # KMR.prop1.last-accepted and KMR.alg1.return: identity of the returned model
    assert res.cost_final == costs[-1]
    if acc:
        assert res.model is rule.outputs[len(acc) - 1]
    else:
        assert res.model is m0
    assert box_cost(res.model) == res.cost_final
    # KMR.prop1.integer-bound
    assert len(acc) <= c0 - res.cost_final
    # KMR.prop1.status-truthful
    if res.status is Status.FEASIBLE:
        assert res.cost_final <= B
    else:
        assert res.cost_final > B
    if res.status is Status.STALLED:
        assert rej and tr[-1] is rej[0]
        assert rej[0].cost_after >= rej[0].cost_before == res.cost_final > B
    elif res.status is Status.STEP_LIMIT:
        assert len(acc) == N and not rej
    elif res.status is Status.POLICY_STOP:
        assert not rej
    # KMR.rule.no-mutation: every model a rule saw is unchanged
    for model, _, _, snap in rule.calls:
        assert model.snapshot() == snap


@given(vals=initial_vals, budget=exact_budgets, n=st.integers(0, 8),
       ds=st.lists(deltas, max_size=10),
       actions=st.lists(st.one_of(in_domain_proposals(), st.just(Stop("s"))), max_size=10),
       with_q=st.booleans())
def test_alg1_matches_box_and_prop1(vals: list[int], budget: int | Fraction, n: int, ds: list[int],
                                    actions: list[PolicyAction], with_q: bool) -> None:
    """KMR.alg1.init, KMR.alg1.loop-guard, KMR.alg1.step-limit, KMR.alg1.propose,
    KMR.alg1.policy-stop, KMR.alg1.knob-domain, KMR.alg1.apply, KMR.alg1.measure,
    KMR.alg1.strict-progress, KMR.alg1.accept, KMR.alg1.early-break, KMR.alg1.step,
    KMR.alg1.feasible, KMR.alg1.return, KMR.trace.record, KMR.policy.state, KMR.meter.quality,
    KMR.prop1.monotone, KMR.prop1.termination, KMR.prop1.status-truthful,
    KMR.prop1.integer-bound, KMR.prop1.last-accepted, KMR.budget.def.

    Adversarial rule (cost-lowering, -repeating and -raising steps) and policy (stops anywhere)."""
    m0 = Box(vals)
    snap0 = m0.snapshot()
    rule, pol = ScriptedRule(ds), ScriptedPolicy(actions)
    streamed: list[StepRecord] = []
    res = budgeted_kmr(m0, toy_triple(rule, quality=toy_quality if with_q else None), pol, budget, n,
                       on_record=streamed.append)
    assert m0.snapshot() == snap0  # KMR.rule.no-mutation: the caller's model is untouched
    exp_status, exp_trace = oracle(sum(vals), budget, n, actions, ds)
    assert res.status.value == exp_status
    assert [(r.t, r.cost_before, r.cost_after, r.accepted) for r in res.trace] == exp_trace
    assert res.budget == budget
    check_prop1(res, m0, n, budget, rule, streamed)
    # records carry the normalized proposal and the proposal's quality (KMR.meter.quality)
    for r, out in zip(res.trace, rule.outputs, strict=True):
        a = actions[r.t]
        assert isinstance(a, Proposal)
        assert r.knob == a.knob
        norm = expected_normal(a.knob, a.value)
        assert r.value == norm and type(r.value) is type(norm)
        assert r.quality == (toy_quality(out) if with_q else None)
    if with_q:
        assert res.quality_initial == toy_quality(m0)
        assert res.quality_final == toy_quality(res.model)
    # KMR.alg1.apply: the rule is applied to the current (last accepted) model with the normalized value
    for i, (model, knob, value, _) in enumerate(rule.calls):
        assert model is (m0 if i == 0 else rule.outputs[i - 1])
        assert (knob, value) == (res.trace[i].knob, res.trace[i].value)
    # KMR.policy.state / KMR.alg1.propose: what the policy saw
    cur: Box = m0
    for i, s in enumerate(pol.seen):
        assert s.t == i and s.model is cur and s.cost == box_cost(cur) and s.budget == budget
        assert s.history == res.trace[:i]
        assert s.quality == (toy_quality(cur) if with_q else None)
        assert s.triple.rule is rule
        if i < len(res.trace) and res.trace[i].accepted:
            cur = rule.outputs[i]


@given(vals=initial_vals, budget=exact_budgets, n=st.integers(0, 6), ds=st.lists(deltas, max_size=8),
       actions=st.lists(in_domain_proposals(), max_size=8))
def test_quality_never_decides(vals: list[int], budget: int | Fraction, n: int, ds: list[int],
                               actions: list[PolicyAction]) -> None:
    """KMR.meter.quality: Algorithm 1 never uses Q to accept or reject: the same scripted run with
    no quality meter, with Q and with -Q gives the same status, costs and accept decisions."""
    outs = []
    for q in (None, toy_quality, lambda b: -toy_quality(b)):
        rule = ScriptedRule(ds)
        res = budgeted_kmr(Box(vals), toy_triple(rule, quality=q), ScriptedPolicy(actions), budget, n)
        outs.append((res.status, [(r.cost_before, r.cost_after, r.accepted) for r in res.trace]))
    assert outs[0] == outs[1] == outs[2]


@given(vals=initial_vals, budget=budgets_any, n=st.integers(0, 5), ds=st.lists(deltas, max_size=6))
def test_budget_spellings(vals: list[int], budget: object, n: int, ds: list[int]) -> None:
    """KMR.alg1.validate, KMR.exact.binary64: a float budget denotes its shortest decimal
    (0.7 is 7/10), a "p/q" string its rational; the run equals the run with the exact budget."""
    B = exact_of_budget(budget)
    acts: list[PolicyAction] = [Proposal("i", 1)] * 6
    r1 = budgeted_kmr(Box(vals), toy_triple(ScriptedRule(ds)), ScriptedPolicy(acts), budget, n)
    r2 = budgeted_kmr(Box(vals), toy_triple(ScriptedRule(ds)), ScriptedPolicy(acts), B, n)
    assert r1.budget == B and type(r1.budget) is type(B)
    assert (r1.status, r1.trace, r1.cost_final) == (r2.status, r2.trace, r2.cost_final)


def test_budget_binary64_examples() -> None:
    """KMR.exact.binary64, KMR.alg1.validate: 0.7 is 7/10, not the binary value; cost 7/10 with
    budget 0.7 is feasible (with the binary value 0.69999... it would not be)."""
    tri = toy_triple(ScriptedRule([]), cost=lambda b: Fraction(7, 10))
    res = budgeted_kmr(Box([0]), tri, ScriptedPolicy([]), 0.7, 3)
    assert res.budget == Fraction(7, 10) != Fraction(0.7)
    assert res.status is Status.FEASIBLE and res.trace == ()
    assert budgeted_kmr(Box([0]), tri, ScriptedPolicy([]), 2.0, 0).budget == 2
    assert type(budgeted_kmr(Box([0]), tri, ScriptedPolicy([]), 2.0, 0).budget) is int


@pytest.mark.parametrize("budget", [math.nan, math.inf, -math.inf, True, False, None, "abc", "1/0",
                                    [1], complex(1, 0)])
def test_budget_refused(budget: object) -> None:
    """KMR.alg1.validate, KMR.exact.binary64, KMR.error.names-clause: NaN/inf/bool/non-numbers are
    refused with BudgetError before any meter or rule runs."""
    calls: list[Box] = []
    rule = ScriptedRule([-1])

    def cost(b: Box) -> int:
        calls.append(b)
        return 5

    tri = toy_triple(rule, cost=cost)
    with pytest.raises(BudgetError) as ei:
        budgeted_kmr(Box([5]), tri, ScriptedPolicy([Proposal("i", 1)]), budget, 3)
    assert_clause_error(ei.value, BudgetError, "KMR.alg1.validate")
    assert calls == [] and rule.calls == []


@pytest.mark.parametrize("n", [-1, -100, 1.0, 2.5, True, False, "3", None, Fraction(2, 1)])
def test_step_limit_refused(n: object) -> None:
    """KMR.alg1.validate: N must be a non-negative int (not bool, float or Fraction)."""
    rule = ScriptedRule([-1])
    with pytest.raises(BudgetError) as ei:
        budgeted_kmr(Box([5]), toy_triple(rule), ScriptedPolicy([Proposal("i", 1)]), 0, n)  # type: ignore[arg-type]
    assert_clause_error(ei.value, BudgetError, "KMR.alg1.validate")
    assert rule.calls == []


@given(vals=st.lists(st.integers(1, 12), min_size=1, max_size=4), j=st.integers(0, 5),
       where=st.sampled_from(["rule", "policy", "cost", "quality", "on_record"]),
       with_q=st.booleans(), budget=st.integers(0, 10))
def test_interrupt(vals: list[int], j: int, where: str, with_q: bool, budget: int) -> None:
    """KMR.alg1.interrupt, KMR.alg1.feasible, KMR.alg1.return: a KeyboardInterrupt after j accepted
    steps (from the rule, the policy, the cost or quality meter on a proposal, or the on_record
    callback) ends the run with status interrupted (feasible if the last accepted model is) and
    returns the last accepted model and the trace so far; nothing accepted is lost."""
    c0 = sum(vals)
    ds: list[int | Interrupt | BaseException] = [-1] * 20
    actions: list[PolicyAction] = [Proposal("i", 3)] * 20
    if where == "rule":
        ds[j] = Interrupt()
    if where == "policy":
        actions[j] = Interrupt()
    rule = ScriptedRule(ds)
    n_meter = {"n": 0}

    def cost(b: Box) -> int:
        n_meter["n"] += 1
        # call 1 is the initial model (line 1); a feasible run measures its result once more
        # (KMR.meter.deterministic), which is not an iteration
        if where == "cost" and n_meter["n"] == j + 2 and j < c0 - budget:
            raise KeyboardInterrupt
        return box_cost(b)

    n_q = {"n": 0}

    def qual(b: Box) -> float:
        n_q["n"] += 1
        if where == "quality" and n_q["n"] == j + 2:
            raise KeyboardInterrupt
        return toy_quality(b)

    streamed: list[StepRecord] = []

    def on_record(r: StepRecord) -> None:
        streamed.append(r)
        if where == "on_record" and len(streamed) == j + 1:
            raise KeyboardInterrupt

    m0 = Box(vals)
    res = budgeted_kmr(m0, toy_triple(rule, cost=cost, quality=qual if (with_q or where == "quality") else None),
                       ScriptedPolicy(actions), budget, 50, on_record=on_record)
    assert m0.snapshot() == tuple(vals)
    s = max(0, c0 - budget)  # every step lowers cost by 1: s steps reach the budget
    if j >= s:  # the run is feasible before iteration j: nothing interrupts it
        assert res.status is Status.FEASIBLE and res.accepted_steps == s
    else:  # iteration j is interrupted; with on_record its step was accepted first
        acc = j + 1 if where == "on_record" else j
        assert res.accepted_steps == acc and res.cost_final == c0 - acc
        assert res.status is (Status.FEASIBLE if c0 - acc <= budget else Status.INTERRUPTED)
    assert all(r.accepted for r in res.trace)
    assert res.model is (rule.outputs[res.accepted_steps - 1] if res.accepted_steps else m0)
    assert streamed == list(res.trace)


def test_interrupt_on_feasible_step_reports_feasible() -> None:
    """KMR.alg1.interrupt, KMR.alg1.feasible: an interrupt raised by on_record for the step that
    reached the budget still reports feasible (the last accepted model is feasible)."""
    def boom(r: StepRecord) -> None:
        raise KeyboardInterrupt

    res = budgeted_kmr(Box([3]), toy_triple(ScriptedRule([-2])), ScriptedPolicy([Proposal("i", 0)]), 1, 5,
                       on_record=boom)
    assert res.status is Status.FEASIBLE and res.cost_final == 1 and res.accepted_steps == 1


@given(vals=st.lists(st.integers(5, 12), min_size=1, max_size=4), j=st.integers(0, 4),
       bad=st.sampled_from([RuntimeError("x"), RuleInputError("KMR.rule.domain-error", "nan"),
                            ValueError("v")]))
def test_rule_errors_propagate(vals: list[int], j: int, bad: BaseException) -> None:
    """KMR.rule.domain-error, KMR.rule.no-mutation: an error raised by the rule at step j
    propagates unchanged (it is not swallowed as a stall) and the caller's model is untouched."""
    ds: list[int | Interrupt | BaseException] = [*([-1] * j), bad]
    m0 = Box(vals)
    with pytest.raises(type(bad)) as ei:
        budgeted_kmr(m0, toy_triple(ScriptedRule(ds)), ScriptedPolicy([Proposal("i", 1)] * 10), -1, 10)
    assert ei.value is bad
    assert m0.snapshot() == tuple(vals)


_BAD: list[tuple[str, Any]] = [
    ("nope", 1), ("i", 10), ("i", -1), ("i", 2.5), ("i", True), ("f", 2), ("f", "b"), ("f", False),
    ("r", Fraction(5, 4)), ("r", -0.1), ("r", math.nan), ("r", math.inf), ("r", "x"), ("r", True), ("r", [0])]
BAD_PROPOSALS = [Proposal(k, v) for k, v in _BAD]


@given(vals=st.lists(st.integers(4, 12), min_size=1, max_size=4), j=st.integers(0, 3),
       bad=st.sampled_from(BAD_PROPOSALS))
def test_out_of_domain_and_unknown_knob(vals: list[int], j: int, bad: Proposal) -> None:
    """KMR.alg1.knob-domain, KMR.knob.domain, KMR.knob.unknown, KMR.error.names-clause: a proposal
    with an unknown knob or an inadmissible value raises KnobDomainError before the rule runs;
    the caller's model is untouched."""
    rule = ScriptedRule([-1] * 10)
    m0 = Box(vals)
    with pytest.raises(KnobDomainError) as ei:
        budgeted_kmr(m0, toy_triple(rule), ScriptedPolicy([Proposal("i", 1)] * j + [bad]), -1, 10)
    kinds = {"i": "int", "f": "finite", "r": "real"}
    clause = "KMR.knob.unknown" if bad.knob == "nope" else f"KMR.knob.domain-{kinds[bad.knob]}"
    assert_clause_error(ei.value, KnobDomainError, clause)
    assert len(rule.calls) == j  # the rule never saw the bad value
    assert m0.snapshot() == tuple(vals)


@pytest.mark.parametrize("garbage", [None, ("i", 1), "i", {"knob": "i", "value": 1}, 0, Stop, Proposal,
                                     [Proposal("i", 1)]])
def test_policy_garbage(garbage: object) -> None:
    """KMR.policy.proposal, KMR.policy.stop, KMR.error.names-clause: anything that is neither a
    Proposal nor a Stop raises PolicyError; the rule never runs."""
    rule = ScriptedRule([-1])
    m0 = Box([4])
    with pytest.raises(PolicyError) as ei:
        budgeted_kmr(m0, toy_triple(rule), ScriptedPolicy([garbage]), 0, 3)
    assert_clause_error(ei.value, PolicyError, "KMR.policy.proposal")
    assert rule.calls == [] and m0.snapshot() == (4,)


@pytest.mark.parametrize("bad", [1.0, 0.5, True, False, -1, Fraction(-1, 2), "3", None, math.nan])
@pytest.mark.parametrize("at", ["initial", "proposal"])
def test_cost_meter_not_exact(bad: object, at: str) -> None:
    """KMR.meter.cost-exact, KMR.error.names-clause: a float, bool, negative or non-number cost
    raises MeterError (at the initial model or at a proposal); the caller's model is untouched."""
    m0 = Box([4])

    def cost(b: Box) -> object:
        return bad if (at == "initial" or b is not m0) else 4

    with pytest.raises(MeterError) as ei:
        budgeted_kmr(m0, toy_triple(ScriptedRule([-1]), cost=cost), ScriptedPolicy([Proposal("i", 1)]), 0, 3)
    assert_clause_error(ei.value, MeterError, "KMR.meter.cost-exact")
    assert m0.snapshot() == (4,)


@pytest.mark.parametrize("bad", [True, "0.5", None, [1.0]])
def test_quality_meter_not_real(bad: object) -> None:
    """KMR.meter.quality, KMR.error.names-clause: a quality meter returning a non-real raises MeterError."""
    with pytest.raises(MeterError) as ei:
        budgeted_kmr(Box([4]), toy_triple(ScriptedRule([-1]), quality=lambda b: bad),
                     ScriptedPolicy([Proposal("i", 1)]), 0, 3)
    assert_clause_error(ei.value, MeterError, "KMR.meter.quality")


@given(c0=st.fractions(min_value=0, max_value=20, max_denominator=9),
       steps=st.lists(st.fractions(min_value=0, max_value=20, max_denominator=9), max_size=6),
       budget=st.fractions(min_value=0, max_value=20, max_denominator=9), n=st.integers(0, 7))
def test_rational_costs(c0: Fraction, steps: list[Fraction], budget: Fraction, n: int) -> None:
    """KMR.meter.cost-exact, KMR.budget.def, KMR.alg1.strict-progress, KMR.prop1.monotone,
    KMR.prop1.status-truthful: rational costs compared exactly (a cost table indexed by Box length)."""
    table = [c0, *steps]

    def cost(b: Box) -> Fraction:
        return table[min(len(b.vals) - 1, len(table) - 1)]

    res = budgeted_kmr(Box([0]), toy_triple(ScriptedRule([0] * 10), cost=cost),
                       ScriptedPolicy([Proposal("r", "1/2")] * 10), budget, n)
    # independent walk of the box over the table
    c, t, exp = c0, 0, "feasible"
    while c > budget:
        if t == n:
            exp = "step-limit"
            break
        c2 = table[min(t + 1, len(table) - 1)]
        if not c2 < c:
            exp = "stalled"
            break
        c, t = c2, t + 1
    assert res.status.value == exp and res.cost_final == c
    assert all(r.value == Fraction(1, 2) for r in res.trace)
