"""Algorithm 1, Budgeted-KMR (paper §4), line by line. Each line carries its spec ID."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, TypeVar

from kmr_ref.core.errors import BudgetError, MeterError, PolicyError
from kmr_ref.core.exact import Exact, to_exact
from kmr_ref.core.knobs import find_knob
from kmr_ref.core.policy import Policy, PolicyState, Proposal, Stop
from kmr_ref.core.rules import KMRTriple
from kmr_ref.core.trace import KMRResult, Status, StepRecord

M = TypeVar("M")


def attach_partial(e: BaseException, partial: KMRResult[M] | None) -> None:
    """``KMR.alg1.error``: the result so far rides on the exception as ``e.kmr_partial``, with the
    status an interrupt at that point would give (``interrupted``; ``feasible`` when C(M) <= B);
    None: there is no result so far."""
    if partial is not None and partial.cost_final <= partial.budget:  # as line 13 of Algorithm 1 would
        partial = dataclasses.replace(partial, status=Status.FEASIBLE)
    with contextlib.suppress(AttributeError, TypeError):  # exceptions that refuse attributes
        e.kmr_partial = partial  # type: ignore[attr-defined]


def clear_partial(e: BaseException) -> None:
    """``KMR.alg1.after-loop``: an interrupt or error before the loop has no result to carry; a
    ``kmr_partial`` it brought from elsewhere (e.g. a nested run inside a meter) is not this run's
    and is set to None, so that no caller takes it for this run's result."""
    if getattr(e, "kmr_partial", None) is not None:
        attach_partial(e, None)


@dataclass(frozen=True)
class BudgetState(Generic[M]):
    """``KMR.budget.schedule``: what a budget callable is shown when the loop reads the budget
    of iteration t: the current (last accepted) model, its cost and quality, and the trace so far."""

    t: int
    model: M
    cost: Exact
    quality: float | None
    history: tuple[StepRecord, ...]


class _Schedule(Generic[M]):
    """``KMR.budget.schedule``: a budget that changes between steps, given as a callable of the
    :class:`BudgetState` or as an iterator of budgets (once exhausted, its last budget stays in force)."""

    def __init__(self, source: object) -> None:
        self.source = source

    def read(self, st: BudgetState[M], current: Exact | None) -> Exact:
        if isinstance(self.source, Iterator):
            try:
                raw: object = next(self.source)
            except StopIteration:
                if current is None:
                    raise BudgetError("KMR.budget.schedule", "the budget stream is empty: "
                                                             "no budget for iteration 0") from None
                return current  # KMR.budget.schedule: an exhausted stream keeps its last budget
        else:
            assert callable(self.source)
            raw = self.source(st)
        return to_exact(raw, clause="KMR.budget.schedule", error=BudgetError, what=f"budget B_{st.t}")


