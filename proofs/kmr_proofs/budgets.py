"""Algorithm 1 with a budget that changes between steps (``KMR.budget.schedule``,
``KMR.budget.read``, ``KMR.prop1.changing-budget``; spec/kmr.md §6 and §8).

The encoding is ``alg1.alg1_system(Alg1Options(varying_budget=True))``: the budget field ``B`` is
the *budget in force*; it starts as ``Bseq(0)`` and line 12 sets it to ``Bseq(t + 1)``, where
``Bseq`` is an uninterpreted function from the iteration index to the reals, so every proof over
this system holds for every budget sequence at once (lowered, raised, any mix). The obligations
are those of Proposition 1 (``prop1.obligations``), proved by induction over all states of this
system with the same invariant plus ``budget-in-force`` (``B = Bseq(t)`` everywhere), and
refuted on mutants of the changing-budget semantics (``alg1.VARYING_ONLY``).

Tied to the code by :func:`check_all`: every small world (initial cost, proposals, a budget
sequence given as a stream and as a callable, the step limit, an interrupt or an invalid value
while the budget is read) is run through ``kmr_ref.core.budgeted.budgeted_kmr`` and compared with
an interpreter of ``KMR.budget.read`` written from the spec text, checked against Proposition 1,
and (a sample) replayed through the transition relation of the encoding (:func:`replay`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import z3

from kmr_proofs import prop1, ts
from kmr_proofs.alg1 import (
    BSEQ,
    FEASIBLE,
    HEAD,
    REJ,
    RET,
    STATUS_NAMES,
    STEP,
    Alg1Options,
    V,
    alg1_system,
    at,
)
from kmr_proofs.exhaustive import Toy, Violation, step_model
from kmr_proofs.ts import Expr, State
from kmr_ref.core import (
    BudgetError,
    CostMeter,
    IntRange,
    KMRResult,
    KMRTriple,
    Knob,
    KnobValue,
    PolicyState,
    Proposal,
    Status,
    Stop,
)
from kmr_ref.core.budgeted import BudgetState, budgeted_kmr

CLAUSE = "KMR.prop1.changing-budget"
# mutants of the changing-budget semantics (alg1.VARYING_ONLY), and of the loop under changing budgets
MUTANTS = {"P1a-budgets-induction": ("restart-on-lower", "undo-on-raise", "le-for-lt"),
           "P1b-budgets-induction": ("off-by-one-N", "no-step"),
           "P1c-budgets-induction": ("feasible-initial-budget", "feasible-lt"),
           "P1d-budgets-induction": ("le-for-lt",),
           "P1e-budgets-induction": ("restart-on-lower", "accept-before-check")}


def opts(integer: bool = False, mutation: str | None = None) -> Alg1Options:
    return Alg1Options(integer_costs=integer, mutation=mutation, varying_budget=True)


def invariants(integer: bool = False) -> dict[str, ts.StatePred]:
    inv = prop1.invariants(Alg1Options(integer_costs=integer))
    inv["budget-in-force"] = lambda s: s[V.B] == BSEQ(s[V.t])  # KMR.budget.read
    return inv


def obligations() -> list[prop1.Obligation]:
    """P1a-P1e (and the status totality) on the changing-budget system, plus the budget in force."""
    out: list[prop1.Obligation] = []
    for ob in prop1.obligations():
        if ob.id == "alg1-status-induction":
            continue
        nid = ob.id.replace("-induction", "-budgets-induction")
        out.append(prop1.Obligation(nid, CLAUSE, "p1-changing-budget", (*ob.support, "budget-in-force"),
                                    ob.state_props, ob.step_props, ob.rank, ob.integer_costs,
                                    MUTANTS.get(nid, ()), ob.summary + " (any budget sequence)"))

    def ret(s: State) -> Expr:
        return at(s, RET)

    out.append(prop1.Obligation(
        "budget-in-force-induction", "KMR.budget.read", "p1-changing-budget",
        ("domain", "t-le-N", "count", "cache", "records", "rejected", "status-loc", "status-meaning",
         "budget-in-force"),
        state_props=(("B = Bseq(t) at every location (the budget in force)", lambda s: s[V.B] == BSEQ(s[V.t])),
                     ("feasible <=> C(M_out) <= B_t at exit",
                      lambda s: z3.Implies(ret(s), (s[V.status] == FEASIBLE) == (s[V.c] <= BSEQ(s[V.t]))))),
        mutants=("feasible-initial-budget",),
        summary="the budget in force is B_t for the current t; the exit status is judged against it"))
    return out


def prove(ob: prop1.Obligation) -> prop1.Outcome:
    sys_ = alg1_system(opts(ob.integer_costs))
    return prop1.prove_obligation(ob, sys_, invariants(ob.integer_costs), inv_tag="budgets")


def bounded(ob: prop1.Obligation, depth: int) -> prop1.Outcome:
    r = ts.bmc(alg1_system(opts(ob.integer_costs)), depth, ob.state_props, ob.step_props)
    return prop1.Outcome(r.result, [ts.Check(f"bmc(depth={depth})", r.result, r.trace)], r.trace)


def refute(ob: prop1.Obligation, mutation: str, depth: int) -> prop1.Refutation:
    r = ts.bmc(alg1_system(opts(ob.integer_costs, mutation)), depth, ob.state_props, ob.step_props)
    if r.result == "failed":
        return prop1.Refutation(True, r.trace, "bmc")
    return prop1.Refutation(False, f"no violation found by BMC to depth {depth} ({r.result})", "bmc")


def coverage(depth: int) -> tuple[str, str]:
    """Non-vacuity: in runs of the encoding the budget is lowered and raised between iterations,
    a step is accepted under a lowered budget, a run ends feasible only because its budget rose,
    and every command fires."""
    sys_ = alg1_system(opts())
    step_cmd = next(c for c in sys_.commands if c.name == "step")
    accept_cmd = next(c for c in sys_.commands if c.name == "accept")

    def fires(c: ts.Command) -> ts.StepPred:
        return lambda s, i, s2: sys_.step_by(c, s, i, s2)

    goals: list[tuple[str, ts.StepPred]] = [(f"command {c.name}", fires(c)) for c in sys_.commands]
    goals += [
        ("budget lowered between iterations",
         lambda s, i, s2: z3.And(sys_.step_by(step_cmd, s, i, s2), s2[V.B] < s[V.B])),
        ("budget raised between iterations",
         lambda s, i, s2: z3.And(sys_.step_by(step_cmd, s, i, s2), s2[V.B] > s[V.B])),
        ("accepted under a lowered budget",
         lambda s, i, s2: z3.And(sys_.step_by(accept_cmd, s, i, s2), s[V.B] < s[V.B0])),
        ("feasible only because the budget rose",
         lambda s, i, s2: z3.And(s2[V.pc] == RET, s2[V.status] == FEASIBLE, s2[V.c] > s2[V.B0])),
    ]
    def returns(code: int) -> ts.StepPred:
        return lambda s, i, s2: z3.And(s2[V.pc] == RET, s2[V.status] == code)

    goals += [(f"return {STATUS_NAMES[k]}", returns(k)) for k in range(1, len(STATUS_NAMES))]
    found = ts.cover(sys_, depth, goals)
    missing = [n for n, k in found.items() if k is None]
    if missing:
        return "failed", f"unreachable within {depth}: {', '.join(missing)}"
    return "proved", (f"all {len(goals)} goals reached in runs of <= {max(k for k in found.values() if k)} "
                      "transitions (budget lowered, raised, a step accepted under a lowered budget, "
                      "feasible only by a raise, every command, every status)")


# ---------------------------------------------------------------- replay (code -> encoding)

def _num(x: Any, integer: bool) -> Expr:
    q = Fraction(x)
    return z3.IntVal(int(q)) if integer else z3.RealVal(f"{q.numerator}/{q.denominator}")


def replay(result: KMRResult[Any], max_steps: int, budgets_read: Sequence[Any]) -> bool:
    """Is ``result`` (a run with a budget schedule that read ``budgets_read`` = B_0, B_1, ...) a
    run of the changing-budget encoding? Each record's ``budget`` must be ``Bseq(t)`` and the
    result's budget ``Bseq(t)`` at exit."""
    costs = [result.cost_initial, result.cost_final] + [c for r in result.trace for c in (r.cost_before, r.cost_after)]
    integer = all(Fraction(c).denominator == 1 for c in costs)
    sys_ = alg1_system(opts(integer))
    solver = z3.Solver()
    solver.set("timeout", 10000)
    s = sys_.state("v0")
    solver.add(sys_.init(s), s[V.N] == max_steps, s[V.c0] == _num(result.cost_initial, integer))
    for k, b in enumerate(budgets_read):
        solver.add(BSEQ(k) == _num(b, False))
    n = len(result.trace)
    for j, r in enumerate(result.trace):
        i, s2 = sys_.input(f"v{j}"), sys_.state(f"v{j}")
        solver.add(sys_.trans(s, i, s2), sys_.assume(s, i), s2[V.nrec] == j + 1, s2[V.rec_t] == r.t,
                   s[V.B] == _num(r.budget, False))
        if r.accepted:
            solver.add(s2[V.pc] == STEP, s2[V.acc_before] == _num(r.cost_before, integer),
                       s2[V.acc_after] == _num(r.cost_after, integer))
        else:
            solver.add(s2[V.pc] == REJ, s2[V.rej_before] == _num(r.cost_before, integer),
                       s2[V.rej_after] == _num(r.cost_after, integer))
        s = s2
        if r.accepted and j < n - 1:
            i, s2 = sys_.input(f"v{j}s"), sys_.state(f"v{j}s")
            solver.add(sys_.trans(s, i, s2), s2[V.pc] == HEAD)
            s = s2
    code = STATUS_NAMES.index(str(result.status))
    for tail in (2, 3):
        solver.push()
        cur = s
        for k in range(tail):
            i, s2 = sys_.input(f"vt{k}"), sys_.state(f"vt{k}")
            solver.add(sys_.trans(cur, i, s2), sys_.assume(cur, i))
            cur = s2
        solver.add(cur[V.pc] == RET, cur[V.status] == code, cur[V.c] == _num(result.cost_final, integer),
                   cur[V.nrec] == n, cur[V.B] == _num(result.budget, False))
        ok = solver.check() == z3.sat
        solver.pop()
        if ok:
            return True
    return False


