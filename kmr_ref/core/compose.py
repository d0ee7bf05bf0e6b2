"""Algorithm 10, Composed-KMR (paper §6): methods chained in phases under Algorithm 1's
acceptance logic, one shared cost meter, one step limit for the whole pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from kmr_ref.core.budgeted import attach_partial, budgeted_kmr, clear_partial
from kmr_ref.core.errors import BudgetError, MeterError
from kmr_ref.core.exact import Exact, to_exact
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
    try:  # KMR.alg1.after-loop: up to the first measurement there is no result to carry
        cost = as_cost_meter(cost)  # KMR.meter.cost-exact, also for a plain callable
        quality = None if quality is None else as_quality_meter(quality)
        B = to_exact(budget, clause="KMR.alg1.validate", error=BudgetError, what="budget B")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
            raise BudgetError("KMR.alg1.validate", f"step limit N must be an int >= 0, got {max_steps!r}")
        c0 = cost(model)  # KMR.alg10.init
        q0 = quality(model) if quality is not None else None
        acc = _Acc(model, c0, q0, 0, (), ())  # replaced by one store: an interrupt never splits it
        outcomes: list[PhaseOutcome] = []
        status = Status.FEASIBLE if c0 <= B else Status.POLICY_STOP
    except BaseException as e:
        clear_partial(e)
        raise
    try:  # KMR.alg1.after-loop: an interrupt or error between phases carries the pipeline so far
        for i, ph in enumerate(phases):  # KMR.alg10.phases
            if acc.cost <= B or acc.used >= max_steps:  # KMR.alg10.skip
                break
            tri = KMRTriple(ph.name, ph.rule, cost, quality)  # KMR.alg10.shared-cost
            res: KMRResult[M] | None = None
            merged, n_out = False, len(outcomes)  # what the handlers must still do for this phase
            tagged = _tagged(on_record, ph.name, acc.used)
            try:
                res = budgeted_kmr(acc.model, tri, ph.policy, B, max_steps - acc.used,  # KMR.alg10.phase-run
                                   on_record=tagged)
                if res.cost_initial != acc.cost:  # KMR.meter.deterministic: its start model, measured twice
                    raise MeterError("KMR.meter.deterministic", f"phase {ph.name!r}: cost meter {cost.name!r} "
                                     f"measured the same model as {acc.cost}, then as {res.cost_initial}")
                acc, merged = acc.merged(ph.name, res), True  # KMR.alg10.phase-trace (one statement)
                outcomes.append(PhaseOutcome(ph.name, res.status, len(res.trace)))  # then len(outcomes) > n_out
                status = res.status  # KMR.alg10.phase-break: stalled / policy-stop end this phase only
            except BaseException as e:  # KMR.alg1.interrupt / KMR.alg1.error outside the phase's own loop
                part = getattr(e, "kmr_partial", None)  # budgeted_kmr's own (it clears a foreign one)
                if res is None and isinstance(part, KMRResult):  # after the phase's loop (KMR.alg1.after-loop)
                    res = part
                if res is not None and not merged:  # the phase so far is kept: no record lost
                    acc = acc.merged(ph.name, res)
                if not isinstance(e, KeyboardInterrupt):
                    raise  # KMR.alg1.error: propagates; the handler below attaches the pipeline so far
                if res is None:  # while the phase measured its start model: as at its loop head
                    outcomes.append(PhaseOutcome(ph.name, Status.INTERRUPTED, 0))
                    status = Status.INTERRUPTED
                    break
                # after the phase ended: keep it whole; the next phase that would run is interrupted
                # at its loop head (none would: the pipeline is simply over)
                if len(outcomes) == n_out:
                    outcomes.append(PhaseOutcome(ph.name, res.status, len(res.trace)))
                status = res.status
                if (i + 1 < len(phases) and acc.cost > B and acc.used < max_steps
                        and res.status is not Status.INTERRUPTED):
                    outcomes.append(PhaseOutcome(phases[i + 1].name, Status.INTERRUPTED, 0))
                    status = Status.INTERRUPTED
                break
            if status is Status.INTERRUPTED:
                break
        if acc.cost <= B:  # KMR.alg10.status
            status = Status.FEASIBLE
        elif acc.used >= max_steps and status is not Status.INTERRUPTED:
            status = Status.STEP_LIMIT
        result = KMRResult(acc.model, status, acc.trace, B, c0, acc.cost, q0, acc.quality)
        return ComposedResult(result, tuple(outcomes), acc.owners)  # KMR.alg10.return
    except BaseException as e:  # KMR.alg1.after-loop: always the pipeline so far (a foreign partial is replaced)
        attach_partial(e, KMRResult(acc.model, Status.INTERRUPTED, acc.trace, B, c0, acc.cost, q0, acc.quality))
        raise


@dataclass(frozen=True)
class _Acc(Generic[M]):
    """The pipeline so far: last accepted model, its cost and quality, steps used, trace, owners."""

    model: M
    cost: Exact
    quality: float | None
    used: int
    trace: tuple[StepRecord, ...]
    owners: tuple[str, ...]

    def merged(self, name: str, res: KMRResult[M]) -> _Acc[M]:
        return _Acc(res.model, res.cost_final, res.quality_final, self.used + res.accepted_steps,
                    self.trace + tuple(replace(r, t=r.t + self.used) for r in res.trace),
                    self.owners + (name,) * len(res.trace))


def _tagged(cb: Callable[[str, StepRecord], None] | None, name: str,
            offset: int) -> Callable[[StepRecord], None] | None:
    """Stream a phase's records with the phase name and the pipeline-wide t."""
    if cb is None:
        return None

    def inner(r: StepRecord) -> None:
        cb(name, replace(r, t=r.t + offset))

    return inner
