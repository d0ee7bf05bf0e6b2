"""Algorithm 1 (Budgeted-KMR, ``spec/kmr.md`` §7) as a transition system over symbolic states.

It models ``kmr_ref/core/budgeted.py`` line by line. Locations (program points at which a
``KeyboardInterrupt`` can be observed, ``KMR.alg1.interrupt``):

    HEAD  line 2, the loop guard (also every point of lines 3-9 before a record exists:
          the state is the same there)
    STEP  after an accepted record was appended (line 10), before ``t <- t + 1`` (line 12)
    REJ   after the rejected record was appended (line 11), before ``status <- stalled``
    EXIT  after the loop, before the feasibility check (line 13)
    RET   line 14, returned

State fields: ``pc``, ``status``, ``t``, the current model ``m`` (an element of an
uninterpreted sort) and its cached cost ``c`` (the code keeps ``c_cur`` next to ``m_cur``), the
constants ``B``, ``N``, ``m0``, ``c0``, and ghost fields that mirror the trace: ``nacc`` and
``nrec`` (accepted / all records), the last accepted record (``acc_m``, ``acc_before``,
``acc_after``), the rejected record (``rej``, ``rej_m``, ``rej_before``, ``rej_after``) and the
``t`` of the last record (``rec_t``). The cost meter is an uninterpreted function ``C`` of the
model (deterministic: ``KMR.rule.deterministic``); the rule and the policy are arbitrary: each
step's inputs are ``stop`` (the policy returned Stop), ``mp`` (the model the rule returned, any
model at all, so its cost ``C(mp)`` is a free value) and ``intr`` (an interrupt arrives here).

Mutations of the encoding (``MUTATIONS``) are options of the same builder, never copies: each
must be refuted by Z3 for the obligation it targets (non-vacuity, ``prop1.py``).

Reused by Algorithm 10 (composition, ``alg10.py``): :func:`loop_commands` takes an ``active`` predicate and a
field-name vocabulary, so a composed system can instantiate the same acceptance logic once per
phase (``active = phase == j``) and add its phase-switch commands; the obligations of
``prop1.py`` are functions of a :class:`Vocab` and a :class:`~kmr_proofs.ts.System`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import z3

from kmr_proofs.ts import Command, Expr, Inputs, State, System

HEAD, STEP, REJ, EXIT, RET = range(5)
LOC_NAMES = ("HEAD", "STEP", "REJ", "EXIT", "RET")
NONE, FEASIBLE, STALLED, STEP_LIMIT, POLICY_STOP, INTERRUPTED = range(6)
# the values of kmr_ref.core.trace.Status (KMR.alg1.status), by code
STATUS_NAMES = ("none", "feasible", "stalled", "step-limit", "policy-stop", "interrupted")

ModelSort = z3.DeclareSort("Model")
COST_REAL = z3.Function("C", ModelSort, z3.RealSort())
COST_INT = z3.Function("C_int", ModelSort, z3.IntSort())
# KMR.budget.read: a budget schedule as an uninterpreted sequence t -> B_t (any values at all)
BSEQ = z3.Function("Bseq", z3.IntSort(), z3.RealSort())

MUTATIONS: dict[str, str] = {
    "drop-strict": "line 9: every proposal is accepted (no strict-progress check)",
    "le-for-lt": "line 9: accept when c' <= c instead of c' < c",
    "accept-before-check": "lines 9-10: M <- M' before the check, so a rejected proposal stays current",
    "off-by-one-N": "line 3: step limit tested as t > N instead of t >= N",
    "no-step": "line 12: t <- t + 1 dropped",
    "feasible-lt": "line 13: feasible tested as c < B instead of c <= B",
    "feasible-only-if-unset": "line 13: feasible only when no status was set (an interrupted run "
                              "with C(M) <= B stays interrupted)",
    "no-feasible-check": "line 13 dropped",
    "real-costs": "assumption dropped: costs are rationals, not integers (P1d needs integers)",
    # changing budgets (varying_budget=True only)
    "feasible-initial-budget": "line 13 judged against the initial budget B_0, not the budget in force",
    "restart-on-lower": "a lowered budget restarts the run from M_0 (instead of continuing)",
    "undo-on-raise": "a raised budget undoes the last accepted step (back to its cost_before model)",
}
VARYING_ONLY = ("feasible-initial-budget", "restart-on-lower", "undo-on-raise")


@dataclass(frozen=True)
class Alg1Options:
    integer_costs: bool = False
    mutation: str | None = None
    varying_budget: bool = False  # KMR.budget.read: B is re-read as B_t = Bseq(t) after line 12

    def __post_init__(self) -> None:
        if self.mutation is not None and self.mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {self.mutation!r}")

    @property
    def int_sort(self) -> bool:
        return self.integer_costs and self.mutation != "real-costs"


@dataclass(frozen=True)
class Vocab:
    """Field names of one acceptance loop (a composed system prefixes them per phase)."""

    pc: str = "pc"
    status: str = "status"
    t: str = "t"
    m: str = "m"
    c: str = "c"
    B: str = "B"
    N: str = "N"
    m0: str = "m0"
    c0: str = "c0"
    nacc: str = "nacc"
    nrec: str = "nrec"
    acc_m: str = "acc_m"
    acc_before: str = "acc_before"
    acc_after: str = "acc_after"
    rej: str = "rej"
    rej_m: str = "rej_m"
    rej_before: str = "rej_before"
    rej_after: str = "rej_after"
    rec_t: str = "rec_t"
    B0: str = "B0"  # changing budgets: the first budget read (ghost)
    prev_m: str = "prev_m"  # changing budgets: the model before the last accepted step (ghost)


V = Vocab()


def cost_fn(opts: Alg1Options) -> Any:
    return COST_INT if opts.int_sort else COST_REAL


def at(s: State, *locs: int, v: Vocab = V) -> Expr:
    return z3.Or(*[s[v.pc] == k for k in locs])


def loop_commands(opts: Alg1Options, v: Vocab = V,
                  active: Callable[[State], Expr] = lambda s: z3.BoolVal(True)) -> list[Command]:
    """Lines 2-12 (the acceptance loop) and the interrupts inside the ``try``."""
    mut = opts.mutation
    C = cost_fn(opts)

    def head(s: State, i: Inputs) -> Expr:
        return z3.And(active(s), s[v.pc] == HEAD, z3.Not(i["intr"]))

    def over(s: State) -> Expr:  # KMR.alg1.loop-guard
        return s[v.c] > s[v.B]

    def limit(s: State) -> Expr:  # KMR.alg1.step-limit (the code tests t >= N)
        return s[v.t] > s[v.N] if mut == "off-by-one-N" else s[v.t] >= s[v.N]

    def proposing(s: State, i: Inputs) -> Expr:
        return z3.And(head(s, i), over(s), z3.Not(limit(s)), z3.Not(i["stop"]))

    def progress(s: State, i: Inputs) -> Expr:  # KMR.alg1.strict-progress
        cp = C(i["mp"])
        if mut == "drop-strict":
            return z3.BoolVal(True)
        if mut == "le-for-lt":
            return cp <= s[v.c]
        return cp < s[v.c]

    def accept(s: State, i: Inputs) -> dict[str, Expr]:  # KMR.alg1.accept
        cp = C(i["mp"])
        upd = {v.pc: z3.IntVal(STEP), v.m: i["mp"], v.c: cp, v.nacc: s[v.nacc] + 1, v.nrec: s[v.nrec] + 1,
               v.acc_m: i["mp"], v.acc_before: s[v.c], v.acc_after: cp, v.rec_t: s[v.t]}
        if opts.varying_budget:
            upd[v.prev_m] = s[v.m]
        return upd

    def reject(s: State, i: Inputs) -> dict[str, Expr]:  # KMR.alg1.early-break (record first)
        cp = C(i["mp"])
        upd = {v.pc: z3.IntVal(REJ), v.nrec: s[v.nrec] + 1, v.rej: z3.BoolVal(True), v.rej_m: i["mp"],
               v.rej_before: s[v.c], v.rej_after: cp, v.rec_t: s[v.t]}
        if mut == "accept-before-check":
            upd.update({v.m: i["mp"], v.c: cp})
        return upd

    def interrupt(loc: int) -> Command:
        return Command(
            f"interrupt@{LOC_NAMES[loc]}", ("KMR.alg1.interrupt",),
            lambda s, i: z3.And(active(s), s[v.pc] == loc, i["intr"]),
            lambda s, i: {v.pc: z3.IntVal(EXIT), v.status: z3.IntVal(INTERRUPTED)})

    base_step: Callable[[State, Inputs], dict[str, Expr]] = (
        (lambda s, i: {v.pc: z3.IntVal(HEAD)}) if mut == "no-step"
        else (lambda s, i: {v.pc: z3.IntVal(HEAD), v.t: s[v.t] + 1}))  # KMR.alg1.step
    step_update = base_step if not opts.varying_budget else _read_budget(opts, v, base_step)

    return [
        Command("guard-exit", ("KMR.alg1.loop-guard",),
                lambda s, i: z3.And(head(s, i), z3.Not(over(s))),
                lambda s, i: {v.pc: z3.IntVal(EXIT)}),
        Command("step-limit", ("KMR.alg1.step-limit",),
                lambda s, i: z3.And(head(s, i), over(s), limit(s)),
                lambda s, i: {v.pc: z3.IntVal(EXIT), v.status: z3.IntVal(STEP_LIMIT)}),
        Command("policy-stop", ("KMR.alg1.propose", "KMR.alg1.policy-stop"),
                lambda s, i: z3.And(head(s, i), over(s), z3.Not(limit(s)), i["stop"]),
                lambda s, i: {v.pc: z3.IntVal(EXIT), v.status: z3.IntVal(POLICY_STOP)}),
        Command("accept", ("KMR.alg1.apply", "KMR.alg1.measure", "KMR.alg1.strict-progress",
                           "KMR.alg1.accept"),
                lambda s, i: z3.And(proposing(s, i), progress(s, i)), accept),
        Command("reject", ("KMR.alg1.apply", "KMR.alg1.measure", "KMR.alg1.early-break"),
                lambda s, i: z3.And(proposing(s, i), z3.Not(progress(s, i))), reject),
        Command("step", ("KMR.alg1.step",),
                lambda s, i: z3.And(active(s), s[v.pc] == STEP, z3.Not(i["intr"])), step_update),
        Command("stall", ("KMR.alg1.early-break",),
                lambda s, i: z3.And(active(s), s[v.pc] == REJ, z3.Not(i["intr"])),
                lambda s, i: {v.pc: z3.IntVal(EXIT), v.status: z3.IntVal(STALLED)}),
        interrupt(HEAD), interrupt(STEP), interrupt(REJ),
    ]


def _read_budget(opts: Alg1Options, v: Vocab,
                 base: Callable[[State, Inputs], dict[str, Expr]]) -> Callable[[State, Inputs], dict[str, Expr]]:
    """``KMR.budget.read``: after line 12 the schedule is read for the guard of iteration t + 1."""
    C = cost_fn(opts)
    mut = opts.mutation

    def upd(s: State, i: Inputs) -> dict[str, Expr]:
        out = base(s, i)
        t2 = out.get(v.t, s[v.t])
        nb = BSEQ(t2)
        out[v.B] = nb
        if mut == "restart-on-lower":
            out.update({v.m: z3.If(nb < s[v.B], s[v.m0], s[v.m]), v.c: z3.If(nb < s[v.B], s[v.c0], s[v.c])})
        if mut == "undo-on-raise":
            out.update({v.m: z3.If(nb > s[v.B], s[v.prev_m], s[v.m]),
                        v.c: z3.If(nb > s[v.B], C(s[v.prev_m]), s[v.c])})
        return out
    return upd


def exit_command(opts: Alg1Options, v: Vocab = V) -> Command:
    """Line 13 (``KMR.alg1.feasible``) and line 14 (``KMR.alg1.return``). An interrupt here is
    outside the ``try``: it propagates and no result exists, so it is not a transition."""
    mut = opts.mutation

    def upd(s: State, i: Inputs) -> dict[str, Expr]:
        if mut == "no-feasible-check":
            return {v.pc: z3.IntVal(RET)}
        ok = s[v.c] < s[v.B] if mut == "feasible-lt" else s[v.c] <= s[v.B]
        if mut == "feasible-initial-budget":
            ok = s[v.c] <= s[v.B0]
        if mut == "feasible-only-if-unset":
            ok = z3.And(ok, s[v.status] == NONE)
        return {v.pc: z3.IntVal(RET), v.status: z3.If(ok, z3.IntVal(FEASIBLE), s[v.status])}

    return Command("feasible-check", ("KMR.alg1.feasible", "KMR.alg1.return"),
                   lambda s, i: s[v.pc] == EXIT, upd)


def fields(opts: Alg1Options, v: Vocab = V) -> dict[str, Any]:
    cost = z3.IntSort() if opts.int_sort else z3.RealSort()
    Z, R, Mo, Bo = z3.IntSort(), z3.RealSort(), ModelSort, z3.BoolSort()
    out = {v.pc: Z, v.status: Z, v.t: Z, v.m: Mo, v.c: cost, v.B: R, v.N: Z, v.m0: Mo, v.c0: cost,
           v.nacc: Z, v.nrec: Z, v.acc_m: Mo, v.acc_before: cost, v.acc_after: cost,
           v.rej: Bo, v.rej_m: Mo, v.rej_before: cost, v.rej_after: cost, v.rec_t: Z}
    if opts.varying_budget:
        out |= {v.B0: R, v.prev_m: Mo}
    return out


INPUTS: dict[str, Any] = {"stop": z3.BoolSort(), "intr": z3.BoolSort(), "mp": ModelSort}


def init(opts: Alg1Options, v: Vocab = V) -> Callable[[State], Expr]:
    """``KMR.alg1.init`` (and ``KMR.alg1.validate``: N is an integer >= 0, B any exact number)."""
    C = cost_fn(opts)

    def p(s: State) -> Expr:
        return z3.And(s[v.pc] == HEAD, s[v.status] == NONE, s[v.t] == 0, s[v.N] >= 0,
                      s[v.m] == s[v.m0], s[v.c0] == C(s[v.m0]), s[v.c0] >= 0, s[v.c] == s[v.c0],
                      s[v.nacc] == 0, s[v.nrec] == 0, s[v.acc_m] == s[v.m0],
                      s[v.acc_before] == s[v.c0], s[v.acc_after] == s[v.c0],
                      z3.Not(s[v.rej]), s[v.rej_m] == s[v.m0], s[v.rej_before] == s[v.c0],
                      s[v.rej_after] == s[v.c0], s[v.rec_t] == -1)

    def pv(s: State) -> Expr:  # KMR.budget.read: B_0 is read before the loop
        return z3.And(p(s), s[v.B] == BSEQ(0), s[v.B0] == s[v.B], s[v.prev_m] == s[v.m0])
    return pv if opts.varying_budget else p


def show(v: Vocab = V) -> Callable[[Callable[[Expr], Any], State], str]:
    def f(ev: Callable[[Expr], Any], s: State) -> str:
        pc, st = ev(s[v.pc]).as_long(), ev(s[v.status]).as_long()
        loc = LOC_NAMES[pc] if 0 <= pc < len(LOC_NAMES) else f"pc={pc}"
        stat = STATUS_NAMES[st] if 0 <= st < len(STATUS_NAMES) else f"status={st}"
        rej = (f" rejected(c={ev(s[v.rej_before])}, c'={ev(s[v.rej_after])})"
               if z3.is_true(ev(s[v.rej])) else "")
        return (f"{loc} status={stat} t={ev(s[v.t])} N={ev(s[v.N])} B={ev(s[v.B])} "
                f"C(M)={ev(s[v.c])} C(M0)={ev(s[v.c0])} accepted={ev(s[v.nacc])}{rej}")
    return f


def show_inputs(opts: Alg1Options) -> Callable[[Callable[[Expr], Any], Sequence[str], Inputs], str]:
    C = cost_fn(opts)

    def f(ev: Callable[[Expr], Any], fired: Sequence[str], i: Inputs) -> str:
        if any(n in ("accept", "reject") for n in fired):
            return f"C(M')={ev(C(i['mp']))}"
        return ""
    return f


def cost_nonnegative(opts: Alg1Options, v: Vocab = V) -> Callable[[State, Inputs], Expr]:
    """``KMR.meter.cost-exact``: a negative cost raises MeterError (the run has no result), so
    runs only ever measure costs >= 0. The induction proofs hold without this assumption."""
    C = cost_fn(opts)
    return lambda s, i: C(i["mp"]) >= 0


@functools.cache
def alg1_system(opts: Alg1Options = Alg1Options()) -> System:
    """Algorithm 1 as it is coded in ``kmr_ref.core.budgeted.budgeted_kmr``."""
    name = ("alg1" + ("-int" if opts.integer_costs else "") + ("-budgets" if opts.varying_budget else "")
            + (f"[{opts.mutation}]" if opts.mutation else ""))
    return System(name, fields(opts), INPUTS, init(opts),
                  (*loop_commands(opts), exit_command(opts)),
                  lambda s: s[V.pc] == RET, show(), show_inputs(opts), cost_nonnegative(opts))