# ---------------------------------------------------------------- small worlds through the code

@dataclass(frozen=True)
class World:
    c0: int
    deltas: tuple[int, ...]  # the scheduled proposals, in call order
    budgets: tuple[int, ...]  # B_0, B_1, ...; the last stays in force
    n: int
    mode: str = "stream"  # "stream" (a list), "callable" (a function of BudgetState.t)
    fault: str = "none"  # "none", "ki-budget" (KeyboardInterrupt), "err-budget" (a NaN budget)
    fault_at: int = 0  # the read it strikes (0-based)


@dataclass
class Expected:
    status: Status
    cost: int
    budget: int
    records: list[tuple[int, int, int, bool, int]]  # t, before, after, accepted, budget
    shown: list[tuple[int, int, int]]  # what the policy was shown: t, cost, budget
    reads: int


def interpret(w: World) -> Expected:
    """``KMR.budget.read`` from the spec text, fault-free: B_0 before the loop, B_t after line 12."""
    def bud(k: int) -> int:
        return w.budgets[min(k, len(w.budgets) - 1)]

    reads = 1
    B, c, t, calls = bud(0), w.c0, 0, 0
    recs: list[tuple[int, int, int, bool, int]] = []
    shown: list[tuple[int, int, int]] = []
    status: Status | None = None
    while c > B:  # line 2, with the budget in force
        if t == w.n:
            status = Status.STEP_LIMIT
            break
        shown.append((t, c, B))
        if calls >= len(w.deltas):
            status = Status.POLICY_STOP
            break
        c2 = max(0, c + w.deltas[calls])
        calls += 1
        if c2 < c:
            recs.append((t, c, c2, True, B))
            c = c2
        else:
            recs.append((t, c, c2, False, B))
            status = Status.STALLED
            break
        t += 1
        B, reads = bud(t), reads + 1  # KMR.budget.read: after line 12
    if c <= B:
        status = Status.FEASIBLE
    assert status is not None
    return Expected(status, c, B, recs, shown, reads)


