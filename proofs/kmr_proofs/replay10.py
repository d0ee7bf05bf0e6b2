"""Proof <-> code for Algorithm 10: replay a run of ``kmr_ref.core.composed_kmr`` through the
transition relation of the composed encoding (``alg10.py``).

``replay`` asks Z3, step by step, whether SOME run of the encoding (with the given budget, step
limit, number of phases and initial cost) produces exactly the observed run: each phase starts
as the phase with its index, every record (phase, global ``t``, ``cost_before``,
``cost_after``, ``accepted``) is appended by the transition that appends it, each phase ends
with its reported status and record count, and the pipeline returns the reported status, final
cost and trace length. The control flow between observations (loop steps, exits, the phase's
feasibility check, phase end, skip) is left to Z3, within a few transitions. Tampered copies
(``tampers``) must be rejected.

The toy method is ``replay.py``'s (a model that is its own integer or rational cost, knob
``delta``), one scheduled or greedy policy per phase; ``KeyboardInterrupt`` may be raised at
the k-th policy call or after the k-th record, counted over the whole pipeline.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import z3

from kmr_proofs.alg1 import HEAD, REJ, STATUS_NAMES, STEP, V
from kmr_proofs.alg10 import (
    DONE,
    FIN,
    G_ACC_AFTER,
    G_ACC_BEFORE,
    G_NACC,
    G_NREC,
    G_T,
    GC0,
    GN,
    GSTATUS,
    LAST,
    P_IDX,
    P_NUM,
    PPC,
    RUN,
    TOP,
    Alg10Options,
    alg10_system,
)
from kmr_proofs.replay import Verdict, _cost, _num, _ShiftRule
from kmr_proofs.ts import Expr, State
from kmr_ref.core import (
    ComposedResult,
    CostMeter,
    Exact,
    GreedyPolicy,
    Phase,
    PhaseOutcome,
    PolicyState,
    Proposal,
    ScheduledPolicy,
    Status,
    StepRecord,
    Stop,
    composed_kmr,
)


def replay(out: ComposedResult[Any], max_steps: int, n_phases: int) -> Verdict:
    """Is ``out`` (of ``composed_kmr(..., phases, ..., max_steps)`` with ``n_phases`` phases) a
    run of the Algorithm 10 encoding? ``failed_at`` names the first observation no run meets."""
    res = out.result
    costs = [res.cost_initial, res.cost_final] + [c for r in res.trace for c in (r.cost_before, r.cost_after)]
    integer = all(Fraction(c).denominator == 1 for c in costs)
    sys = alg10_system(Alg10Options(integer_costs=integer))
    solver = z3.Solver()
    solver.set("timeout", 10000)

    def num(x: Exact) -> Expr:
        return _num(x, integer)

    def observe(where: str, *cs: Expr) -> bool:
        solver.add(*cs)
        return bool(solver.check() == z3.sat)

    def step(s: State, tag: str) -> State:
        i, s2 = sys.input(tag), sys.state(tag)
        solver.add(sys.trans(s, i, s2), sys.assume(s, i))
        return s2

    def reach(s: State, tag: str, lengths: tuple[int, ...], goal: Any) -> State | None:
        """Some run of one of ``lengths`` transitions from ``s`` to a state meeting ``goal``."""
        for n in lengths:
            solver.push()
            cur = s
            for k in range(n):
                cur = step(cur, f"{tag}.{k}")
            solver.add(goal(cur))
            ok = solver.check() == z3.sat
            solver.pop()
            if ok:
                cur = s
                for k in range(n):
                    cur = step(cur, f"{tag}.{k}")
                solver.add(goal(cur))
                return cur
        return None

    s: State = sys.state("r0")
    if not observe("initial state", sys.init(s), s[V.B] == _num(res.budget, False), s[GN] == max_steps,
                   s[P_NUM] == n_phases, s[GC0] == num(res.cost_initial)):
        return Verdict(False, "initial state")
    if len(out.phase_of_record) != len(res.trace):
        return Verdict(False, "phase tags")
    j = 0
    accepted = 0
    for k, ph in enumerate(out.phases):
        recs = res.trace[j:j + ph.steps]
        if len(recs) != ph.steps or any(o != ph.name for o in out.phase_of_record[j:j + ph.steps]):
            return Verdict(False, f"phase {k} ({ph.name}): records not tagged with it")
        s = step(s, f"p{k}")
        if not observe(f"phase {k} start", s[PPC] == RUN, s[P_IDX] == k, s[V.pc] == HEAD):
            return Verdict(False, f"phase {k} ({ph.name}) start")
        for q, r in enumerate(recs):
            if q > 0 and recs[q - 1].accepted:  # line 12 of Algorithm 1, back to the loop guard
                s = step(s, f"r{j}s")
            s = step(s, f"r{j}")
            obs = [s[PPC] == RUN, s[P_IDX] == k, s[G_NREC] == j + 1, s[G_T] == r.t]
            if r.accepted:
                accepted += 1
                obs += [s[V.pc] == STEP, s[G_NACC] == accepted, s[G_ACC_BEFORE] == num(r.cost_before),
                        s[G_ACC_AFTER] == num(r.cost_after)]
            else:
                obs += [s[V.pc] == REJ, s[V.rej_before] == num(r.cost_before),
                        s[V.rej_after] == num(r.cost_after)]
            if not observe("record", *obs):
                return Verdict(False, f"record {j} (phase {k}, {'accepted' if r.accepted else 'rejected'}, "
                                      f"t={r.t}, cost {r.cost_before} -> {r.cost_after})")
            j += 1
        code = STATUS_NAMES.index(str(ph.status))
        ended = reach(s, f"e{k}", (3, 4), lambda e, k=k, code=code, j=j, a=accepted: z3.And(
            z3.Or(e[PPC] == TOP, e[PPC] == FIN), e[P_IDX] == k + 1, e[LAST] == code,
            e[G_NREC] == j, e[G_NACC] == a))
        if ended is None:
            return Verdict(False, f"phase {k} ({ph.name}) end with status {ph.status}, {ph.steps} records")
        s = ended
    if j != len(res.trace):
        return Verdict(False, "records outside every phase")
    code = STATUS_NAMES.index(str(res.status))
    done = reach(s, "end", (1, 2), lambda e: z3.And(
        e[PPC] == DONE, e[GSTATUS] == code, e[V.c] == num(res.cost_final), e[G_NREC] == len(res.trace),
        e[P_IDX] == len(out.phases)))
    if done is None:
        return Verdict(False, f"ending (status {res.status}, final cost {res.cost_final}, "
                              f"{len(out.phases)} phases, {len(res.trace)} records)")
    return Verdict(True)


# ---------------------------------------------------------------- runs of the Python reference

@dataclass(frozen=True)
class PhaseCase:
    deltas: tuple[Exact, ...]  # scheduled proposals (or greedy candidates) of this phase
    greedy: bool = False


@dataclass(frozen=True)
class Case10:
    """One run of ``composed_kmr`` on the toy method (model = its own cost)."""

    c0: Exact
    phases: tuple[PhaseCase, ...]
    budget: Exact
    max_steps: int
    interrupt_policy_call: int | None = None  # KeyboardInterrupt at this policy call (pipeline-wide)
    interrupt_record: int | None = None  # KeyboardInterrupt from on_record after this record


def run_case(case: Case10) -> ComposedResult[Exact]:
    calls = [0]
    phases: list[Phase[Exact]] = []
    for k, pc in enumerate(case.phases):
        span = max([abs(Fraction(d)) for d in pc.deltas] + [Fraction(1)])
        props = tuple(Proposal("delta", d) for d in pc.deltas)
        base: Any = GreedyPolicy(_candidates(props)) if pc.greedy else ScheduledPolicy(props)

        def policy(state: PolicyState[Exact], base: Any = base) -> Proposal | Stop:
            n = calls[0]
            calls[0] += 1
            if case.interrupt_policy_call is not None and n == case.interrupt_policy_call:
                raise KeyboardInterrupt
            out: Proposal | Stop = base(state)
            return out

        phases.append(Phase(f"phase{k}", _ShiftRule(-span, span), policy))
    seen = [0]

    def on_record(name: str, rec: StepRecord) -> None:
        n = seen[0]
        seen[0] += 1
        if case.interrupt_record is not None and n == case.interrupt_record:
            raise KeyboardInterrupt

    return composed_kmr(case.c0, phases, CostMeter("value", _cost), case.budget, case.max_steps,
                        on_record=on_record)


def _candidates(props: tuple[Proposal, ...]) -> Any:
    return lambda state: props


def random_case(rng: random.Random) -> Case10:
    rational = rng.random() < 0.3

    def val(lo: int, hi: int) -> Exact:
        if rational:
            return Fraction(rng.randint(lo * 4, hi * 4), 4)
        return rng.randint(lo, hi)

    phases = tuple(PhaseCase(tuple(val(-4, 2) for _ in range(rng.randint(0, 4))), rng.random() < 0.25)
                   for _ in range(rng.randint(0, 3)))
    return Case10(val(0, 14), phases, val(-1, 10), rng.randint(0, 6),
                  interrupt_policy_call=rng.choice([None, None, None, None, 0, 1, 3]),
                  interrupt_record=rng.choice([None, None, None, None, 0, 1, 3]))


# ---------------------------------------------------------------- tampering

def tampers(out: ComposedResult[Any], max_steps: int) -> list[tuple[str, ComposedResult[Any], int]]:
    """Tampered copies of a genuine run, each illegal by Algorithm 10's clauses."""
    res = out.result
    tr = list(res.trace)
    found: list[tuple[str, ComposedResult[Any], int]] = []

    def with_(trace: list[StepRecord] | None = None, phases: list[PhaseOutcome] | None = None,
              owners: list[str] | None = None, **kw: Any) -> ComposedResult[Any]:
        r = dataclasses.replace(res, **kw)
        if trace is not None:
            r = dataclasses.replace(r, trace=tuple(trace))
        return ComposedResult(r, tuple(phases if phases is not None else out.phases),
                              tuple(owners if owners is not None else out.phase_of_record))

    found.append(("final-cost", with_(cost_final=res.cost_final + 1), max_steps))
    bad_status = Status.STALLED if res.status == Status.FEASIBLE else Status.FEASIBLE
    found.append(("status", with_(status=bad_status), max_steps))
    if tr:
        found.append(("record-t", with_([dataclasses.replace(tr[0], t=tr[0].t + 1), *tr[1:]]), max_steps))
        # the first record of the last phase with records: its cost_before must be the
        # pipeline's current cost (a model carried from the previous phase)
        first_of = {out.phase_of_record[j]: j for j in reversed(range(len(tr)))}
        j = max(first_of.values())
        found.append(("cost-before", with_([*tr[:j], dataclasses.replace(tr[j], cost_before=tr[j].cost_before + 1),
                                            *tr[j + 1:]]), max_steps))
    acc = [j for j, r in enumerate(tr) if r.accepted]
    if acc:
        j = acc[-1]
        found.append(("accepted-not-lower", with_([*tr[:j], dataclasses.replace(tr[j], cost_after=tr[j].cost_before),
                                                   *tr[j + 1:]]), max_steps))
        found.append(("step-limit-exceeded", out, len(acc) - 1))
    rej = [j for j, r in enumerate(tr) if not r.accepted]
    if rej:
        j = rej[-1]
        found.append(("rejected-as-accepted", with_([*tr[:j], dataclasses.replace(tr[j], accepted=True,
                                                                                  reason="accepted"),
                                                     *tr[j + 1:]]), max_steps))
        last = tr[j]
        extra = StepRecord(last.t, last.knob, last.value, last.cost_before, last.cost_before - 1,
                           None, True, "accepted")
        owner = out.phase_of_record[j]
        phs = [dataclasses.replace(p, steps=p.steps + 1) if p.name == owner else p for p in out.phases]
        found.append(("record-after-reject", with_([*tr[:j + 1], extra, *tr[j + 1:]], phs,
                                                   [*out.phase_of_record[:j + 1], owner,
                                                    *out.phase_of_record[j + 1:]]), max_steps))
    if out.phases:
        k = len(out.phases) - 1
        p = out.phases[k]
        other = Status.POLICY_STOP if p.status == Status.STALLED else Status.STALLED
        found.append(("phase-status", with_(phases=[*out.phases[:k], dataclasses.replace(p, status=other)]),
                      max_steps))
    for k, p in enumerate(out.phases[:-1]):
        if p.status in (Status.STALLED, Status.POLICY_STOP):
            # the pipeline ended after a stalled / stopped phase although another was left
            n = sum(q.steps for q in out.phases[:k + 1])
            cut = tr[:n]
            acc_cut = [r for r in cut if r.accepted]
            c_out = acc_cut[-1].cost_after if acc_cut else res.cost_initial
            found.append(("break-ends-pipeline", ComposedResult(
                dataclasses.replace(res, trace=tuple(cut), status=p.status, cost_final=c_out),
                out.phases[:k + 1], out.phase_of_record[:n]), max_steps))
            break
    if len(out.phases) >= 2 and res.status not in (Status.FEASIBLE, Status.STEP_LIMIT) \
            and out.phases[0].status != res.status:
        found.append(("status-of-first-phase", with_(status=out.phases[0].status), max_steps))
    return found
