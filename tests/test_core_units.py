"""Unit checks of kmr_ref/core that kill mutants the behavioural suites let through
(``make mutation``; proofs/mutation_report.json). Each names the clause it pins down."""

from __future__ import annotations

import linecache
import numbers
import sys
import types
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TypeVar

import numpy as np
import pytest

from kmr_ref.core import (
    BudgetError,
    CostMeter,
    FiniteDomain,
    GreedyPolicy,
    InformativeMeter,
    IntRange,
    KMRError,
    KMRResult,
    KMRTriple,
    Knob,
    KnobDomainError,
    KnobValue,
    MeterError,
    Phase,
    PolicyError,
    PolicyState,
    Proposal,
    QualityMeter,
    RealInterval,
    ScheduledPolicy,
    Status,
    StepRecord,
    Stop,
    budgeted_kmr,
    composed_kmr,
    real_knob,
    to_exact,
)
from kmr_ref.core.checked import checked
from kmr_ref.core.errors import ContractError
from kmr_ref.core.exact import fmt_exact
from kmr_ref.core.knobs import find_knob
from kmr_ref.core.meters import as_cost_meter, as_quality_meter
from kmr_ref.core.trace import json_value

T = TypeVar("T")


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


# ---------------------------------------------------------------------------------------------
# Mutants of knobs.py, exact.py, meters.py, trace.py, errors.py and checked.py (make mutation):
# exact messages and clause IDs, interval ends, names carried through wrappers.