@dataclass(frozen=True)
class _Add:
    def knobs(self) -> Sequence[Knob]:
        return (Knob("delta", IntRange(-3, 3)),)

    def apply(self, model: Toy, knob: str, value: KnobValue) -> Toy:
        assert isinstance(value, int)
        return step_model(model, 0, value)


@dataclass
class Run:
    result: KMRResult[Toy] | None
    error: BaseException | None
    reads: list[int] = field(default_factory=list)
    shown: list[tuple[int, int, int]] = field(default_factory=list)


def run_world(w: World) -> Run:
    triple: KMRTriple[Toy] = KMRTriple("add", _Add(), CostMeter("cost", lambda m: m.cost))
    run = Run(None, None)
    calls = [0]

    def policy(state: PolicyState[Toy]) -> Proposal | Stop:
        run.shown.append((state.t, int(state.cost), int(state.budget)))
        k = calls[0]
        calls[0] += 1
        return Proposal("delta", w.deltas[k]) if k < len(w.deltas) else Stop()

    def value(k: int) -> object:
        if w.fault != "none" and k == w.fault_at:
            if w.fault == "ki-budget":
                raise KeyboardInterrupt
            return float("nan")
        run.reads.append(w.budgets[min(k, len(w.budgets) - 1)])
        return run.reads[-1]

    source: object
    if w.mode == "callable":
        def source(st: BudgetState[Toy]) -> object:
            return value(st.t)
    else:
        def gen() -> Iterator[object]:
            for k in itertools.count():
                if k >= len(w.budgets) and w.fault == "none":
                    return  # exhausted: the last budget stays in force (KMR.budget.schedule)
                yield value(k)
        source = gen()
    try:
        run.result = budgeted_kmr(Toy(w.c0), triple, policy, source, w.n)
    except (KeyboardInterrupt, BudgetError) as e:
        run.error = e
    return run


