"""Contracts of Proposition 1 on the Python code of Algorithm 1, for CrossHair.

CrossHair (``crosshair-tool``) executes ``kmr_ref.core.budgeted.budgeted_kmr`` itself on
symbolic integers (Z3-backed) and looks for inputs that break an ``assert``. ``p1_contract`` is
a contract in CrossHair's *asserts* style: the leading ``assert`` is the precondition, every
later one a postcondition, each naming the clause it checks.

The method under test: the model is a non-negative integer that is its own cost (integer-cost
meter), knob ``delta`` adds to it (floored at 0), the policy proposes ``d0, d1, d2, d3`` in turn,
returns Stop at iteration ``stop_at`` and raises KeyboardInterrupt at iteration ``intr_at``.
Costs, budget and deltas are unbounded integers; N <= 4 bounds the number of paths, so CrossHair
can explore every path and *confirm* the contract for that bounded domain.

``IMPL`` is the implementation under test; the CrossHair runner swaps in source-level mutants
of ``budgeted.py`` to show that each contract can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kmr_ref.core import (
    ComposedResult,
    CostMeter,
    Exact,
    IntRange,
    KMRResult,
    KMRTriple,
    Knob,
    Phase,
    PolicyState,
    Proposal,
    Status,
    Stop,
    budgeted_kmr,
    composed_kmr,
)
from kmr_ref.core.knobs import KnobValue

IMPL: Callable[..., KMRResult[int]] = budgeted_kmr
BIG = 10**9


@dataclass(frozen=True)
class _Add:
    def knobs(self) -> Sequence[Knob]:
        return (Knob("delta", IntRange(-BIG, BIG)),)

    def apply(self, model: int, knob: str, value: KnobValue) -> int:
        assert isinstance(value, int)
        return max(0, model + value)


def _cost(m: int) -> int:
    return m


def _run(c0: int, ds: tuple[int, ...], budget: int, n: int, stop_at: int, intr_at: int) -> KMRResult[int]:
    triple: KMRTriple[int] = KMRTriple("add", _Add(), CostMeter("value", _cost))

    def policy(st: PolicyState[Any]) -> Proposal | Stop:
        if st.t == intr_at:
            raise KeyboardInterrupt
        if st.t == stop_at or st.t >= len(ds):
            return Stop()
        return Proposal("delta", ds[st.t])

    return IMPL(c0, triple, policy, budget, n)


def p1_contract(c0: int, d0: int, d1: int, d2: int, d3: int, budget: int, n: int,
                stop_at: int, intr_at: int) -> None:
    """Proposition 1 on the code. One exploration checks every part; each assert names its
    clause, so a counterexample says which part failed."""
    assert c0 >= 0 and 0 <= n <= 4 and all(-BIG <= d <= BIG for d in (d0, d1, d2, d3))
    res = _run(c0, (d0, d1, d2, d3), budget, n, stop_at, intr_at)
    acc = [r for r in res.trace if r.accepted]
    rejected = [r for r in res.trace if not r.accepted]
    prev: Exact = c0
    for r in acc:
        assert r.cost_before == prev and r.cost_after < prev, "KMR.prop1.monotone"
        prev = r.cost_after
    assert res.cost_final <= c0, "KMR.prop1.monotone"
    assert len(acc) <= n, "KMR.prop1.termination"
    assert [r.t for r in res.trace] == list(range(len(res.trace))), "KMR.prop1.termination"
    assert (res.status == Status.FEASIBLE) == (res.cost_final <= budget), "KMR.prop1.status-truthful"
    if res.status == Status.STALLED:
        last = res.trace[-1]
        assert not last.accepted and last.cost_after >= last.cost_before == res.cost_final > budget, \
            "KMR.prop1.status-truthful"
    if res.status == Status.STEP_LIMIT:
        assert len(acc) == n and not rejected and res.cost_final > budget, "KMR.prop1.status-truthful"
    if res.status == Status.POLICY_STOP:
        assert not rejected and res.cost_final > budget, "KMR.prop1.status-truthful"
    assert len(rejected) <= 1 and (not rejected or not res.trace[-1].accepted), "KMR.prop1.status-truthful"
    assert len(acc) <= c0 - res.cost_final, "KMR.prop1.integer-bound"
    last_cost = acc[-1].cost_after if acc else c0
    assert res.model == last_cost and res.cost_final == last_cost, "KMR.prop1.last-accepted"


CLAUSES = ("KMR.prop1.monotone", "KMR.prop1.termination", "KMR.prop1.status-truthful",
           "KMR.prop1.integer-bound", "KMR.prop1.last-accepted")

# source-level mutants of kmr_ref/core/budgeted.py: (old text, new text, the clause that must fail)
CODE_MUTANTS: dict[str, tuple[str, str, str]] = {
    "drop-strict": ("if c_new < c_cur:", "if True:", "KMR.prop1.monotone"),
    "off-by-one-N": ("if t >= N:", "if t > N:", "KMR.prop1.termination"),
    # fails the code's own `assert status is not None` (KMR.alg1.status) or P1c
    "feasible-lt": ("if c_cur <= B:", "if c_cur < B:", "KMR.prop1.status-truthful"),
    # fails P1a (equal accepted costs) before P1d is reached
    "le-for-lt": ("if c_new < c_cur:", "if c_new <= c_cur:", "KMR.prop1.integer-bound"),
    "keep-rejected": ("status = Status.STALLED", "m_cur = m_new; status = Status.STALLED",
                      "KMR.prop1.last-accepted"),
}


# ---------------------------------------------------------------- Algorithm 10 (compose.py)

IMPL10: Callable[..., ComposedResult[int]] = composed_kmr


def _run10(c0: int, tables: tuple[tuple[int, ...], ...], budget: int, n: int, intr_at: int) -> ComposedResult[int]:
    calls = [0]
    phases: list[Phase[int]] = []
    for k, ds in enumerate(tables):
        def policy(state: PolicyState[Any], ds: tuple[int, ...] = ds) -> Proposal | Stop:
            st = state
            j = calls[0]
            calls[0] += 1
            if j == intr_at:
                raise KeyboardInterrupt
            return Proposal("delta", ds[st.t]) if st.t < len(ds) else Stop()
        phases.append(Phase(f"p{k}", _Add(), policy))
    return IMPL10(c0, phases, CostMeter("value", _cost), budget, n)


def p10_contract(c0: int, a0: int, b0: int, b1: int, budget: int, n: int, intr_at: int) -> None:
    """``KMR.alg10.prop1`` and ``KMR.alg10.phase-run`` on the code of Algorithm 10: two phases
    (one proposal, then two; unbounded integer deltas), N <= 2, an interrupt at any policy call.
    Each assert names its clause."""
    assert c0 >= 0 and 0 <= n <= 2 and all(-BIG <= d <= BIG for d in (a0, b0, b1))
    out = _run10(c0, ((a0,), (b0, b1)), budget, n, intr_at)
    res = out.result
    acc = [r for r in res.trace if r.accepted]
    prev: Exact = c0
    for r in acc:
        assert r.cost_before == prev and r.cost_after < prev, "KMR.alg10.phase-run"  # carried model
        prev = r.cost_after
    assert len(acc) <= n, "KMR.alg10.prop1"
    assert (res.status == Status.FEASIBLE) == (res.cost_final <= budget), "KMR.alg10.status"
    if res.status == Status.STEP_LIMIT:
        assert len(acc) == n and res.cost_final > budget, "KMR.alg10.status"
    if len(acc) == n and res.cost_final > budget and res.status != Status.INTERRUPTED:
        assert res.status == Status.STEP_LIMIT, "KMR.alg10.status"
    assert len(acc) <= c0 - res.cost_final, "KMR.alg10.prop1"
    assert res.model == prev and res.cost_final == prev, "KMR.alg10.prop1"
    assert sum(p.steps for p in out.phases) == len(res.trace) == len(out.phase_of_record), "KMR.alg10.phase-trace"
    ran = [p for p in out.phases if p.steps or p.status != Status.INTERRUPTED]
    if ran and res.status not in (Status.FEASIBLE, Status.STEP_LIMIT, Status.INTERRUPTED):
        assert res.status == ran[-1].status, "KMR.alg10.status"


CLAUSES10 = ("KMR.alg10.prop1", "KMR.alg10.phase-run", "KMR.alg10.status", "KMR.alg10.phase-trace")

# source-level mutants of kmr_ref/core/compose.py
CODE_MUTANTS10: dict[str, tuple[str, str, str]] = {
    "phase-limit-N": ("max_steps - acc.used,  # KMR.alg10.phase-run", "max_steps,  # KMR.alg10.phase-run",
                      "KMR.alg10.prop1"),
    "no-carry": ("res = budgeted_kmr(acc.model,", "res = budgeted_kmr(model,", "KMR.alg10.phase-run"),
    "status-first": ("status = res.status  # KMR.alg10.phase-break",
                     "status = res.status if i == 0 else status  # KMR.alg10.phase-break", "KMR.alg10.status"),
    "no-step-limit-rule": ("elif acc.used >= max_steps and", "elif False and", "KMR.alg10.status"),
    "feasible-lt": ("if acc.cost <= B:  # KMR.alg10.status", "if acc.cost < B:  # KMR.alg10.status",
                    "KMR.alg10.status"),
}