def _err(fn: object, *args: object, **kw: object) -> KMRError:
    with pytest.raises(KMRError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value


def test_knob_domain_errors_exact() -> None:
    """KMR.knob.domain-finite KMR.knob.domain-int KMR.knob.domain-real KMR.knob.unknown
    KMR.error.names-clause: every refusal of a domain names its clause and says what was wrong."""
    assert str(_err(FiniteDomain, ())) == "[KMR.knob.domain-finite] a finite domain needs >= 1 distinct values"
    assert str(_err(FiniteDomain, (1, 1))) == "[KMR.knob.domain-finite] a finite domain needs >= 1 distinct values"
    assert str(_err(FiniteDomain((1, "a")).normalize, 2)) == "[KMR.knob.domain-finite] 2 is not one of [1, 'a']"
    e = _err(IntRange, 3, 2)
    assert isinstance(e, KnobDomainError) and str(e) == "[KMR.knob.domain-int] empty range 3..2"
    assert e.clause == "KMR.knob.domain-int" and e.message == "empty range 3..2"
    e = _err(RealInterval, Fraction(2), Fraction(1))
    assert str(e) == "[KMR.knob.domain-real] empty interval 2, 1" and e.message == "empty interval 2, 1"
    assert str(_err(find_knob, [Knob("a", IntRange(0, 1))], "b")) == \
        "[KMR.knob.unknown] no knob named 'b'; known: ['a']"


def test_real_interval_ends() -> None:
    """KMR.knob.domain-real: a closed end belongs to the interval, an open one does not; a single
    point is a (closed) interval, an open end on it makes it empty; the error shows the brackets."""
    one = Fraction(1)
    assert RealInterval(one, one).contains(1)
    for lo_open, hi_open in ((True, False), (False, True), (True, True)):
        assert str(_err(RealInterval, one, one, None, lo_open, hi_open)) == "[KMR.knob.domain-real] empty interval 1, 1"
    r = RealInterval(Fraction(0), Fraction(1), lo_open=True)
    assert not r.contains(0) and r.contains(1) and r.contains(Fraction(1, 2))
    r = RealInterval(Fraction(0), Fraction(1), hi_open=True)
    assert r.contains(0) and not r.contains(1)
    r = RealInterval(Fraction(0), Fraction(1))
    assert r.contains(0) and r.contains(1) and not r.contains(2) and not r.contains(-1)
    assert str(_err(RealInterval(Fraction(0), Fraction(1), lo_open=True).normalize, 0)) == \
        "[KMR.knob.domain-real] 0 is outside (0, 1]"
    assert str(_err(RealInterval(Fraction(0), Fraction(1), hi_open=True).normalize, 2)) == \
        "[KMR.knob.domain-real] 2 is outside [0, 1)"
    assert str(_err(RealInterval(Fraction(0), Fraction(1)).normalize, "x")) == \
        "[KMR.knob.domain-real] knob value 'x' is not a rational literal"
    for step in (None, Fraction(0), Fraction(-1)):
        assert str(_err(lambda s=step: list(RealInterval(Fraction(0), Fraction(1), s).grid()))) == \
            "[KMR.knob.domain-real] this interval has no grid step"


def test_real_knob_bounds_and_direction() -> None:
    """KMR.knob.domain-real KMR.exact.binary64 KMR.knob.def: real_knob converts each bound with
    the clause of real domains and names the bound in the error; lo = hi is a one-point knob; the
    direction is kept."""
    k = real_knob("s", 0.5, 0.5)
    assert k.check("1/2") == Fraction(1, 2) and real_knob("s", 0.5, 0.5, 1).grid() == [Fraction(1, 2)]
    assert real_knob("s", 0, 1, "1/2", "decreasing").more_aggressive == "decreasing"
    assert real_knob("s", 0, 1).more_aggressive == "increasing"
    assert real_knob("s", 0, 1, "1/2").grid() == [0, Fraction(1, 2), 1]
    for args, msg in ((("x", 1), "lo 'x' is not a rational literal"), ((0, "x"), "hi 'x' is not a rational literal"),
                      ((0, 1, "x"), "step 'x' is not a rational literal")):
        e = _err(real_knob, "s", *args)
        assert isinstance(e, KnobDomainError) and str(e) == f"[KMR.knob.domain-real] {msg}"
    assert str(_err(real_knob, "s", 1, 0)) == "[KMR.knob.domain-real] empty interval [1, 0]"


def test_exact_and_trace_json() -> None:
    """KMR.exact.binary64 KMR.trace.record: exact numbers print as 7 and 7/10; a record's JSON
    keeps ints, writes Fractions as "p/q" strings, keeps None and booleans."""
    assert fmt_exact(Fraction(7, 10)) == "7/10" and fmt_exact(7) == "7"
    assert json_value(None) is None and json_value(True) is True and json_value(3) == 3
    assert json_value(Fraction(7, 10)) == "7/10" and json_value("a") == "a"
    r = StepRecord(2, "s", Fraction(1, 2), 10, Fraction(15, 2), 0.25, True, "accepted")
    assert r.to_json() == {"t": 2, "knob": "s", "value": "1/2", "cost_before": 10, "cost": "15/2",
                           "quality": 0.25, "accepted": True, "reason": "accepted"}
    r = StepRecord(0, "b", 4, 3, 3, None, False, "not-strictly-lower")
    assert r.to_json() == {"t": 0, "knob": "b", "value": 4, "cost_before": 3, "cost": 3,
                           "quality": None, "accepted": False, "reason": "not-strictly-lower"}


def test_errors_carry_clause_and_message() -> None:
    """KMR.error.names-clause: a KMRError keeps the clause and the message apart and shows both."""
    e = MeterError("KMR.meter.cost-exact", "bad")
    assert e.clause == "KMR.meter.cost-exact" and e.message == "bad" and str(e) == "[KMR.meter.cost-exact] bad"
    assert isinstance(e, TypeError) and isinstance(ContractError("c", "m"), RuntimeError)


class _Sub(int):
    pass


def test_meter_errors_exact() -> None:
    """KMR.exact.plain KMR.meter.cost-exact KMR.meter.quality: the meter errors name the meter,
    the type or value returned and what is required."""
    assert str(_err(CostMeter[int]("c", lambda m: _Sub(3)), 0)) == (
        "[KMR.exact.plain] cost meter 'c' returned an instance of _Sub, a subclass of int/Fraction (it may "
        "redefine comparison); return a plain int or Fraction")
    assert str(_err(CostMeter[int]("c", lambda m: 1.5), 0)) == (  # type: ignore[arg-type,return-value]
        "[KMR.meter.cost-exact] cost meter 'c' returned float 1.5; normative costs are exact (int or Fraction)")
    assert str(_err(CostMeter[int]("c", lambda m: -2), 0)) == "[KMR.meter.cost-exact] cost meter 'c' returned -2 < 0"
    assert str(_err(QualityMeter[int]("q", lambda m: True), 0)) == "[KMR.meter.quality] quality meter 'q' returned bool"
    assert str(_err(QualityMeter[int]("q", lambda m: float("nan")), 0)) == (
        "[KMR.meter.quality] quality meter 'q' returned nan; a finite real is required")


class _Nameless:
    def __call__(self, m: int) -> int:
        return m


def test_plain_callables_keep_their_names() -> None:
    """KMR.meter.cost-exact KMR.meter.quality KMR.triple.def: a plain callable becomes a meter named
    after the function, or "cost" / "quality" when it has no name."""
    def size(m: int) -> int:
        return m

    assert as_cost_meter(size).name == "size" and as_quality_meter(size).name == "size"
    assert as_cost_meter(_Nameless()).name == "cost" and as_quality_meter(_Nameless()).name == "quality"
    assert as_cost_meter(_Nameless())(4) == 4 and as_quality_meter(_Nameless())(4) == 4.0


class _TwoKnobs:
    """Knob 'v' sets the model to v, knob 'w' to 2 v: the rule must be told which knob."""

    def knobs(self) -> Sequence[Knob]:
        return [Knob("v", IntRange(0, 100)), Knob("w", IntRange(0, 100))]

    def apply(self, model: list[int], knob: str, value: KnobValue) -> list[int]:
        assert isinstance(value, int)
        return [value if knob == "v" else 2 * value]


def test_checked_wrappers_are_transparent() -> None:
    """KMR.rule.no-mutation KMR.policy.no-mutation KMR.meter.deterministic: checked() changes no
    result: the rule gets the knob asked for, the triple keeps its name, meters, units and
    informative meters, and a run with a quality meter passes the checks."""
    info = InformativeMeter[list[int]]("len", lambda m: len(m))
    tri = KMRTriple("t", _TwoKnobs(), CostMeter("c", lambda m: m[0], "units"), QualityMeter("q", lambda m: -m[0]),
                    (info,))
    ctri, cpol = checked(tri, ScheduledPolicy((Proposal("w", 3), Proposal("v", 2))))
    assert ctri.name == "t" and ctri.cost.name == "c" and ctri.cost.unit == "units"
    assert ctri.quality is not None and ctri.quality.name == "q" and ctri.informative == (info,)
    assert ctri.rule.knobs() == tri.rule.knobs()
    res = budgeted_kmr([10], ctri, cpol, 0, 5)
    assert [(r.knob, r.cost_after) for r in res.trace] == [("w", 6), ("v", 2)]
    assert res.model == [2] and res.quality_final == -2.0


def test_checked_errors_exact() -> None:
    """KMR.rule.no-mutation KMR.policy.no-mutation KMR.meter.deterministic: each broken assumption
    raises ContractError naming its clause and the callback that broke it."""
    class Mutating(_TwoKnobs):
        def apply(self, model: list[int], knob: str, value: KnobValue) -> list[int]:
            model.append(0)
            return [1]

    def run(tri: KMRTriple[list[int]], pol: object = None) -> ContractError:
        ctri, cpol = checked(tri, pol or ScheduledPolicy((Proposal("v", 1),)))  # type: ignore[arg-type]
        with pytest.raises(ContractError) as e:
            budgeted_kmr([10], ctri, cpol, 0, 3)
        return e.value

    cost = CostMeter[list[int]]("c", lambda m: m[0])
    e = run(KMRTriple("t", Mutating(), cost))
    assert str(e) == "[KMR.rule.no-mutation] rule Mutating modified the model it was shown"

    def grow(m: list[int]) -> int:
        m.append(0)
        return m[0]
    e = run(KMRTriple("t", _TwoKnobs(), CostMeter("c", grow)))
    assert str(e) == "[KMR.meter.deterministic] cost meter 'c' modified the model it was shown"

    def qgrow(m: list[int]) -> float:
        m.append(0)
        return 0.0
    e = run(KMRTriple("t", _TwoKnobs(), cost, QualityMeter("q", qgrow)))
    assert str(e) == "[KMR.policy.no-mutation] quality meter 'q' modified the model it was shown"

    def pol(st: PolicyState[list[int]]) -> Proposal | Stop:
        st.model.append(0)
        return Stop()
    e = run(KMRTriple("t", _TwoKnobs(), cost), pol)
    assert str(e) == "[KMR.policy.no-mutation] the policy modified the model it was shown"

    calls = iter(range(10, 100))  # 10 at the start, 11 when Algorithm 1 measures M_out again
    e = run(KMRTriple("t", _TwoKnobs(), CostMeter("c", lambda m: next(calls))), lambda st: Stop())
    assert str(e) == "[KMR.meter.deterministic] cost meter 'c' measured the same model as 10, then as 11"


def test_to_exact_messages_and_numpy_integers() -> None:
    """KMR.exact.binary64 KMR.exact.plain: a bool and an int subclass are refused with messages
    naming what was passed; a numpy integer (a numbers.Rational, not an int) becomes a plain int."""
    assert str(_err(to_exact, True, clause="KMR.x.y", error=BudgetError, what="budget B")) == \
        "[KMR.x.y] budget B must be a number, got bool True"
    assert str(_err(to_exact, _Sub(2), clause="KMR.x.y", error=BudgetError, what="budget B")) == \
        "[KMR.exact.plain] budget B must be a plain int or Fraction, got the subclass _Sub (it may redefine comparison)"
    for x in (np.int64(7), np.uint8(7), np.int32(-7)):
        q = to_exact(x, clause="KMR.x.y", error=BudgetError, what="v")
        assert q == int(x) and type(q) is int


class _Ratio:
    """A rational number type of another library: registered as a numbers.Rational (as e.g.
    gmpy2.mpq is), neither an int nor a Fraction."""

    def __init__(self, p: int, q: int) -> None:
        self.numerator, self.denominator = p, q


numbers.Rational.register(_Ratio)


def test_to_exact_other_rationals_and_int_range_messages() -> None:
    """KMR.exact.binary64 KMR.knob.domain-int: another library's rational becomes the exact
    Fraction p/q (an int when q = 1); an integer range names a non-integer and a value outside."""
    q = to_exact(_Ratio(6, 4), clause="KMR.x.y", error=BudgetError, what="v")
    assert q == Fraction(3, 2) and type(q) is Fraction
    q = to_exact(_Ratio(8, 4), clause="KMR.x.y", error=BudgetError, what="v")
    assert q == 2 and type(q) is int
    assert str(_err(IntRange(0, 5).normalize, "x")) == "[KMR.knob.domain-int] 'x' is not an integer"
    assert str(_err(IntRange(0, 5).normalize, 9)) == "[KMR.knob.domain-int] 9 is outside [0, 5]"
    assert str(_err(IntRange(0, 5).normalize, Fraction(1, 2))) == \
        "[KMR.knob.domain-int] Fraction(1, 2) is not an integer"


def test_to_exact_numpy_floats_and_other_types() -> None:
    """KMR.exact.binary64: a numpy float32 is converted to binary64 (exactly) and then read as
    its shortest decimal; a type that is no number is refused, naming the type."""
    assert to_exact(np.float32(0.5), clause="KMR.x.y", error=BudgetError, what="v") == Fraction(1, 2)
    assert to_exact(np.float32(0.1), clause="KMR.x.y", error=BudgetError, what="v") == \
        Fraction("0.10000000149011612")
    assert to_exact(np.float64(0.7), clause="KMR.x.y", error=BudgetError, what="v") == Fraction(7, 10)
    assert str(_err(to_exact, [1], clause="KMR.x.y", error=BudgetError, what="budget B")) == \
        "[KMR.x.y] budget B must be int, Fraction, float or a rational string, got list"


def test_policies_name_unknown_knobs_and_stop_reasons() -> None:
    """KMR.knob.unknown KMR.policy.greedy KMR.policy.ladder KMR.policy.scheduled: a candidate or
    ladder knob the triple does not have raises KnobDomainError naming the clause and the knobs
    known; an exhausted schedule stops with its reason."""
    from kmr_ref.core.policy import ladder_candidates

    st = PolicyState(5, 5, None, 0, 0, _tri(), ())
    for pol in (GreedyPolicy(lambda s: [Proposal("x", 1)]), ladder_candidates(["x"])):
        e = _err(pol, st)
        assert isinstance(e, KnobDomainError) and str(e) == "[KMR.knob.unknown] no knob named 'x'; known: ['v']"
    assert ScheduledPolicy(())(st) == Stop("schedule exhausted")


def test_current_value_is_the_last_accepted_value_of_that_knob() -> None:
    """KMR.policy.ladder: a knob's current value is its value in the last *accepted* record of that
    knob (a later rejected record or another knob's record does not count), else the default."""
    from kmr_ref.core.policy import current_value

    hist = (StepRecord(0, "a", 3, 9, 8, None, True, "accepted"), StepRecord(1, "b", 7, 8, 6, None, True, "accepted"),
            StepRecord(2, "a", 5, 6, 6, None, False, "not-strictly-lower"))
    st = PolicyState(6, 6, None, 3, 0, _tri(), hist)
    assert current_value(st, "a", 0) == 3 and current_value(st, "b", 0) == 7 and current_value(st, "c", 1) == 1


def test_budget_schedule_messages() -> None:
    """KMR.budget.schedule KMR.alg1.validate: an empty budget stream and a budget that is no number
    are refused naming the clause, the iteration and what was wrong."""
    e = _err(budgeted_kmr, 5, _tri(), ScheduledPolicy(()), iter([]), 3)
    assert str(e) == "[KMR.budget.schedule] the budget stream is empty: no budget for iteration 0"
    e = _err(budgeted_kmr, 5, _tri(), ScheduledPolicy(()), lambda st: "x", 3)
    assert str(e) == "[KMR.budget.schedule] budget B_0 'x' is not a rational literal"
    e = _err(budgeted_kmr, 5, _tri(), ScheduledPolicy((Proposal("v", 4),)), iter([1, "y"]), 3)
    assert str(e) == "[KMR.budget.schedule] budget B_1 'y' is not a rational literal"


def test_budget_schedule_sees_the_quality() -> None:
    """KMR.budget.read: the budget callable is shown the state of each loop guard, the current
    model's quality included (Q(M_0) first, then the quality of each accepted model)."""
    seen: list[tuple[int, float | None]] = []

    def budget(st: object) -> int:
        seen.append((st.t, st.quality))  # type: ignore[attr-defined]
        return 0

    budgeted_kmr(5, _tri(quality=True), ScheduledPolicy((Proposal("v", 4), Proposal("v", 2))), budget, 3)
    assert seen == [(0, -5.0), (1, -4.0), (2, -2.0)]


def test_rejected_record_names_its_reason() -> None:
    """KMR.alg1.early-break KMR.alg1.strict-progress: the record of a proposal that does not lower
    the cost is rejected with the reason "not-strictly-lower" (the accepted one: "accepted")."""
    res = budgeted_kmr(5, _tri(), ScheduledPolicy((Proposal("v", 3), Proposal("v", 3))), 0, 5)
    assert res.status is Status.STALLED
    assert [(r.accepted, r.reason) for r in res.trace] == [(True, "accepted"), (False, "not-strictly-lower")]


def test_partial_result_keeps_the_initial_cost_and_quality() -> None:
    """KMR.alg1.error KMR.alg1.after-loop: the partial result attached to an error raised inside the
    loop carries C(M_0) and Q(M_0), not only the last accepted values."""
    def boom(r: object) -> None:
        raise RuntimeError("log failed")

    with pytest.raises(RuntimeError) as e:
        budgeted_kmr(5, _tri(quality=True), ScheduledPolicy((Proposal("v", 2),)), 0, 3, on_record=boom)
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert (part.cost_initial, part.quality_initial) == (5, -5.0)
    assert (part.cost_final, part.quality_final, part.model) == (2, -2.0, 2)


# ---------------------------------------------------------------------------------------------
# Algorithm 10's interrupt and error paths, at the points the mutation run found unchecked:
# an interrupt landing right after a phase returned (at the boundaries C == B and used == N, and
# with three phases), and every field of the partial result an error carries.

class _Injected(Exception):
    """Raised by :func:`_raise_at` at a line of ``compose.py``."""


class _Foreign(Exception):
    """An exception that already carries a ``kmr_partial`` of some other run."""

    kmr_partial: object = KMRResult(-1, Status.FEASIBLE, (), 0, -1, -1, None, None)


def _raise_at(marker: str, exc: BaseException, nth: int = 1) -> Callable[[], None]:
    """A tracer raising ``exc`` just before the ``nth`` execution of the line of ``compose.py``
    containing ``marker`` (found by its text, so it also finds the line in a mutated copy)."""
    seen = [0]

    def local(frame: types.FrameType, event: str, arg: object) -> object:
        if event == "line" and marker in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
            seen[0] += 1
            if seen[0] == nth:
                raise exc
        return local

    def glob(frame: types.FrameType, event: str, arg: object) -> object:
        return local if frame.f_code.co_filename.endswith("compose.py") else None

    def start() -> None:
        sys.settrace(glob)

    return start


def _run_traced(start: Callable[[], None], fn: Callable[[], T]) -> T:
    start()
    try:
        return fn()
    finally:
        sys.settrace(None)


_AFTER_PHASE = "outcomes.append(PhaseOutcome(ph.name, res.status, len(res.trace)))"  # the phase returned


def _three(tables: Sequence[Sequence[int]]) -> list[Phase[int]]:
    return [Phase(f"p{i}", SetTo(), ScheduledPolicy(tuple(Proposal("v", v) for v in tab)))
            for i, tab in enumerate(tables)]


def test_interrupt_after_a_phase_names_the_next_phase() -> None:
    """KMR.alg10.phase-break KMR.alg10.status: an interrupt while the pipeline records a finished
    phase keeps that phase whole and reports the phase that would run next (by name, with three
    phases: p1 after p0, p2 after p1) as interrupted with no record."""
    for nth, want in ((1, [("p0", Status.POLICY_STOP, 1), ("p1", Status.INTERRUPTED, 0)]),
                      (2, [("p0", Status.POLICY_STOP, 1), ("p1", Status.POLICY_STOP, 1),
                           ("p2", Status.INTERRUPTED, 0)])):
        out = _run_traced(_raise_at(_AFTER_PHASE, KeyboardInterrupt(), nth),
                          lambda: composed_kmr(9, _three([[8], [7], [6]]), CostMeter("c", lambda m: m), 0, 5))
        assert out is not None
        assert [(p.name, p.status, p.steps) for p in out.phases] == want
        assert out.result.status is Status.INTERRUPTED and out.result.model == 9 - nth


def test_interrupt_after_a_phase_at_the_budget_or_the_step_limit() -> None:
    """KMR.alg10.skip KMR.alg10.status: after a phase that ends at C == B (feasible) or at used == N
    (step-limit), no phase would run, so an interrupt there reports no interrupted phase and the
    pipeline's status is feasible, resp. step-limit."""
    cost = CostMeter[int]("c", lambda m: m)
    at_budget = _run_traced(_raise_at(_AFTER_PHASE, KeyboardInterrupt()),
                            lambda: composed_kmr(9, _three([[8], [7]]), cost, 8, 5))
    assert [(p.name, p.status) for p in at_budget.phases] == [("p0", Status.FEASIBLE)]
    assert at_budget.result.status is Status.FEASIBLE
    at_limit = _run_traced(_raise_at(_AFTER_PHASE, KeyboardInterrupt()),
                           lambda: composed_kmr(9, _three([[8, 7], [6]]), cost, 0, 1))
    assert [(p.name, p.status, p.steps) for p in at_limit.phases] == [("p0", Status.STEP_LIMIT, 1)]
    assert at_limit.result.status is Status.STEP_LIMIT and at_limit.result.model == 8


def _partial(e: pytest.ExceptionInfo[BaseException]) -> KMRResult[int]:
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert isinstance(part, KMRResult)
    return part


def _fields(part: KMRResult[int]) -> tuple[object, ...]:
    return (part.model, part.status, [(r.t, r.cost_after) for r in part.trace], part.budget, part.cost_initial,
            part.cost_final, part.quality_initial, part.quality_final)


def test_pipeline_partial_on_a_nondeterministic_meter() -> None:
    """KMR.meter.deterministic KMR.alg1.error: a cost meter that measures phase p1's start model
    differently from p0's returned model raises MeterError once p1 returns; the partial keeps both
    phases whole, with C(M_0), Q(M_0) and status interrupted (C > B)."""
    calls = [0]

    def drifting(m: int) -> int:
        calls[0] += 1
        # M_0, p0's start, its step, its returned model (measured again), then p1's start
        return m + (1 if calls[0] == 5 else 0)

    with pytest.raises(MeterError) as e:
        composed_kmr(9, _three([[8], [7]]), CostMeter("c", drifting), 0, 5, quality=QualityMeter("q", lambda m: -m))
    assert e.value.clause == "KMR.meter.deterministic" and "phase 'p1'" in str(e.value)
    assert _fields(_partial(e)) == (7, Status.INTERRUPTED, [(0, 8), (1, 7)], 0, 9, 7, -9.0, -7.0)


@pytest.mark.parametrize("kind", [_Injected, _Foreign])
def test_pipeline_partial_on_an_error_at_a_phase_start(kind: type[Exception]) -> None:
    """KMR.alg1.error KMR.alg1.after-loop: an error while p1 measures its start model carries the
    pipeline up to p0 (not a partial the error brought from elsewhere)."""
    calls = [0]

    def failing(m: int) -> int:
        calls[0] += 1
        if calls[0] == 5:  # p1's start (after M_0, p0's start, its step, its returned model)
            raise kind("meter failed")
        return m

    with pytest.raises(kind) as e:
        composed_kmr(9, _three([[8], [7]]), CostMeter("c", failing), 0, 5, quality=QualityMeter("q", lambda m: -m))
    assert _fields(_partial(e)) == (8, Status.INTERRUPTED, [(0, 8)], 0, 9, 8, -9.0, -8.0)


def test_algorithm1_error_before_the_loop_carries_no_partial() -> None:
    """KMR.alg1.after-loop: an error while Algorithm 1 (or Algorithm 10) measures M_0 has no result
    to carry: an exception without a partial gets none, one that brought a partial from elsewhere
    has it cleared (set to None)."""
    def failing(kind: type[Exception]) -> Callable[[int], int]:
        def m(x: int) -> int:
            raise kind("meter failed")
        return m

    with pytest.raises(_Injected) as e1:
        budgeted_kmr(5, KMRTriple("t", SetTo(), CostMeter("c", failing(_Injected))), ScheduledPolicy(()), 0, 3)
    assert not hasattr(e1.value, "kmr_partial")
    with pytest.raises(_Foreign) as e2:
        budgeted_kmr(5, KMRTriple("t", SetTo(), CostMeter("c", failing(_Foreign))), ScheduledPolicy(()), 0, 3)
    assert e2.value.kmr_partial is None  # type: ignore[attr-defined]
    with pytest.raises(_Injected) as e3:  # Algorithm 10's own first measurement, likewise
        composed_kmr(5, _three([[4]]), CostMeter("c", failing(_Injected)), 0, 3)
    assert not hasattr(e3.value, "kmr_partial")
    with pytest.raises(_Foreign) as e4:
        composed_kmr(5, _three([[4]]), CostMeter("c", failing(_Foreign)), 0, 3)
    assert e4.value.kmr_partial is None  # type: ignore[attr-defined]


def test_pipeline_partial_on_an_error_inside_a_phase() -> None:
    """KMR.alg1.error KMR.alg10.phase-trace: an error in p1's loop carries the pipeline so far: p0's
    records and p1's accepted ones (t global), C(M_0), Q(M_0), status interrupted."""
    class FailsAt5(SetTo):
        def apply(self, model: int, knob: str, value: KnobValue) -> int:
            if value == 5:
                raise _Injected("rule failed")
            return super().apply(model, knob, value)

    phases = [*_three([[8]]), Phase("p1", FailsAt5(), ScheduledPolicy((Proposal("v", 7), Proposal("v", 5))))]
    with pytest.raises(_Injected) as e:
        composed_kmr(9, phases, CostMeter("c", lambda m: m), 0, 5, quality=QualityMeter("q", lambda m: -m))
    assert _fields(_partial(e)) == (7, Status.INTERRUPTED, [(0, 8), (1, 7)], 0, 9, 7, -9.0, -7.0)


@pytest.mark.parametrize("marker", [_AFTER_PHASE, "tri = KMRTriple(ph.name", "if acc.cost <= B:  # KMR.alg10.status"])
@pytest.mark.parametrize("kind", [_Injected, _Foreign])
def test_pipeline_partial_on_an_error_between_phases(marker: str, kind: type[Exception]) -> None:
    """KMR.alg1.after-loop: an error raised after p0 returned, before p1's triple is built, or after
    the last phase, carries the pipeline so far (p0 whole), never a partial brought from elsewhere."""
    phases = _three([[8], [7]])
    with pytest.raises(kind) as e:
        _run_traced(_raise_at(marker, kind("injected"), 2 if "KMRTriple" in marker else 1),
                    lambda: composed_kmr(9, phases, CostMeter("c", lambda m: m), 0, 5,
                                         quality=QualityMeter("q", lambda m: -m)))
    part = _partial(e)
    if "alg10.status" in marker:  # after both phases
        assert _fields(part) == (7, Status.INTERRUPTED, [(0, 8), (1, 7)], 0, 9, 7, -9.0, -7.0)
    else:
        assert _fields(part) == (8, Status.INTERRUPTED, [(0, 8)], 0, 9, 8, -9.0, -8.0)