def _check(ok: bool, clause: str, w: World, what: str) -> None:
    if not ok:
        raise Violation(f"[{clause}] {what}; world {w}")


def _prop1(res: KMRResult[Toy], w: World) -> None:
    acc = [r for r in res.trace if r.accepted]
    prev = res.cost_initial
    for r in acc:
        _check(r.cost_before == prev and r.cost_after < prev, "KMR.prop1.changing-budget", w, "P1a")
        prev = r.cost_after
    _check(len(acc) <= w.n, "KMR.prop1.changing-budget", w, "P1b: more than N accepted steps")
    _check(res.cost_final == prev, "KMR.prop1.changing-budget", w, "P1e: C(M_out) is not the last accepted cost")
    _check((res.status is Status.FEASIBLE) == (res.cost_final <= res.budget), "KMR.prop1.changing-budget", w,
           "P1c: feasible iff C(M_out) <= the budget in force at exit")
    _check(len(acc) <= res.cost_initial - res.cost_final, "KMR.prop1.changing-budget", w, "P1d")
    _check(all(not r.accepted for r in res.trace[len(acc):]) and len(res.trace) <= len(acc) + 1,
           "KMR.trace.record", w, "at most one rejected record, last")


@dataclass
class Summary:
    worlds: int = 0
    faults: int = 0
    replays: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    changed: int = 0  # runs in which the budget in force changed

    def line(self) -> str:
        mix = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return (f"{self.worlds} worlds ({self.changed} with a budget change in force, {self.faults} with a fault "
                f"while the budget was read; {mix}); {self.replays} runs replayed through the encoding")