def budgeted_kmr(
    model: M,
    triple: KMRTriple[M],
    policy: Policy[M],
    budget: object,
    max_steps: int,
    *,
    on_record: Callable[[StepRecord], None] | None = None,
) -> KMRResult[M]:
    """Run Budgeted-KMR: apply ``policy``'s proposals while cost > ``budget``.

    ``budget`` is an exact number, or (``KMR.budget.schedule``) a budget that changes between
    steps: a callable of the :class:`BudgetState`, or an iterator of budgets (``iter([...])``), read once per
    evaluation of the loop guard (``KMR.budget.read``); each record then carries the budget in
    force at its iteration, and the result's ``budget`` is the one in force at exit.

    Returns the last accepted model (never a rejected proposal), the exit status and the trace.
    ``on_record`` is called with each trace record as soon as it exists (for streaming logs).
    The policy, the rule, the meters and ``on_record`` must return (``KMR.alg1.callbacks-return``);
    the meters must be deterministic and nothing may modify the models it is shown
    (``KMR.meter.deterministic``, ``KMR.policy.no-mutation``; ``kmr_ref.core.checked`` checks both).
    """
    try:  # KMR.alg1.after-loop: up to the loop there is no result to carry
        # KMR.alg1.validate: B exact (KMR.budget.def, KMR.exact.binary64 for floats), N a non-negative int
        # KMR.budget.schedule (a list is refused); a plain number is tested first, so a fixed budget takes
        # no other branch (CrossHair explores budgeted_kmr with a symbolic int budget)
        changing = not isinstance(budget, int | float | Fraction) and (callable(budget) or isinstance(budget, Iterator))
        schedule = _Schedule[M](budget) if changing else None
        B: Exact = 0 if schedule is not None else to_exact(budget, clause="KMR.alg1.validate", error=BudgetError,
                                                           what="budget B")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
            raise BudgetError("KMR.alg1.validate", f"step limit N must be an int >= 0, got {max_steps!r}")
        N = max_steps
        Q = triple.quality
        m_cur, c_cur = model, triple.cost(model)  # KMR.alg1.init
        q_cur = Q(model) if Q is not None else None
        rb: Exact | None = None  # KMR.trace.budget: the budget a record shows (None for a fixed budget)
        if schedule is not None:  # KMR.budget.read: B_0, before any rule runs
            B = rb = schedule.read(BudgetState(0, model, c_cur, q_cur, ()), None)
        q0 = q_cur
        c0 = c_cur
        t = 0
        trace: list[StepRecord] = []
        status: Status | None = None
    except BaseException as e:
        clear_partial(e)
        raise
    try:  # one handler outside the loop's: nothing accepted is lost after the loop either
        try:
            while c_cur > B:  # KMR.alg1.loop-guard
                if t >= N:  # KMR.alg1.step-limit
                    status = Status.STEP_LIMIT
                    break
                p = policy(PolicyState(m_cur, c_cur, q_cur, t, B, triple, tuple(trace)))  # KMR.alg1.propose
                if isinstance(p, Stop):  # KMR.alg1.policy-stop
                    status = Status.POLICY_STOP
                    break
                if not isinstance(p, Proposal):
                    raise PolicyError("KMR.policy.proposal", f"policy returned {type(p).__name__}")
                v = find_knob(triple.knobs, p.knob).check(p.value)  # KMR.alg1.knob-domain
                m_new = triple.rule.apply(m_cur, p.knob, v)  # KMR.alg1.apply
                c_new = triple.cost(m_new)  # KMR.alg1.measure
                q_new = Q(m_new) if Q is not None else None
                if c_new < c_cur:  # KMR.alg1.strict-progress
                    trace.append(StepRecord(t, p.knob, v, c_cur, c_new, q_new, True, "accepted", rb))
                    m_cur, c_cur, q_cur = m_new, c_new, q_new  # KMR.alg1.accept
                    rec = trace[-1]
                    if on_record is not None:
                        on_record(rec)
                else:
                    rec = StepRecord(t, p.knob, v, c_cur, c_new, q_new, False, "not-strictly-lower", rb)
                    trace.append(rec)
                    if on_record is not None:
                        on_record(rec)
                    status = Status.STALLED  # KMR.alg1.early-break
                    break
                t += 1  # KMR.alg1.step
                if schedule is not None:  # KMR.budget.read: B_t, for the loop guard of iteration t
                    B = rb = schedule.read(BudgetState(t, m_cur, c_cur, q_cur, tuple(trace)), B)
        except BaseException as e:  # KMR.alg1.interrupt / KMR.alg1.error
            if trace and trace[-1].accepted and trace[-1].cost_after != c_cur:
                m_cur, c_cur, q_cur = m_new, c_new, q_new  # interrupted between recording and accepting
            if not isinstance(e, KeyboardInterrupt):
                raise  # KMR.alg1.error: propagates; the handler below attaches what was accepted so far
            status = Status.INTERRUPTED
        if status is not Status.INTERRUPTED and triple.cost(m_cur) != c_cur:  # KMR.meter.deterministic
            raise MeterError("KMR.meter.deterministic", f"cost meter {triple.cost.name!r} measured the "
                                                        f"returned model as {c_cur}, then differently")
        if c_cur <= B:  # KMR.alg1.feasible
            status = Status.FEASIBLE
        assert status is not None
        return KMRResult(m_cur, status, tuple(trace), B, c0, c_cur, q0, q_cur)  # KMR.alg1.return
    except BaseException as e:  # KMR.alg1.after-loop: an interrupt or error after the loop carries the result
        # (always ours: a partial the error brought from elsewhere, e.g. a nested run in a meter,
        # is not this run's; one the loop's handler attached holds these same values)
        attach_partial(e, KMRResult(m_cur, Status.INTERRUPTED, tuple(trace), B, c0, c_cur, q0, q_cur))
        raise
