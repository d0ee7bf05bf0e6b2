"""A policy that decides a whole per-knob assignment once, then proposes it one knob at a time
(``KMR.policy.plan``): the shared half of the allocation and TPE policies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from kmr_ref.core.errors import PolicyError
from kmr_ref.core.knobs import Knob, KnobValue, find_knob
from kmr_ref.core.policy import PolicyState, Proposal, Stop, current_value

M = TypeVar("M")


def knob_grid(knob: Knob) -> list[KnobValue]:
    """The knob's grid ordered from least to most aggressive (``KMR.policy.ladder``'s order)."""
    g = knob.grid()
    return g if knob.more_aggressive == "increasing" else g[::-1]


class PlannedPolicy(Generic[M]):
    """``KMR.policy.plan``: at its first call (a state with an empty history) the policy computes
    an assignment ``{knob: value}`` from that state (:meth:`plan`); each call then proposes, in the
    order of ``knob_names``, the first knob whose current value (``current_value``: last accepted,
    else the grid's least aggressive end) differs from its planned value, and ``Stop`` when none
    does. A first call with a non-empty history (a policy object reused mid-run) is refused."""

    def __init__(self, knob_names: Sequence[str]) -> None:
        if not knob_names or len(set(knob_names)) != len(knob_names):
            raise PolicyError("KMR.policy.plan", f"knob names must be distinct and non-empty, got {knob_names!r}")
        self.knob_names = tuple(knob_names)
        self.assignment: dict[str, KnobValue] | None = None

    def plan(self, state: PolicyState[M]) -> Mapping[str, KnobValue]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, state: PolicyState[M]) -> Proposal | Stop:
        if self.assignment is None:
            if state.history:  # KMR.policy.plan: the plan is made from M_0's state only
                raise PolicyError("KMR.policy.plan", "a planned policy must first be called at t = 0 "
                                                     "(use a fresh policy object for each run)")
            self.assignment = dict(self.plan(state))
        for name in self.knob_names:  # KMR.policy.plan: knob order
            knob = find_knob(state.triple.knobs, name)
            want = self.assignment[name]
            if current_value(state, name, knob_grid(knob)[0]) != want:
                return Proposal(name, want)
        return Stop("plan complete")
