"""Proof <-> code: replay a run of the Python reference through the transition relation.

``replay`` takes a :class:`kmr_ref.core.KMRResult` (trace, status, costs, budget) and the step
limit N and asks Z3 whether SOME run of the Algorithm 1 encoding (``alg1.py``) produces exactly
this observation: the initial cost, every record (``t``, ``cost_before``, ``cost_after``,
``accepted``) at the transition that appends it, and at the return the status, the final cost
and the number of records. Every recorded step must be a legal transition; a tampered trace
must be rejected (``tamper`` builds tampered copies that Proposition 1 makes illegal).

``Case`` / ``run_case`` / ``random_case`` make runs of ``kmr_ref.core.budgeted_kmr`` on a toy
method whose model is its own (integer or rational) cost: knob ``delta`` moves it, a scheduled
or greedy policy proposes, and an interrupt may be raised from the policy (the HEAD location)
or from ``on_record`` (right after a record is appended: the STEP and REJ locations).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import z3

from kmr_proofs.alg1 import (
    HEAD,
    REJ,
    RET,
    STATUS_NAMES,
    STEP,
    Alg1Options,
    V,
    alg1_system,
)
from kmr_proofs.ts import Expr
from kmr_ref.core import (
    CostMeter,
    Exact,
    GreedyPolicy,
    KMRResult,
    KMRTriple,
    Knob,
    PolicyState,
    Proposal,
    RealInterval,
    ScheduledPolicy,
    Status,
    StepRecord,
    Stop,
    budgeted_kmr,
)
from kmr_ref.core.knobs import KnobValue


@dataclass(frozen=True)
class Verdict:
    legal: bool
    failed_at: str = ""  # which recorded step (or the ending) is not a legal transition


def _num(x: Exact, integer: bool) -> Expr:
    q = Fraction(x)
    if integer:
        return z3.IntVal(int(q))
    return z3.RealVal(f"{q.numerator}/{q.denominator}")


def replay(result: KMRResult[Any], max_steps: int) -> Verdict:
    """Is ``result`` (of ``budgeted_kmr(..., max_steps)``) a run of the encoding?"""
    costs = [result.cost_initial, result.cost_final] + [
        c for r in result.trace for c in (r.cost_before, r.cost_after)]
    integer = all(Fraction(c).denominator == 1 for c in costs)
    sys = alg1_system(Alg1Options(integer_costs=integer))
    solver = z3.Solver()
    solver.set("timeout", 10000)

    def num(x: Exact) -> Expr:
        return _num(x, integer)

    s = sys.state("r0")
    # one list of (where, constraints) per observed step; checked at once, diagnosed on failure
    steps: list[tuple[str, list[Expr]]] = [("initial state", [
        sys.init(s), s[V.B] == _num(result.budget, False), s[V.N] == max_steps,
        s[V.c0] == num(result.cost_initial)])]
    n = len(result.trace)
    for j, r in enumerate(result.trace):
        i, s2 = sys.input(f"r{j}"), sys.state(f"r{j}")
        obs = [sys.trans(s, i, s2), sys.assume(s, i), s2[V.nrec] == j + 1, s2[V.rec_t] == r.t]
        if r.accepted:
            obs += [s2[V.pc] == STEP, s2[V.acc_before] == num(r.cost_before),
                    s2[V.acc_after] == num(r.cost_after)]
        else:
            obs += [s2[V.pc] == REJ, s2[V.rej_before] == num(r.cost_before),
                    s2[V.rej_after] == num(r.cost_after)]
        steps.append((f"record {j} ({'accepted' if r.accepted else 'rejected'}, t={r.t}, "
                      f"cost {r.cost_before} -> {r.cost_after})", obs))
        s = s2
        if r.accepted and j < n - 1:  # line 12, then back to the loop guard
            i, s2 = sys.input(f"r{j}s"), sys.state(f"r{j}s")
            steps.append((f"t <- t + 1 after record {j}", [sys.trans(s, i, s2), s2[V.pc] == HEAD]))
            s = s2
    for _, cs in steps:
        solver.add(*cs)
    code = STATUS_NAMES.index(str(result.status))
    for tail in (2, 3):  # to RET: [step,] exit, feasibility check
        solver.push()
        cur = s
        for k in range(tail):
            i, s2 = sys.input(f"tail{k}"), sys.state(f"tail{k}")
            solver.add(sys.trans(cur, i, s2), sys.assume(cur, i))
            cur = s2
        solver.add(cur[V.pc] == RET, cur[V.status] == code, cur[V.c] == num(result.cost_final),
                   cur[V.nrec] == n)
        r_ = solver.check()
        solver.pop()
        if r_ == z3.sat:
            return Verdict(True)
    # illegal: find the first observed step that no run can take
    diag = z3.Solver()
    for where, cs in steps:
        diag.add(*cs)
        if diag.check() != z3.sat:
            return Verdict(False, where)
    return Verdict(False, f"ending (status {result.status}, final cost {result.cost_final}, {n} records)")


# ---------------------------------------------------------------- runs of the Python reference

@dataclass(frozen=True)
class Case:
    """One run of ``budgeted_kmr`` on the toy method (model = its own cost)."""

    c0: Exact
    deltas: tuple[Exact, ...]  # the scheduled proposals (or greedy candidates)
    budget: Exact
    max_steps: int
    greedy: bool = False
    interrupt_policy_call: int | None = None  # KeyboardInterrupt at this policy call (HEAD)
    interrupt_record: int | None = None  # KeyboardInterrupt from on_record after this record


@dataclass(frozen=True)
class _ShiftRule:
    lo: Fraction
    hi: Fraction

    def knobs(self) -> Sequence[Knob]:
        return (Knob("delta", RealInterval(self.lo, self.hi)),)

    def apply(self, model: Exact, knob: str, value: KnobValue) -> Exact:
        assert not isinstance(value, str)
        out = model + value
        return max(Fraction(0), Fraction(out)) if isinstance(out, Fraction) else max(0, out)


def _cost(m: Exact) -> Exact:
    return m


def run_case(case: Case) -> KMRResult[Exact]:
    span = max([abs(Fraction(d)) for d in case.deltas] + [Fraction(1)])
    triple: KMRTriple[Exact] = KMRTriple("shift", _ShiftRule(-span, span), CostMeter("value", _cost))
    props = tuple(Proposal("delta", d) for d in case.deltas)
    base: Any = (GreedyPolicy(lambda st: props) if case.greedy else ScheduledPolicy(props))
    calls = [0]

    def policy(state: PolicyState[Exact]) -> Proposal | Stop:
        k = calls[0]
        calls[0] += 1
        if case.interrupt_policy_call is not None and k == case.interrupt_policy_call:
            raise KeyboardInterrupt
        out: Proposal | Stop = base(state)
        return out

    seen = [0]

    def on_record(rec: StepRecord) -> None:
        k = seen[0]
        seen[0] += 1
        if case.interrupt_record is not None and k == case.interrupt_record:
            raise KeyboardInterrupt

    return budgeted_kmr(case.c0, triple, policy, case.budget, case.max_steps, on_record=on_record)


def random_case(rng: random.Random) -> Case:
    rational = rng.random() < 0.4

    def val(lo: int, hi: int) -> Exact:
        if rational:
            return Fraction(rng.randint(lo * 4, hi * 4), 4)
        return rng.randint(lo, hi)

    c0 = val(0, 12)
    deltas = tuple(val(-4, 2) for _ in range(rng.randint(0, 6)))
    return Case(c0, deltas, val(-1, 10), rng.randint(0, 6), greedy=rng.random() < 0.25,
                interrupt_policy_call=rng.choice([None, None, None, 0, 1, 2]),
                interrupt_record=rng.choice([None, None, None, 0, 1, 2]))


# ---------------------------------------------------------------- tampering

def tampers(result: KMRResult[Any], max_steps: int) -> list[tuple[str, KMRResult[Any], int]]:
    """Tampered copies of a genuine run, each illegal by Proposition 1 / the trace clauses."""
    out: list[tuple[str, KMRResult[Any], int]] = []
    tr = list(result.trace)

    def with_trace(t: list[StepRecord]) -> KMRResult[Any]:
        return dataclasses.replace(result, trace=tuple(t))

    out.append(("final-cost", dataclasses.replace(result, cost_final=result.cost_final + 1), max_steps))
    if result.status == Status.FEASIBLE:
        out.append(("status", dataclasses.replace(result, status=Status.STALLED), max_steps))
    else:
        out.append(("status", dataclasses.replace(result, status=Status.FEASIBLE), max_steps))
    if tr:
        out.append(("record-t", with_trace([dataclasses.replace(tr[0], t=tr[0].t + 1), *tr[1:]]), max_steps))
        out.append(("cost-before", with_trace(
            [dataclasses.replace(tr[0], cost_before=tr[0].cost_before + 1), *tr[1:]]), max_steps))
    if tr and tr[0].accepted:  # (dropping a first *rejected* record can leave a legal run)
        out.append(("drop-record", with_trace(tr[1:]), max_steps))
    acc = [j for j, r in enumerate(tr) if r.accepted]
    if acc:
        j = acc[-1]
        out.append(("accepted-not-lower", with_trace(
            [*tr[:j], dataclasses.replace(tr[j], cost_after=tr[j].cost_before), *tr[j + 1:]]), max_steps))
        out.append(("step-limit-exceeded", result, len(acc) - 1))
    if tr and not tr[-1].accepted:
        last = tr[-1]
        out.append(("rejected-as-accepted", with_trace(
            [*tr[:-1], dataclasses.replace(last, accepted=True, reason="accepted")]), max_steps))
        extra = StepRecord(last.t, last.knob, last.value, last.cost_before, last.cost_before - 1,
                           None, True, "accepted")
        out.append(("record-after-reject", with_trace([*tr, extra]), max_steps))
    return out