def check_world(w: World, do_replay: bool = False) -> Run:
    run = run_world(w)
    exp = interpret(w)
    if w.fault == "none":
        res = run.result
        _check(res is not None, "KMR.budget.read", w, f"raised {run.error!r}")
        assert res is not None
        _check(res.status is exp.status, "KMR.budget.read", w, f"status {res.status}, expected {exp.status}")
        got = [(r.t, r.cost_before, r.cost_after, r.accepted, r.budget) for r in res.trace]
        _check(got == exp.records, "KMR.trace.budget", w, f"records {got}, expected {exp.records}")
        _check(res.cost_final == exp.cost and res.model.cost == exp.cost, "KMR.budget.read", w, "final cost")
        _check(res.budget == exp.budget, "KMR.budget.read", w, f"budget at exit {res.budget}, expected {exp.budget}")
        _check(run.shown == exp.shown, "KMR.budget.read", w, f"policy shown {run.shown}, expected {exp.shown}")
        want_reads = min(exp.reads, len(w.budgets)) if w.mode == "stream" else exp.reads
        _check(len(run.reads) == want_reads, "KMR.budget.read", w,
               f"{len(run.reads)} budget reads, expected {want_reads}")
        _prop1(res, w)
        if do_replay:
            bs = [w.budgets[min(k, len(w.budgets) - 1)] for k in range(exp.reads)]
            _check(replay(res, w.n, bs), CLAUSE, w, "the run is not a run of the changing-budget encoding")
        return run
    # a fault while reading B_k: B_0 has no result; later reads carry the run so far
    if w.fault_at >= exp.reads:  # never struck: the fault-free run
        _check(run.result is not None, "KMR.budget.read", w, f"raised {run.error!r}")
        return run
    e = run.error
    kind = KeyboardInterrupt if w.fault == "ki-budget" else BudgetError
    if w.fault_at == 0:
        _check(isinstance(e, kind) and getattr(e, "kmr_partial", None) is None, "KMR.budget.schedule", w,
               f"a fault reading B_0 must propagate with no partial result, got {e!r}")
        return run
    n_acc = w.fault_at  # reads happen after each accepted step: read k follows the k-th acceptance
    expect_recs = exp.records[:n_acc]
    if w.fault == "ki-budget":
        res = run.result
        _check(res is not None and res.status in (Status.INTERRUPTED, Status.FEASIBLE), "KMR.alg1.interrupt", w,
               f"an interrupt while reading B_{w.fault_at} must return the run so far, got {run.error!r}")
    else:
        _check(isinstance(e, BudgetError) and str(e).startswith("[KMR.budget.schedule]"), "KMR.budget.schedule",
               w, f"an invalid B_{w.fault_at} must raise BudgetError naming the clause, got {e!r}")
        res = getattr(e, "kmr_partial", None)
        _check(res is not None, "KMR.alg1.error", w, "no partial result on the BudgetError")
    assert res is not None
    got = [(r.t, r.cost_before, r.cost_after, r.accepted, r.budget) for r in res.trace]
    _check(got == expect_recs, "KMR.alg1.interrupt", w, f"records {got}, expected {expect_recs}")
    prev_budget = exp.records[n_acc - 1][4]
    _check(res.budget == prev_budget, "KMR.budget.read", w, "the budget in force before the read is kept")
    _check((res.status is Status.FEASIBLE) == (res.cost_final <= prev_budget), "KMR.alg1.error", w,
           "partial status against the budget in force")
    return run


@dataclass(frozen=True)
class Bound:
    costs: tuple[int, ...] = (0, 2, 4)
    deltas: tuple[int, ...] = (-2, -1, 0)
    max_proposals: int = 2
    budget_values: tuple[int, ...] = (0, 1, 3)
    max_budgets: int = 3
    steps: tuple[int, ...] = (0, 1, 3)
    faults: tuple[str, ...] = ("ki-budget", "err-budget")
    fault_reads: tuple[int, ...] = (0, 1, 2)


SMALL = Bound()  # tests/test_budget_changes.py
QUICK = Bound(costs=(0, 3), budget_values=(0, 2), steps=(1, 3), fault_reads=(1,))  # kmr prove


def worlds(b: Bound) -> Iterator[World]:
    for c0, n in itertools.product(b.costs, b.steps):
        for k in range(b.max_proposals + 1):
            for ds in itertools.product(b.deltas, repeat=k):
                for m in range(1, b.max_budgets + 1):
                    for bs in itertools.product(b.budget_values, repeat=m):
                        for mode in ("stream", "callable"):
                            yield World(c0, ds, bs, n, mode)
                        for f, at_ in itertools.product(b.faults, b.fault_reads):
                            yield World(c0, ds, bs, n, "callable" if at_ % 2 else "stream", f, at_)


def check_all(b: Bound, replay_sample: int = 40, seed: int = 0,
              on_world: Callable[[World], None] | None = None) -> Summary:
    """Every world of ``b`` through the code; ``replay_sample`` of the fault-free ones in which
    the budget in force changed (seeded choice) also replayed through the Z3 encoding."""
    s = Summary()
    changed: list[World] = []
    for w in worlds(b):
        run = check_world(w)
        s.worlds += 1
        s.faults += w.fault != "none"
        if run.result is not None:
            s.statuses[str(run.result.status)] = s.statuses.get(str(run.result.status), 0) + 1
            if w.fault == "none" and len({r.budget for r in run.result.trace} | {run.result.budget}) > 1:
                s.changed += 1
                changed.append(w)
        if on_world is not None:
            on_world(w)
    rng = random.Random(seed)
    for w in rng.sample(changed, min(replay_sample, len(changed))):
        check_world(w, do_replay=True)
        s.replays += 1
    return s
