"""Policies: map the state to the next (knob, value) or Stop (``KMR.policy.*``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, Protocol, TypeVar

from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import KnobValue, find_knob
from kmr_ref.core.rules import KMRTriple
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
    """

    candidates: Callable[[PolicyState[M]], Sequence[Proposal]]

    def __call__(self, state: PolicyState[M]) -> Proposal | Stop:
        tri = state.triple
        best: tuple[Fraction, Exact, int] | None = None
        best_p: Proposal | None = None
        for i, p in enumerate(self.candidates(state)):
            v = find_knob(tri.knobs, p.knob).check(p.value)  # KMR.knob.domain, as Algorithm 1 line 6
            m2 = tri.rule.apply(state.model, p.knob, v)
            c2 = tri.cost(m2)
            if not c2 < state.cost:
                continue
            dq = Fraction(0)
            if tri.quality is not None and state.quality is not None:
                dq = Fraction(tri.quality(m2)) - Fraction(state.quality)
            dc = state.cost - c2
            key = (dq / dc, dc, -i)  # KMR.policy.greedy-ties
            if best is None or key > best:
                best, best_p = key, p
        return best_p if best_p is not None else Stop("no candidate lowers cost")


def current_value(state: PolicyState[M], knob: str, default: KnobValue) -> KnobValue:
    """The value of ``knob`` in the last accepted record of the trace, else ``default``."""
    for r in reversed(state.history):
        if r.accepted and r.knob == knob:
            return r.value
    return default


def ladder_candidates(knob_names: Sequence[str]) -> Callable[[PolicyState[M]], list[Proposal]]:
    """``KMR.policy.ladder``: for each knob in ``knob_names`` (in that order), the next value of its
    grid in its more-aggressive direction after its current value (last accepted value, else the
    grid's least aggressive end); knobs already at the end of their grid propose nothing."""

    def candidates(state: PolicyState[M]) -> list[Proposal]:
        out: list[Proposal] = []
        for name in knob_names:
            knob = find_knob(state.triple.knobs, name)
            grid = knob.grid() if knob.more_aggressive == "increasing" else knob.grid()[::-1]
            cur = current_value(state, name, grid[0])
            nxt = [v for v in grid if (v > cur if knob.more_aggressive == "increasing" else v < cur)]  # type: ignore[operator]
            if nxt:
                out.append(Proposal(name, nxt[0]))  # grid is ordered least to most aggressive
        return out

    return candidates
