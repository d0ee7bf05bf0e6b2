"""Knobs, exact numbers and meters (``KMR.knob.*``, ``KMR.exact.binary64``, ``KMR.meter.*``)."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmr_ref.core import (
    BudgetError,
    CostMeter,
    FiniteDomain,
    InformativeMeter,
    IntRange,
    KMRTriple,
    Knob,
    KnobDomainError,
    MeterError,
    Proposal,
    QualityMeter,
    RealInterval,
    budgeted_kmr,
    real_knob,
    to_exact,
)
from kmr_ref.core.knobs import find_knob
from tests.strategies import Box, ScriptedPolicy, ScriptedRule, assert_clause_error, box_cost, toy_quality, toy_triple

finite_floats = st.floats(allow_nan=False, allow_infinity=False)


def sig_digits(q: Fraction) -> tuple[int, int]:
    """(number of significant decimal digits, decimal exponent of the last digit) of a finite
    decimal q != 0, computed with integer arithmetic."""
    num, den = abs(q.numerator), q.denominator
    twos = fives = 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    assert den == 1, "not a finite decimal"
    k = max(twos, fives)
    num = num * 10**k // q.denominator
    e = -k
    while num % 10 == 0:
        num, e = num // 10, e + 1
    return len(str(num)), e


@given(x=finite_floats)
def test_binary64_shortest_round_trip(x: float) -> None:
    """KMR.exact.binary64: a float denotes the rational of its shortest round-trip decimal.

    Checked three ways: (1) equals ``Fraction(repr(x))`` and ``Fraction(Decimal(repr(x)))``;
    (2) is a finite decimal that converts back to exactly x (``float(q) == x``); (3) no decimal
    with one significant digit fewer converts back to x (shortest-ness), and among the
    neighbours with as many digits that do, none is closer to the exact binary value."""
    q = to_exact(x, clause="KMR.alg1.validate", error=BudgetError, what="x")
    assert q == Fraction(repr(x)) == Fraction(Decimal(repr(x)))
    assert isinstance(q, int) == (Fraction(q).denominator == 1)
    assert float(q) == x
    if q == 0:
        return
    d, e = sig_digits(Fraction(q))
    exact = Decimal(x)  # the exact binary value
    if d > 1:
        with localcontext() as ctx:
            ctx.prec = 1000
            step = Decimal(f"1E{e + 1}")
            for rnd in (ROUND_FLOOR, ROUND_CEILING):
                shorter = exact.quantize(step, rounding=rnd)
                if shorter != 0:
                    assert float(shorter) != x, f"{shorter} is shorter than {q} and round-trips"
    with localcontext() as ctx:
        ctx.prec = 1000
        step = Decimal(f"1E{e}")
        for rnd in (ROUND_FLOOR, ROUND_CEILING):
            other = Fraction(exact.quantize(step, rounding=rnd))
            if float(other) == x:
                assert abs(Fraction(q) - Fraction(exact)) <= abs(other - Fraction(exact))


def test_binary64_examples() -> None:
    """KMR.exact.binary64: hand-checked values."""
    def ex(x: object) -> object:
        return to_exact(x, clause="KMR.alg1.validate", error=BudgetError, what="x")

    assert ex(0.7) == Fraction(7, 10) and ex(0.1) == Fraction(1, 10) and ex(1e-3) == Fraction(1, 1000)
    assert ex(2.5) == Fraction(5, 2) and ex(3.0) == 3 and type(ex(3.0)) is int
    assert ex(1e16) == 10**16 and ex(5e-324) == Fraction(5, 10**324)
    assert ex(-0.0) == 0 and ex(0.30000000000000004) == Fraction(30000000000000004, 10**17)
    assert ex("7/10") == Fraction(7, 10) and ex("4/2") == 2 and type(ex("4/2")) is int
    assert ex(Fraction(6, 3)) == 2 and type(ex(Fraction(6, 3))) is int


@pytest.mark.parametrize("bad", [math.nan, -math.nan, math.inf, -math.inf, True, False, None, "x", "1/0",
                                 "nan", "inf", b"1", [1], 1j])
def test_binary64_refusals(bad: object) -> None:
    """KMR.exact.binary64, KMR.error.names-clause: NaN, ±inf, booleans and non-numbers are refused
    with the error type and clause of the caller."""
    with pytest.raises(KnobDomainError) as ei:
        to_exact(bad, clause="KMR.knob.domain-real", error=KnobDomainError, what="v")
    assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-real")


def test_knob_def() -> None:
    """KMR.knob.def: a knob is a name, a domain and a direction (default increasing)."""
    k = Knob("sparsity", IntRange(0, 3))
    assert (k.name, k.domain, k.more_aggressive) == ("sparsity", IntRange(0, 3), "increasing")
    k2 = Knob("bits", FiniteDomain((8, 4, 2)), "decreasing")
    assert k2.more_aggressive == "decreasing" and k2.grid() == [8, 4, 2] and k2.check(4) == 4


@given(vals=st.lists(st.one_of(st.integers(-5, 5), st.fractions(max_denominator=6), st.text(max_size=2)),
                     min_size=1, max_size=6, unique_by=lambda v: (isinstance(v, str), v)))
def test_domain_finite(vals: list[int | Fraction | str]) -> None:
    """KMR.knob.domain-finite, KMR.knob.domain: an ordered tuple of >= 1 distinct values; members
    normalize to the domain's own object, in any exact spelling; the grid is the listing order."""
    # distinct as values: 1 and Fraction(1) are the same value
    nums = [v for v in vals if not isinstance(v, str)]
    if len(set(nums)) != len(nums):
        with pytest.raises(KnobDomainError) as ei:
            FiniteDomain(tuple(vals))
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-finite")
        return
    d = FiniteDomain(tuple(vals))
    assert list(d.grid()) == vals
    for v in vals:
        assert d.normalize(v) is v
        if not isinstance(v, str):
            assert d.normalize(Fraction(v)) is v
            f = float(v)
            if Fraction(repr(f)) == v:
                assert d.normalize(f) is v
    for bad in [100, Fraction(1, 7), "zzz", True, False, None, math.nan, 0.3]:
        if not isinstance(bad, bool) and bad in vals:
            continue
        with pytest.raises(KnobDomainError) as ei:
            d.normalize(bad)
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-finite")


