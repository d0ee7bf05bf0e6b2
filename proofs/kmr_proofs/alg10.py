"""Algorithm 10 (Composed-KMR, ``spec/kmr.md`` §9) as a transition system, built from the
commands of Algorithm 1 (``alg1.py``), not a copy of them.

It models ``kmr_ref/core/compose.py``. The state is the state of Algorithm 1 (the fields of
``alg1.V``: they hold the phase that runs, or the last phase that ran) plus the pipeline's
fields: its location ``ppc``, the phase index ``p`` (phases completed), the symbolic number of
phases ``P >= 0``, the steps accepted before the current phase ``used``, the pipeline's ``N``
(``gN``), ``M_0`` and ``C(M_0)`` (``gm0``, ``gc0``), the status of the last (``last``) and of the
first (``first``) phase that ran, the returned status ``gstatus``, the length of the pipeline
trace ``recs``, and ghost fields mirroring the pipeline trace as it streams (``g_*``: accepted
and all records, rejected records, the last accepted record, the phase of the last rejected
record, the global ``t`` of the last record).

Pipeline locations:

    TOP   line 2-3: the ``for`` loop's head and the skip test (``KMR.alg10.skip``)
    RUN   lines 4-6: phase ``p`` runs; Algorithm 1's commands are enabled (``active``)
    FIN   line 8, after the ``for`` loop (``KMR.alg10.status``)
    DONE  line 9, returned

Commands: every command of Algorithm 1 (``alg1.loop_commands`` with ``active = ppc == RUN``,
and ``alg1.exit_command``), the accept/reject commands extended with the pipeline ghosts;
``phase-start`` (a phase runs: Algorithm 1's initial state from the current model with step
limit ``N - used``), ``skip`` (no phase left, or ``C(M) <= B``, or ``used = N``), ``phase-end``
(``used += accepted``, the trace is appended, the phase's status is kept; an interrupted phase
ends the pipeline) and ``status`` (line 8). Each phase's policy and rule are arbitrary (the
step's free inputs, as in ``alg1.py``), so every phase of the pipeline is an arbitrary method
sharing the one cost meter ``C`` (``KMR.alg10.shared-cost``).

Mutations (``MUTATIONS``): options of the same builder. A mutation of Algorithm 1
(``alg1.MUTATIONS``) mutates every phase.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import z3

from kmr_proofs import alg1
from kmr_proofs.alg1 import (
    FEASIBLE,
    HEAD,
    INTERRUPTED,
    NONE,
    POLICY_STOP,
    STALLED,
    STATUS_NAMES,
    STEP_LIMIT,
    Alg1Options,
    V,
    cost_fn,
)
from kmr_proofs.ts import Command, Expr, Inputs, State, System

TOP, RUN, FIN, DONE = range(4)
PPC_NAMES = ("TOP", "RUN", "FIN", "DONE")

MUTATIONS: dict[str, str] = {
    "phase-limit-N": "line 5: each phase gets the whole step limit N instead of N - used",
    "no-carry": "line 5: each phase starts from M_0 instead of the last accepted model",
    "stall-ends-pipeline": "line 7: a stalled phase ends the whole pipeline, not only the phase",
    "no-phase-advance": "line 2: the phase index is not advanced (the same phase runs again)",
    "status-first-phase": "line 8: the status of the first phase that ran instead of the last",
    "no-step-limit-rule": "line 8: the step-limit branch dropped",
    "pipeline-feasible-lt": "line 8: feasible tested as C(M) < B instead of C(M) <= B",
    "skip-ignores-feasible": "line 3: a phase runs although C(M) <= B",
    "skip-ignores-used": "line 3: a phase runs although used = N",
    "stall-continues": "Algorithm 1 line 11 in a phase: after a rejected record the loop goes on",
}

# pipeline field names (Algorithm 1's fields are those of alg1.V)
PPC, P_IDX, P_NUM, STARTED, USED, GN, GM0, GC0 = "ppc", "p", "P", "started", "used", "gN", "gm0", "gc0"
LAST, FIRST, GSTATUS, RECS = "last", "first", "gstatus", "recs"
G_NACC, G_NREC, G_NREJ, G_ACC_M, G_ACC_BEFORE, G_ACC_AFTER, G_REJ_PHASE, G_T = (
    "g_nacc", "g_nrec", "g_nrej", "g_acc_m", "g_acc_before", "g_acc_after", "g_rej_phase", "g_t")


@dataclass(frozen=True)
class Alg10Options:
    integer_costs: bool = False
    mutation: str | None = None  # a key of MUTATIONS, or of alg1.MUTATIONS (every phase mutated)

    def __post_init__(self) -> None:
        if self.mutation is not None and self.mutation not in MUTATIONS and self.mutation not in alg1.MUTATIONS:
            raise ValueError(f"unknown mutation {self.mutation!r}")

    @property
    def phase(self) -> Alg1Options:
        """The options of every phase's Algorithm 1."""
        mu = self.mutation if self.mutation in alg1.MUTATIONS else None
        return Alg1Options(integer_costs=self.integer_costs, mutation=mu)

    @property
    def mut(self) -> str | None:
        return self.mutation if self.mutation in MUTATIONS else None


