"""Shared toy models, scripted rules/policies, Hypothesis strategies and checks for the core tests.

The toy world is deliberately adversarial: a *scripted* rule returns, at its i-th call, a model
whose integer cost is ``max(0, c + delta_i)`` where ``delta_i`` is drawn (so it may lower, repeat
or raise the cost), and a *scripted* policy returns, at its i-th call, whatever the script says
(a proposal, ``Stop``, or garbage). Every model is a mutable :class:`Box` so that mutation of the
caller's model would be visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

from kmr_ref.core import (
    CostMeter,
    FiniteDomain,
    IntRange,
    KMRError,
    KMRTriple,
    Knob,
    KnobValue,
    PolicyState,
    Proposal,
    QualityMeter,
    Stop,
    real_knob,
)
from kmr_ref.spec_index import defined_clauses


def spec_clause_ids() -> set[str]:
    """Every clause ID defined in spec/ (as read by ``kmr_ref.spec_index``)."""
    return set(defined_clauses())


def assert_clause_error(exc: BaseException, cls: type[KMRError], clause: str | None = None) -> None:
    """``KMR.error.names-clause``: a typed error whose ``.clause`` is a spec ID and whose message
    starts with ``[clause]``."""
    assert isinstance(exc, cls), f"expected {cls.__name__}, got {type(exc).__name__}: {exc}"
    assert isinstance(exc, KMRError)
    assert exc.clause.startswith("KMR."), exc.clause
    assert exc.clause in spec_clause_ids(), f"{exc.clause} is not a clause of spec/"
    assert str(exc).startswith(f"[{exc.clause}] "), str(exc)
    if clause is not None:
        assert exc.clause == clause, f"expected clause {clause}, got {exc.clause}"


class Box:
    """A mutable toy model: a list of ints; its toy cost is ``sum(vals)``."""

    __slots__ = ("vals",)

    def __init__(self, vals: Sequence[int]) -> None:
        self.vals = list(vals)

    def snapshot(self) -> tuple[int, ...]:
        return tuple(self.vals)

    def __repr__(self) -> str:
        return f"Box({self.vals!r})"


def box_cost(b: Box) -> int:
    return sum(b.vals)


# --- knobs of the toy rule -------------------------------------------------------------------

K_INT = Knob("i", IntRange(0, 9))
K_FIN = Knob("f", FiniteDomain((1, Fraction(1, 2), "a")))
K_REAL = real_knob("r", 0, 1, "1/4")
TOY_KNOBS: tuple[Knob, ...] = (K_INT, K_FIN, K_REAL)


def expected_normal(knob: str, value: object) -> KnobValue:
    """The normalized value of an in-domain proposal, written independently of kmr_ref.core:
    floats denote ``Fraction(repr(x))`` (``KMR.exact.binary64``)."""
    q: object = Fraction(repr(value)) if isinstance(value, float) else value
    if isinstance(q, str) and knob != "f":
        q = Fraction(q)
    if knob == "f":
        for u in (1, Fraction(1, 2), "a"):
            if isinstance(u, str) == isinstance(q, str) and u == q:
                return u
        raise AssertionError(f"{value!r} not in f")
    assert isinstance(q, int | Fraction)
    return int(q) if Fraction(q).denominator == 1 else Fraction(q)


@st.composite
def in_domain_proposals(draw: st.DrawFn) -> Proposal:
    """A proposal for a toy knob with an admissible value, in any accepted spelling."""
    k = draw(st.sampled_from(["i", "f", "r"]))
    v: Any
    if k == "i":
        v = draw(st.one_of(st.integers(0, 9), st.integers(0, 9).map(float), st.integers(0, 9).map(Fraction)))
    elif k == "f":
        v = draw(st.sampled_from([1, Fraction(1, 2), "a", 0.5, 1.0, Fraction(2, 2)]))
    else:
        v = draw(st.one_of(
            st.fractions(min_value=0, max_value=1, max_denominator=50),
            st.sampled_from([0.0, 0.25, 0.7, 1.0, 0.1, 1e-300]),
            st.sampled_from(["1/3", "7/10", "0", "1"]),
        ))
    return Proposal(k, v)  # floats are admissible spellings


# --- scripted rule and policy --------------------------------------------------------------------

class Interrupt:
    """Script marker: raise KeyboardInterrupt at this call."""


@dataclass
class ScriptedRule:
    """At call i returns a new Box of cost ``max(0, cost(model) + deltas[i])`` (0 when the script
    is exhausted). Never mutates its input (``KMR.rule.no-mutation``); records every call."""

    deltas: Sequence[int | Interrupt | BaseException]
    knob_list: tuple[Knob, ...] = TOY_KNOBS
    calls: list[tuple[Box, str, KnobValue, tuple[int, ...]]] = field(default_factory=list)
    outputs: list[Box] = field(default_factory=list)

    def knobs(self) -> Sequence[Knob]:
        return self.knob_list

    def apply(self, model: Box, knob: str, value: KnobValue) -> Box:
        i = len(self.calls)
        self.calls.append((model, knob, value, model.snapshot()))
        d = self.deltas[i] if i < len(self.deltas) else 0
        if isinstance(d, Interrupt):
            raise KeyboardInterrupt
        if isinstance(d, BaseException):
            raise d
        c = box_cost(model)
        new = Box(model.vals)  # a copy: the input is never touched
        new.vals.append(max(0, c + d) - c)
        self.outputs.append(new)
        return new


PolicyAction = Proposal | Stop | Interrupt | object


@dataclass
class ScriptedPolicy:
    """At call i returns ``actions[i]`` (Stop when exhausted); records every state it sees."""

    actions: Sequence[PolicyAction]
    seen: list[PolicyState[Box]] = field(default_factory=list)

    def __call__(self, state: PolicyState[Box]) -> Proposal | Stop:
        i = len(self.seen)
        self.seen.append(state)
        a = self.actions[i] if i < len(self.actions) else Stop("script exhausted")
        if isinstance(a, Interrupt):
            raise KeyboardInterrupt
        return a  # type: ignore[return-value]  # garbage is returned on purpose


def toy_triple(rule: ScriptedRule, *, cost: Callable[[Box], object] = box_cost,
               quality: Callable[[Box], object] | None = None) -> KMRTriple[Box]:
    q = None if quality is None else QualityMeter("q", quality)  # type: ignore[arg-type]
    return KMRTriple("toy", rule, CostMeter("sum", cost), q)  # type: ignore[arg-type]


def toy_quality(b: Box) -> float:
    """A deterministic quality of a Box (a binary64 that is not an integer)."""
    return len(b.vals) / 3 - b.vals[-1] / 7


# --- strategies ----------------------------------------------------------------------------------

deltas = st.integers(-6, 3)
exact_budgets: st.SearchStrategy[int | Fraction] = st.one_of(
    st.integers(-3, 60), st.fractions(min_value=-3, max_value=60, max_denominator=12))
budgets_any: st.SearchStrategy[object] = st.one_of(
    exact_budgets,
    st.floats(min_value=-3, max_value=60, allow_nan=False, allow_infinity=False),
    st.fractions(min_value=0, max_value=60, max_denominator=12).map(str),
)
initial_vals = st.lists(st.integers(0, 12), min_size=1, max_size=4)


def exact_of_budget(b: object) -> int | Fraction:
    """The rational a budget denotes, written independently of kmr_ref.core."""
    assert isinstance(b, int | float | str | Fraction)
    q = Fraction(repr(b)) if isinstance(b, float) else Fraction(b)
    return int(q) if q.denominator == 1 else q