def test_domain_finite_empty_and_strings() -> None:
    """KMR.knob.domain-finite: empty or repeated domains are refused; a string never equals a number."""
    for bad in [(), (1, 1), (1, Fraction(1)), ("a", "a")]:
        with pytest.raises(KnobDomainError) as ei:
            FiniteDomain(bad)
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-finite")
    d = FiniteDomain(("1", 2))
    with pytest.raises(KnobDomainError):
        d.normalize(1)
    with pytest.raises(KnobDomainError):
        d.normalize("2")
    assert d.normalize("1") == "1"


@given(lo=st.integers(-20, 20), width=st.integers(0, 20), v=st.integers(-50, 50))
def test_domain_int(lo: int, width: int, v: int) -> None:
    """KMR.knob.domain-int, KMR.knob.domain: lo..hi inclusive; integral spellings (3.0, 6/2)
    are admitted as ints; non-integers, bools and values outside are refused."""
    hi = lo + width
    d = IntRange(lo, hi)
    assert list(d.grid()) == list(range(lo, hi + 1))
    for spelling in (v, float(v), Fraction(v * 2, 2)):
        if lo <= v <= hi:
            got = d.normalize(spelling)
            assert got == v and type(got) is int
        else:
            with pytest.raises(KnobDomainError) as ei:
                d.normalize(spelling)
            assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-int")
    for bad in (v + 0.5, Fraction(2 * v + 1, 2), True, False, None, math.nan, math.inf, "x", [v]):
        with pytest.raises(KnobDomainError) as ei:
            d.normalize(bad)
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-int")


@given(lo=st.fractions(-3, 3, max_denominator=7), width=st.fractions(0, 4, max_denominator=7),
       step=st.fractions(Fraction(1, 9), 2, max_denominator=9))
def test_domain_real_grid(lo: Fraction, width: Fraction, step: Fraction) -> None:
    """KMR.knob.domain-real: the grid is lo, lo+h, ..., <= hi, computed exactly (Fractions),
    with integral points as ints."""
    hi = lo + width
    d = RealInterval(lo, hi, step)
    count = math.floor(width / step) + 1
    expected = [lo + i * step for i in range(count)]
    got = list(d.grid())
    assert got == expected
    assert all(type(g) is (int if Fraction(g).denominator == 1 else Fraction) for g in got)
    last = Fraction(got[-1])
    assert last <= hi < last + step


@given(lo=st.fractions(-3, 3, max_denominator=7), width=st.fractions(0, 4, max_denominator=7),
       v=st.one_of(st.fractions(-8, 8, max_denominator=11), st.floats(-8, 8, allow_nan=False)))
def test_domain_real_membership(lo: Fraction, width: Fraction, v: Fraction | float) -> None:
    """KMR.knob.domain-real, KMR.knob.domain, KMR.exact.binary64: any exact value in [lo, hi]
    is admissible (floats by their shortest decimal); outside values raise KnobDomainError."""
    hi = lo + width
    d = RealInterval(lo, hi, None)
    q = Fraction(repr(v)) if isinstance(v, float) else v
    if lo <= q <= hi:
        got = d.normalize(v)
        assert got == q and type(got) is (int if q.denominator == 1 else Fraction)
    else:
        with pytest.raises(KnobDomainError) as ei:
            d.normalize(v)
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-real")
    for bad in (math.nan, math.inf, -math.inf, True, None, "x"):
        with pytest.raises(KnobDomainError) as ei:
            d.normalize(bad)
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-real")
    with pytest.raises(KnobDomainError) as ei:
        list(d.grid())  # no grid step
    assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-real")


