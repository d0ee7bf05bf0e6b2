"""The trace of a Budgeted-KMR run (``KMR.trace.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import KnobValue

M = TypeVar("M")


class Status(StrEnum):
    """``KMR.alg1.status``: why Algorithm 1 stopped."""

    FEASIBLE = "feasible"  # C(M_out) <= B
    STALLED = "stalled"  # the proposal did not strictly lower cost (the paper's early break)
    STEP_LIMIT = "step-limit"  # t = N while C > B
    POLICY_STOP = "policy-stop"  # the policy returned Stop while C > B
    INTERRUPTED = "interrupted"  # ours: KeyboardInterrupt; the last accepted model is returned


@dataclass(frozen=True)
class StepRecord:
    """``KMR.trace.record``: one iteration of the loop."""

    t: int
    knob: str
    value: KnobValue
    cost_before: Exact
    cost_after: Exact
    quality: float | None
    accepted: bool
    reason: str  # "accepted" | "not-strictly-lower"
    budget: Exact | None = None  # KMR.trace.budget: B_t in force at this iteration (changing budgets only)

    def to_json(self) -> dict[str, Any]:
        d = {
            "t": self.t, "knob": self.knob, "value": json_value(self.value),
            "cost_before": json_value(self.cost_before), "cost": json_value(self.cost_after),
            "quality": self.quality, "accepted": self.accepted, "reason": self.reason,
        }
        if self.budget is not None:  # KMR.trace.budget: a fixed budget's records are unchanged
            d["budget"] = json_value(self.budget)
        return d


@dataclass(frozen=True)
class KMRResult(Generic[M]):
    """``KMR.alg1.return``: the last accepted model, the status and the trace."""

    model: M
    status: Status
    trace: tuple[StepRecord, ...]
    budget: Exact
    cost_initial: Exact
    cost_final: Exact
    quality_initial: float | None
    quality_final: float | None

    @property
    def accepted_steps(self) -> int:
        return sum(1 for r in self.trace if r.accepted)


def json_value(v: object) -> Any:
    """Exact values as JSON: ints stay ints, Fractions become ``"p/q"`` strings (no rounding)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v
    return str(v)
