"""Policies: map the state to the next (knob, value) or Stop (``KMR.policy.*``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, Protocol, TypeVar

from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import Knob, KnobValue, find_knob
from kmr_ref.core.rules import KMRTriple, ReusingRule, analysis_scope
from kmr_ref.core.trace import StepRecord

M = TypeVar("M")


@dataclass(frozen=True)
class Proposal:
    """``KMR.policy.proposal``: set knob ``knob`` to ``value``."""

    knob: str
    value: KnobValue


@dataclass(frozen=True)
class Stop:
    """``KMR.policy.stop``: the policy has nothing more to propose."""

    reason: str = ""


@dataclass(frozen=True)
class PolicyState(Generic[M]):
    """``KMR.policy.state``: the current (last accepted) model, its cost and quality, the
    iteration index t, the budget, the triple and the trace so far."""

    model: M
    cost: Exact
    quality: float | None
    t: int
    budget: Exact
    triple: KMRTriple[M]
    history: tuple[StepRecord, ...]


class Policy(Protocol[M]):
    def __call__(self, state: PolicyState[M]) -> Proposal | Stop: ...


@dataclass(frozen=True)
class ScheduledPolicy(Generic[M]):
    """``KMR.policy.scheduled``: proposes ``schedule[t]`` at iteration t; Stop when exhausted."""

    schedule: tuple[Proposal, ...]

    def __call__(self, state: PolicyState[M]) -> Proposal | Stop:
        if state.t < len(self.schedule):
            return self.schedule[state.t]
        return Stop("schedule exhausted")


@dataclass(frozen=True)
class GreedyPolicy(Generic[M]):
    """``KMR.policy.greedy``: evaluate every candidate of ``candidates(state)``, keep those that
    strictly lower cost, and propose the one with the best score

        score = (Q(M') - Q(M)) / (C(M) - C(M'))      (exact rational arithmetic on the
                                                        binary64 qualities)

    ``KMR.policy.greedy-ties``: highest score first, then larger cost decrease, then earlier
    position in the candidate list. Stop when no candidate lowers cost. Without a quality meter
    every score is 0, so the largest cost decrease wins.

    ``KMR.policy.ladder-advance``: over a :class:`Ladder`, a rung that does not lower cost is passed
    over for the knob's next rung (same position in the list). The candidates are evaluated inside
    one ``analysis_scope`` (``KMR.rule.analysis-scope``); with a ``ReusingRule`` the policy keeps
    only its best candidate's output there for Algorithm 1 to reuse (``KMR.rule.reuse``).
    """

    candidates: Callable[[PolicyState[M]], Sequence[Proposal]]

    def __call__(self, state: PolicyState[M]) -> Proposal | Stop:
        tri = state.triple
        knobs = tri.knobs
        table: dict[str, Knob] = {}
        for k in knobs:
            table.setdefault(k.name, k)  # find_knob's choice: the first knob of that name
        reuse = tri.rule if isinstance(tri.rule, ReusingRule) else None
        advance = self.candidates.advance if isinstance(self.candidates, Ladder) else None
        best: tuple[Fraction, Exact, int] | None = None
        best_p: Proposal | None = None
        best_v: KnobValue | None = None
        with analysis_scope():  # KMR.rule.analysis-scope: nothing modifies state.model meanwhile
            for i, first in enumerate(self.candidates(state)):
                p: Proposal | None = first
                while p is not None:
                    knob = table.get(p.knob) or find_knob(knobs, p.knob)  # KMR.knob.unknown
                    v = knob.check(p.value)  # KMR.knob.domain, as Algorithm 1 line 6
                    m2 = tri.rule.apply(state.model, p.knob, v)
                    c2 = tri.cost(m2)
                    if c2 < state.cost:
                        break
                    # KMR.policy.ladder-advance: a rung that does not lower cost is passed over
                    p = advance(state, p) if advance is not None else None
                if p is not None:
                    dq = Fraction(0)
                    if tri.quality is not None and state.quality is not None:
                        dq = Fraction(tri.quality(m2)) - Fraction(state.quality)
                    dc = state.cost - c2
                    key = (dq / dc, dc, -i)  # KMR.policy.greedy-ties
                    if best is None or key > best:
                        best, best_p, best_v = key, p, v
                if reuse is not None:  # KMR.rule.reuse: the rule keeps the best candidate's output only
                    if best_p is None:
                        reuse.clear()
                    else:
                        reuse.retain(state.model, best_p.knob, best_v)  # type: ignore[arg-type]
        return best_p if best_p is not None else Stop("no candidate lowers cost")


def current_value(state: PolicyState[M], knob: str, default: KnobValue) -> KnobValue:
    """The value of ``knob`` in the last accepted record of the trace, else ``default``."""
    for r in reversed(state.history):
        if r.accepted and r.knob == knob:
            return r.value
    return default


@dataclass(frozen=True)
class Ladder:
    """``KMR.policy.ladder``: for each knob in ``knob_names`` (in that order), the next value of its
    grid in its more-aggressive direction after its current value (last accepted value, else the
    grid's least aggressive end); knobs already at the end of their grid propose nothing.

    ``KMR.policy.ladder-advance``: :meth:`advance` gives the knob's rung after a proposed one (the
    greedy policy uses it to pass over rungs that do not lower cost). Grids and next rungs are
    computed once per knob and value and kept."""

    knob_names: tuple[str, ...]
    _next_memo: dict[tuple[Knob, type, KnobValue], KnobValue | None] = field(
        default_factory=dict, compare=False, repr=False)
    _grids: dict[Knob, list[KnobValue]] = field(default_factory=dict, compare=False, repr=False)

    def _grid(self, knob: Knob) -> list[KnobValue]:
        g = self._grids.get(knob)  # keyed by the knob's value: bounded by the distinct knobs seen
        if g is None:
            g = self._grids[knob] = knob.grid() if knob.more_aggressive == "increasing" else knob.grid()[::-1]
        return g

    def _next(self, knob: Knob, cur: KnobValue) -> KnobValue | None:
        """The first grid value (least to most aggressive) strictly more aggressive than ``cur``."""
        key = (knob, type(cur), cur)
        if key in self._next_memo:
            return self._next_memo[key]
        inc = knob.more_aggressive == "increasing"
        nxt = [v for v in self._grid(knob) if (v > cur if inc else v < cur)]  # type: ignore[operator]
        out = self._next_memo[key] = nxt[0] if nxt else None  # grid is ordered least to most aggressive
        return out

    def __call__(self, state: PolicyState[Any]) -> list[Proposal]:
        knobs = state.triple.knobs
        table: dict[str, Knob] = {}
        for k in knobs:
            table.setdefault(k.name, k)
        last: dict[str, KnobValue] = {}  # current_value of every knob, in one pass over the trace
        for r in state.history:
            if r.accepted:
                last[r.knob] = r.value
        out: list[Proposal] = []
        for name in self.knob_names:
            knob = table.get(name) or find_knob(knobs, name)  # KMR.knob.unknown
            cur = last[name] if name in last else self._grid(knob)[0]
            nxt = self._next(knob, cur)
            if nxt is not None:
                out.append(Proposal(name, nxt))
        return out

    def advance(self, state: PolicyState[Any], p: Proposal) -> Proposal | None:
        """``KMR.policy.ladder-advance``: the rung of ``p.knob`` after ``p.value``, or None at the
        grid's end."""
        nxt = self._next(find_knob(state.triple.knobs, p.knob), p.value)
        return None if nxt is None else Proposal(p.knob, nxt)


def ladder_candidates(knob_names: Sequence[str]) -> Ladder:
    """``KMR.policy.ladder``: the :class:`Ladder` over ``knob_names`` (a candidate list: a
    function of the state)."""
    return Ladder(tuple(knob_names))