def test_real_knob_bounds() -> None:
    """KMR.knob.domain-real, KMR.exact.binary64: float bounds denote their shortest decimals, so
    0.1..0.3 step 0.1 is exactly {1/10, 2/10, 3/10} (binary floats would lose the last point)."""
    k = real_knob("s", 0.1, 0.3, 0.1)
    assert k.grid() == [Fraction(1, 10), Fraction(2, 10), Fraction(3, 10)]
    assert k.check(0.3) == Fraction(3, 10)
    with pytest.raises(KnobDomainError) as ei:
        k.check(0.30000000000000004)
    assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-real")
    with pytest.raises(KnobDomainError) as ei:
        real_knob("s", 1, 0)
    assert_clause_error(ei.value, KnobDomainError, "KMR.knob.domain-real")
    with pytest.raises(KnobDomainError):
        real_knob("s", math.nan, 1)


@given(names=st.lists(st.text(min_size=1, max_size=3), min_size=0, max_size=5, unique=True),
       probe=st.text(max_size=3))
def test_knob_unknown(names: list[str], probe: str) -> None:
    """KMR.knob.unknown: looking up a knob the rule does not have raises KnobDomainError."""
    knobs = [Knob(n, IntRange(0, 1)) for n in names]
    if probe in names:
        assert find_knob(knobs, probe) is knobs[names.index(probe)]
    else:
        with pytest.raises(KnobDomainError) as ei:
            find_knob(knobs, probe)
        assert_clause_error(ei.value, KnobDomainError, "KMR.knob.unknown")


@given(c=st.one_of(st.integers(0, 10**30), st.fractions(min_value=0, max_value=10**6)))
def test_cost_meter_exact_ok(c: int | Fraction) -> None:
    """KMR.meter.cost-exact: exact non-negative ints and Fractions pass through unchanged."""
    got = CostMeter[object]("c", lambda m: c)(object())
    assert got == c and type(got) is type(c)


@pytest.mark.parametrize("bad", [0.0, 1.0, 2.5, math.nan, math.inf, True, False, -1, Fraction(-1, 3), "3",
                                 None])
def test_cost_meter_refuses(bad: object) -> None:
    """KMR.meter.cost-exact, KMR.error.names-clause: floats (even integral ones), bools, negatives
    and non-numbers raise MeterError."""
    with pytest.raises(MeterError) as ei:
        CostMeter[object]("c", lambda m: bad)(object())  # type: ignore[arg-type,return-value]
    assert_clause_error(ei.value, MeterError, "KMR.meter.cost-exact")


@given(q=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**6, 10**6)))
def test_quality_meter(q: float | int) -> None:
    """KMR.meter.quality: a finite real (int or float) is returned as a binary64 float."""
    got = QualityMeter[object]("q", lambda m: q)(object())
    assert type(got) is float and got == float(q)


@pytest.mark.parametrize("bad", [True, False, "1", None, [1.0], float("nan"), float("inf"), -float("inf")])
def test_quality_meter_refuses(bad: object) -> None:
    """KMR.meter.quality, KMR.error.names-clause: non-reals (bool, str, ...) and NaN/inf raise MeterError."""
    with pytest.raises(MeterError) as ei:
        QualityMeter[object]("q", lambda m: bad)(object())  # type: ignore[arg-type,return-value]
    assert_clause_error(ei.value, MeterError, "KMR.meter.quality")


def test_triple_def() -> None:
    """KMR.triple.def, KMR.rule.def: a triple holds knobs (those of its rule), the rule T mapping
    (M, k, v) to a new M', a cost meter, an optional quality meter and informative meters."""
    rule = ScriptedRule([-2])
    tri = toy_triple(rule, quality=toy_quality)
    assert tri.knobs == rule.knobs() and tri.rule is rule
    m = Box([5])
    m2 = tri.rule.apply(m, "i", 1)
    assert m2 is not m and tri.cost(m2) == 3 and m.snapshot() == (5,)
    assert tri.quality is not None and tri.quality(m2) == toy_quality(m2)
    assert tri.informative == ()


def test_informative_meters_never_decide() -> None:
    """KMR.meter.informative: informative meters return floats and are never called by Algorithm 1
    (no normative decision uses them): a run with a counting informative meter never calls it."""
    calls: list[Box] = []

    def wall(b: Box) -> float:
        calls.append(b)
        return 1.5

    im = InformativeMeter[Box]("wall", wall)
    assert im(Box([1])) == 1.5 and type(im(Box([1]))) is float
    calls.clear()
    rule = ScriptedRule([-1, -1, 0])
    tri = KMRTriple("toy", rule, CostMeter("sum", box_cost), None, (im,))
    res = budgeted_kmr(Box([5]), tri, ScriptedPolicy([Proposal("i", 1)] * 5), 0, 5)
    assert calls == []
    assert [r.accepted for r in res.trace] == [True, True, False]
