"""Algorithm 10, Composed-KMR (paper §6): methods chained in phases under Algorithm 1's
acceptance logic, one shared cost meter, one step limit for the whole pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from kmr_ref.core.budgeted import attach_partial, budgeted_kmr
from kmr_ref.core.errors import BudgetError
from kmr_ref.core.exact import to_exact
from kmr_ref.core.meters import CostMeter, QualityMeter, as_cost_meter, as_quality_meter
from kmr_ref.core.policy import Policy
from kmr_ref.core.rules import KMRTriple, Rule
from kmr_ref.core.trace import KMRResult, Status, StepRecord

M = TypeVar("M")


@dataclass(frozen=True)
class Phase(Generic[M]):
    """One method of the pipeline: its rule and the policy that drives it."""

    name: str
    rule: Rule[M]
    policy: Policy[M]


@dataclass(frozen=True)
class PhaseOutcome:
    name: str
    status: Status
    steps: int  # records this phase added to the trace (accepted + at most one rejected)


@dataclass(frozen=True)
class ComposedResult(Generic[M]):
    result: KMRResult[M]  # model, overall status, whole trace (t global), costs
    phases: tuple[PhaseOutcome, ...]  # phases that ran, in order
    phase_of_record: tuple[str, ...]  # the phase name of each trace record


def composed_kmr(
    model: M,
    phases: Sequence[Phase[M]],
    cost: CostMeter[M],
    budget: object,
    max_steps: int,
    *,
    quality: QualityMeter[M] | None = None,
    on_record: Callable[[str, StepRecord], None] | None = None,
) -> ComposedResult[M]:
    """Run the phases in order, each as Algorithm 1 from the last accepted model."""
    cost = as_cost_meter(cost)  # KMR.meter.cost-exact, also for a plain callable
    quality = None if quality is None else as_quality_meter(quality)
    B = to_exact(budget, clause="KMR.alg1.validate", error=BudgetError, what="budget B")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise BudgetError("KMR.alg1.validate", f"step limit N must be an int >= 0, got {max_steps!r}")
    m_cur, c0 = model, cost(model)  # KMR.alg10.init
    q0 = quality(model) if quality is not None else None
    c_cur, q_cur, used = c0, q0, 0
    trace: list[StepRecord] = []
    owners: list[str] = []
    outcomes: list[PhaseOutcome] = []
    status = Status.FEASIBLE if c_cur <= B else Status.POLICY_STOP
    for ph in phases:  # KMR.alg10.phases
        if c_cur <= B or used >= max_steps:  # KMR.alg10.skip
            break
        tri = KMRTriple(ph.name, ph.rule, cost, quality)  # KMR.alg10.shared-cost
        try:
            res = budgeted_kmr(m_cur, tri, ph.policy, B, max_steps - used,  # KMR.alg10.phase-run
                               on_record=_tagged(on_record, ph.name, used))
        except KeyboardInterrupt:  # KMR.alg1.interrupt while the phase measures its start model:
            outcomes.append(PhaseOutcome(ph.name, Status.INTERRUPTED, 0))  # = at its loop head
            status = Status.INTERRUPTED
            break
        except Exception as e:  # KMR.alg1.error for the whole pipeline
            part = getattr(e, "kmr_partial", None)
            if isinstance(part, KMRResult):
                steps = trace + [replace(r, t=r.t + used) for r in part.trace]
                attach_partial(e, KMRResult(part.model, Status.INTERRUPTED, tuple(steps), B, c0,
                                            part.cost_final, q0, part.quality_final))
            raise
        for r in res.trace:  # KMR.alg10.phase-trace
            trace.append(replace(r, t=r.t + used))
            owners.append(ph.name)
        used += res.accepted_steps
        m_cur, c_cur, q_cur = res.model, res.cost_final, res.quality_final
        outcomes.append(PhaseOutcome(ph.name, res.status, len(res.trace)))
        status = res.status  # KMR.alg10.phase-break: stalled / policy-stop end this phase only
        if status is Status.INTERRUPTED:
            break
    if c_cur <= B:  # KMR.alg10.status
        status = Status.FEASIBLE
    elif used >= max_steps and status is not Status.INTERRUPTED:
        status = Status.STEP_LIMIT
    result = KMRResult(m_cur, status, tuple(trace), B, c0, c_cur, q0, q_cur)
    return ComposedResult(result, tuple(outcomes), tuple(owners))  # KMR.alg10.return


def _tagged(cb: Callable[[str, StepRecord], None] | None, name: str,
            offset: int) -> Callable[[StepRecord], None] | None:
    """Stream a phase's records with the phase name and the pipeline-wide t."""
    if cb is None:
        return None

    def inner(r: StepRecord) -> None:
        cb(name, replace(r, t=r.t + offset))

    return inner