def running(s: State) -> Expr:
    return s[PPC] == RUN


def _extend(cmd: Command, *, guard: Callable[[State, Inputs], Expr] | None = None,
            extra: Callable[[State, Inputs], dict[str, Expr]] | None = None,
            clauses: tuple[str, ...] = ()) -> Command:
    """The same command with a stronger guard and/or more (ghost) fields updated."""
    g = cmd.guard if guard is None else (lambda s, i: z3.And(guard(s, i), cmd.guard(s, i)))

    def upd(s: State, i: Inputs) -> dict[str, Expr]:
        u = dict(cmd.update(s, i))
        if extra is not None:
            u.update(extra(s, i))
        return u

    return Command(cmd.name, cmd.clauses + clauses, g, upd)


def phase_commands(opts: Alg10Options) -> list[Command]:
    """Algorithm 1's commands, enabled while a phase runs (``KMR.alg10.phase-run``); the records
    they append also extend the pipeline trace (``KMR.alg10.phase-trace``)."""
    a1 = opts.phase
    C = cost_fn(a1)
    out: list[Command] = []
    for cmd in alg1.loop_commands(a1, V, active=running):
        if cmd.name == "accept":
            cmd = _extend(cmd, extra=lambda s, i: {
                G_NACC: s[G_NACC] + 1, G_NREC: s[G_NREC] + 1, G_ACC_M: i["mp"],
                G_ACC_BEFORE: s[V.c], G_ACC_AFTER: C(i["mp"]), G_T: s[USED] + s[V.t]},
                clauses=("KMR.alg10.phase-trace",))
        elif cmd.name == "reject":
            cmd = _extend(cmd, extra=lambda s, i: {
                G_NREC: s[G_NREC] + 1, G_NREJ: s[G_NREJ] + 1, G_REJ_PHASE: s[P_IDX],
                G_T: s[USED] + s[V.t]}, clauses=("KMR.alg10.phase-trace",))
        elif cmd.name == "stall" and opts.mut == "stall-continues":
            cmd = _extend(cmd, extra=lambda s, i: {V.pc: z3.IntVal(HEAD), V.status: z3.IntVal(NONE)})
        out.append(cmd)
    # line 13-14 of Algorithm 1: the phase returns (only while a phase runs)
    out.append(_extend(alg1.exit_command(a1, V), guard=lambda s, i: running(s)))
    return out


def pipeline_commands(opts: Alg10Options) -> list[Command]:
    mut = opts.mut

    def runnable(s: State) -> Expr:  # KMR.alg10.skip: the negation of line 3's break test
        over = s[V.c] > s[V.B]
        left = s[USED] < s[GN]
        if mut == "skip-ignores-feasible":
            return left
        if mut == "skip-ignores-used":
            return over
        return z3.And(over, left)

    def starts(s: State, i: Inputs) -> Expr:
        return z3.And(s[PPC] == TOP, s[P_IDX] < s[P_NUM], runnable(s))

    def start(s: State, i: Inputs) -> dict[str, Expr]:
        # KMR.alg10.phase-run: Algorithm 1's initial state (KMR.alg1.init) from the last
        # accepted model, with the remaining step limit N - used
        m, c = (s[GM0], s[GC0]) if mut == "no-carry" else (s[V.m], s[V.c])
        n = s[GN] if mut == "phase-limit-N" else s[GN] - s[USED]
        return {PPC: z3.IntVal(RUN), STARTED: s[STARTED] + 1,
                V.pc: z3.IntVal(HEAD), V.status: z3.IntVal(NONE), V.t: z3.IntVal(0), V.N: n,
                V.m: m, V.c: c, V.m0: m, V.c0: c, V.nacc: z3.IntVal(0), V.nrec: z3.IntVal(0),
                V.acc_m: m, V.acc_before: c, V.acc_after: c, V.rej: z3.BoolVal(False),
                V.rej_m: m, V.rej_before: c, V.rej_after: c, V.rec_t: z3.IntVal(-1)}

    def end(s: State, i: Inputs) -> dict[str, Expr]:
        st = s[V.status]
        ends_all = st == INTERRUPTED  # KMR.alg10.phase-break
        if mut == "stall-ends-pipeline":
            ends_all = z3.Or(ends_all, st == STALLED)
        return {PPC: z3.If(ends_all, z3.IntVal(FIN), z3.IntVal(TOP)),
                P_IDX: s[P_IDX] if mut == "no-phase-advance" else s[P_IDX] + 1,
                USED: s[USED] + s[V.nacc], RECS: s[RECS] + s[V.nrec], LAST: st,
                FIRST: z3.If(s[STARTED] == 1, st, s[FIRST])}

    def final(s: State, i: Inputs) -> dict[str, Expr]:  # KMR.alg10.status
        ok = s[V.c] < s[V.B] if mut == "pipeline-feasible-lt" else s[V.c] <= s[V.B]
        src = s[FIRST] if mut == "status-first-phase" else s[LAST]
        rest = z3.If(src == NONE, z3.IntVal(POLICY_STOP), src)
        if mut != "no-step-limit-rule":
            rest = z3.If(z3.And(s[USED] >= s[GN], s[LAST] != INTERRUPTED), z3.IntVal(STEP_LIMIT), rest)
        return {PPC: z3.IntVal(DONE), GSTATUS: z3.If(ok, z3.IntVal(FEASIBLE), rest)}

    return [
        Command("phase-start", ("KMR.alg10.phases", "KMR.alg10.skip", "KMR.alg10.shared-cost",
                                "KMR.alg10.phase-run"), starts, start),
        Command("skip", ("KMR.alg10.skip",),
                lambda s, i: z3.And(s[PPC] == TOP, z3.Not(starts(s, i))),
                lambda s, i: {PPC: z3.IntVal(FIN)}),
        Command("phase-end", ("KMR.alg10.phase-trace", "KMR.alg10.phase-break"),
                lambda s, i: z3.And(running(s), s[V.pc] == alg1.RET), end),
        Command("status", ("KMR.alg10.status", "KMR.alg10.return"),
                lambda s, i: s[PPC] == FIN, final),
    ]


def fields(opts: Alg10Options) -> dict[str, Any]:
    a1 = opts.phase
    cost = z3.IntSort() if a1.int_sort else z3.RealSort()
    Z, Mo = z3.IntSort(), alg1.ModelSort
    out = dict(alg1.fields(a1, V))
    out.update({PPC: Z, P_IDX: Z, P_NUM: Z, STARTED: Z, USED: Z, GN: Z, GM0: Mo, GC0: cost,
                LAST: Z, FIRST: Z, GSTATUS: Z, RECS: Z, G_NACC: Z, G_NREC: Z, G_NREJ: Z,
                G_ACC_M: Mo, G_ACC_BEFORE: cost, G_ACC_AFTER: cost, G_REJ_PHASE: Z, G_T: Z})
    return out


def init(opts: Alg10Options) -> Callable[[State], Expr]:
    """``KMR.alg10.init``: M_0, nothing used, any number of phases P >= 0, N >= 0; Algorithm 1's
    fields hold its initial state for M_0 (inert until a phase starts)."""
    a1_init = alg1.init(opts.phase, V)

    def p(s: State) -> Expr:
        return z3.And(a1_init(s), s[V.m0] == s[GM0], s[V.N] == s[GN], s[GC0] == s[V.c0],
                      s[PPC] == TOP, s[P_IDX] == 0, s[P_NUM] >= 0, s[STARTED] == 0, s[USED] == 0,
                      s[GN] >= 0, s[LAST] == NONE, s[FIRST] == NONE, s[GSTATUS] == NONE,
                      s[RECS] == 0, s[G_NACC] == 0, s[G_NREC] == 0, s[G_NREJ] == 0,
                      s[G_ACC_M] == s[GM0], s[G_ACC_BEFORE] == s[GC0], s[G_ACC_AFTER] == s[GC0],
                      s[G_REJ_PHASE] == -1, s[G_T] == -1)
    return p


def show() -> Callable[[Callable[[Expr], Any], State], str]:
    phase = alg1.show(V)

    def f(ev: Callable[[Expr], Any], s: State) -> str:
        k = ev(s[PPC]).as_long()
        loc = PPC_NAMES[k] if 0 <= k < len(PPC_NAMES) else f"ppc={k}"
        g = ev(s[GSTATUS]).as_long()
        gst = STATUS_NAMES[g] if 0 <= g < len(STATUS_NAMES) else f"status={g}"
        la = ev(s[LAST]).as_long()
        lst = STATUS_NAMES[la] if 0 <= la < len(STATUS_NAMES) else f"last={la}"
        head = (f"{loc} phase p={ev(s[P_IDX])}/P={ev(s[P_NUM])} used={ev(s[USED])} N={ev(s[GN])} "
                f"C(M0)={ev(s[GC0])} pipeline-accepted={ev(s[G_NACC])} records={ev(s[G_NREC])} "
                f"last-phase-status={lst} status={gst}")
        return f"{head} | phase: {phase(ev, s)}" if k == RUN else f"{head} C(M)={ev(s[V.c])} B={ev(s[V.B])}"
    return f


@functools.cache
def alg10_system(opts: Alg10Options = Alg10Options()) -> System:
    """Algorithm 10 as coded in ``kmr_ref.core.compose.composed_kmr``."""
    name = "alg10" + ("-int" if opts.integer_costs else "") + (f"[{opts.mutation}]" if opts.mutation else "")
    return System(name, fields(opts), alg1.INPUTS, init(opts),
                  (*phase_commands(opts), *pipeline_commands(opts)),
                  lambda s: s[PPC] == DONE, show(), alg1.show_inputs(opts.phase),
                  alg1.cost_nonnegative(opts.phase))

