"""Proof obligations of Algorithm 10 (``spec/kmr.md`` §9) over the composed system of ``alg10.py``.

Two families, both discharged by :func:`kmr_proofs.prop1.prove_obligation` (induction over ALL
states of the composed system, with its own invariant):

* **per phase** (``alg10-phase-*``, ``KMR.alg10.phase-run``): the obligations of Proposition 1
  (``prop1.obligations()``), unchanged, proved on the composed system: every phase, embedded in
  the pipeline, is a run of Algorithm 1 and keeps P1a-P1e on its own fields. The invariant is
  Algorithm 1's (``prop1.invariants``, same conjunct names) with ``domain`` strengthened by the
  pipeline's invariant. Their mutants are Algorithm 1's, applied to every phase.
* **pipeline** (``alg10-*``): ``KMR.alg10.prop1`` (a)-(e) across phase boundaries, the ranking
  function of the whole pipeline, ``KMR.alg10.skip``, ``KMR.alg10.phase-break``,
  ``KMR.alg10.phase-run`` (each phase starts in Algorithm 1's initial state from the last
  accepted model with N - used) and ``KMR.alg10.status``.
"""

from __future__ import annotations

import dataclasses

import z3

from kmr_proofs import prop1, ts
from kmr_proofs.alg1 import (
    EXIT,
    FEASIBLE,
    HEAD,
    INTERRUPTED,
    NONE,
    POLICY_STOP,
    REJ,
    RET,
    STALLED,
    STATUS_NAMES,
    STEP,
    STEP_LIMIT,
    Alg1Options,
    V,
    cost_fn,
)
from kmr_proofs.alg1 import init as alg1_init
from kmr_proofs.alg10 import (
    DONE,
    FIN,
    FIRST,
    G_ACC_AFTER,
    G_ACC_BEFORE,
    G_ACC_M,
    G_NACC,
    G_NREC,
    G_NREJ,
    G_REJ_PHASE,
    GC0,
    GM0,
    GN,
    GSTATUS,
    LAST,
    P_IDX,
    P_NUM,
    PPC,
    RECS,
    RUN,
    STARTED,
    TOP,
    USED,
    Alg10Options,
    alg10_system,
)
from kmr_proofs.prop1 import Obligation, Outcome
from kmr_proofs.ts import Expr, State, StatePred, StepPred


def _run(s: State) -> Expr:
    return s[PPC] == RUN


def _ended(s: State) -> Expr:
    return z3.Not(_run(s))


def _status_ok(x: Expr) -> Expr:
    return z3.And(x >= NONE, x <= INTERRUPTED)


def pipeline_invariants(integer: bool) -> dict[str, StatePred]:
    """The pipeline's conjuncts of the invariant (over the phase fields and the pipeline's)."""
    C = cost_fn(Alg1Options(integer_costs=integer))

    def rule(s: State) -> Expr:  # line 8 as the code computes it
        rest = z3.If(s[LAST] == NONE, z3.IntVal(POLICY_STOP), s[LAST])
        return z3.If(s[V.c] <= s[V.B], z3.IntVal(FEASIBLE),
                     z3.If(z3.And(s[USED] >= s[GN], s[LAST] != INTERRUPTED), z3.IntVal(STEP_LIMIT), rest))

    inv: dict[str, StatePred] = {
        "pipe-domain": lambda s: z3.And(
            s[PPC] >= TOP, s[PPC] <= DONE, s[P_IDX] >= 0, s[P_IDX] <= s[P_NUM], s[GN] >= 0,
            s[USED] >= 0, s[USED] <= s[GN], s[STARTED] == s[P_IDX] + z3.If(_run(s), 1, 0),
            _status_ok(s[LAST]), _status_ok(s[FIRST]), (s[LAST] == NONE) == (s[P_IDX] == 0),
            (s[FIRST] == NONE) == (s[P_IDX] == 0),
            z3.Implies(_run(s), z3.And(s[P_IDX] < s[P_NUM], s[V.N] == s[GN] - s[USED])),
            z3.Implies(z3.And(_ended(s), s[P_IDX] >= 1), z3.And(s[V.pc] == RET, s[V.status] == s[LAST]))),
        "phase-below-limit": lambda s: z3.And(
            z3.Implies(s[V.rej], s[V.nacc] < s[V.N]),
            z3.Implies(z3.Or(s[V.status] == STALLED, s[V.status] == POLICY_STOP), s[V.nacc] < s[V.N])),
        "pipe-trace": lambda s: z3.And(
            s[G_NACC] == s[USED] + z3.If(_run(s), s[V.nacc], 0),
            s[G_NREC] == s[RECS] + z3.If(_run(s), s[V.nrec], 0), s[RECS] >= 0,
            s[G_NREJ] >= 0, s[G_NREJ] <= s[P_IDX] + z3.If(z3.And(_run(s), s[V.rej]), 1, 0),
            s[G_REJ_PHASE] >= -1, s[G_REJ_PHASE] < s[STARTED],
            z3.Implies(_run(s), (s[G_REJ_PHASE] == s[P_IDX]) == s[V.rej])),
        "pipe-cost": lambda s: z3.And(
            s[GC0] == C(s[GM0]), s[V.m] == s[G_ACC_M], s[V.c] == s[G_ACC_AFTER], s[V.c] <= s[GC0]),
        "pipe-last": lambda s: z3.Implies(_ended(s), z3.And(
            z3.Implies(s[LAST] == FEASIBLE, s[V.c] <= s[V.B]),
            z3.Implies(s[LAST] == STALLED, z3.And(
                s[V.c] > s[V.B], s[USED] < s[GN], s[V.rej], s[G_REJ_PHASE] == s[P_IDX] - 1,
                s[V.nrec] == s[V.nacc] + 1, s[V.rej_after] >= s[V.rej_before], s[V.rej_before] == s[V.c])),
            z3.Implies(s[LAST] == POLICY_STOP, z3.And(
                s[V.c] > s[V.B], s[USED] < s[GN], z3.Not(s[V.rej]), s[G_REJ_PHASE] < s[P_IDX] - 1)),
            z3.Implies(s[LAST] == STEP_LIMIT, z3.And(s[V.c] > s[V.B], s[USED] == s[GN])),
            z3.Implies(s[LAST] == INTERRUPTED, s[V.c] > s[V.B]))),
        "pipe-end": lambda s: z3.And(
            z3.Implies(z3.Or(s[PPC] == FIN, s[PPC] == DONE),
                       z3.Or(s[P_IDX] == s[P_NUM], s[V.c] <= s[V.B], s[USED] >= s[GN], s[LAST] == INTERRUPTED)),
            z3.Implies(s[PPC] == DONE, s[GSTATUS] == rule(s)),
            z3.Implies(s[PPC] != DONE, s[GSTATUS] == NONE),
            z3.Implies(s[PPC] == TOP, s[LAST] != INTERRUPTED)),
    }
    if integer:
        inv["pipe-integer-bound"] = lambda s: s[G_NACC] <= s[GC0] - s[V.c]
    return inv


def invariants(integer: bool) -> dict[str, StatePred]:
    """The whole invariant of the composed system: Algorithm 1's conjuncts (the phase) and the
    pipeline's."""
    return {**prop1.invariants(Alg1Options(integer_costs=integer)), **pipeline_invariants(integer)}


def phase_invariants(integer: bool) -> dict[str, StatePred]:
    """Algorithm 1's invariant, conjunct by conjunct, for reusing ``prop1.obligations()`` on the
    composed system; ``domain`` carries the rest of the composed invariant (a phase starts only
    where the pipeline's invariant says N - used >= 0)."""
    full = invariants(integer)
    out = dict(prop1.invariants(Alg1Options(integer_costs=integer)))
    dom = out["domain"]
    out["domain"] = lambda s: z3.And(dom(s), *[p(s) for p in full.values()])
    return out


# ---------------------------------------------------------------- obligations

def _starts(s: State, s2: State) -> Expr:
    return z3.And(s[PPC] == TOP, s2[PPC] == RUN)


def rank(s: State) -> Expr:
    """Ranking function of the pipeline: 5 per phase left, 2 per step left, and a location
    offset. Phase-end trades one phase (-5) for at most the TOP offset (+4); a phase start
    (TOP, +5 -> HEAD, +4) keeps the phase count and the steps left."""
    d = 2 * (s[GN] - s[USED] - z3.If(_run(s), s[V.nacc], 0))
    base = 5 * (s[P_NUM] - s[P_IDX]) + d
    loc = z3.If(s[V.pc] == HEAD, 4, z3.If(s[V.pc] == STEP, 5, z3.If(s[V.pc] == REJ, 3,
                                                                    z3.If(s[V.pc] == EXIT, 2, 1))))
    return z3.If(s[PPC] == DONE, 0, z3.If(s[PPC] == FIN, 1, z3.If(s[PPC] == TOP, base + 5, base + loc)))


def obligations(real_d: bool = False) -> list[Obligation]:
    """The pipeline obligations. ``real_d``: state P1d over rational costs (its ``real-costs``
    mutant checks the bound needs integers)."""
    C = cost_fn(Alg1Options())
    Cd = cost_fn(Alg1Options(integer_costs=not real_d))
    ALL = tuple(invariants(False))
    ALL_INT = tuple(invariants(True))

    def done(s: State) -> Expr:
        return s[PPC] == DONE

    def st_is(s: State, k: int) -> Expr:
        return z3.And(done(s), s[GSTATUS] == k)

    def is_init(s2: State) -> Expr:
        return alg1_init(Alg1Options(), V)(s2)

    return [
        Obligation(
            "alg10-P1a-induction", "KMR.alg10.prop1", "a10-p1a", ALL,
            state_props=(("C(M) <= C(M_0) in every state", lambda s: C(s[V.m]) <= s[GC0]),),
            step_props=(
                ("C(M) never increases, phase boundaries included",
                 lambda s, i, s2: C(s2[V.m]) <= C(s[V.m])),
                ("each accepted record of the pipeline lowers the last accepted cost strictly",
                 lambda s, i, s2: z3.Implies(s2[G_NACC] == s[G_NACC] + 1, z3.And(
                     s2[G_ACC_AFTER] < s[G_ACC_AFTER], s2[G_ACC_BEFORE] == s[G_ACC_AFTER]))),
            ),
            mutants=("no-carry", "le-for-lt"),
            summary="accepted costs strictly decrease across the whole pipeline, phase boundaries "
                    "included; C(M_out) <= C(M_0)"),
        Obligation(
            "alg10-P1b-induction", "KMR.alg10.prop1", "a10-p1b", ALL,
            state_props=(("pipeline accepted records <= N", lambda s: s[G_NACC] <= s[GN]),
                         ("phases run <= P", lambda s: s[STARTED] <= s[P_NUM])),
            rank=rank,
            mutants=("phase-limit-N", "no-phase-advance"),
            summary="at most N accepted steps in all, at most P phases; a ranking function "
                    "(5(P - p) + 2(N - accepted) + location) bounds every run; no deadlock"),
        Obligation(
            "alg10-P1c-induction", "KMR.alg10.prop1", "a10-p1c", ALL,
            state_props=(
                ("feasible <=> C(M_out) <= B",
                 lambda s: z3.Implies(done(s), (s[GSTATUS] == FEASIBLE) == (C(s[V.m]) <= s[V.B]))),
                ("step-limit => N accepted, C(M_out) > B",
                 lambda s: z3.Implies(st_is(s, STEP_LIMIT), z3.And(s[G_NACC] == s[GN], C(s[V.m]) > s[V.B]))),
                ("stalled => C(M_out) > B, < N accepted, the last phase's trace ends with its "
                 "rejected record, cost_after >= cost_before = C(M_out)",
                 lambda s: z3.Implies(st_is(s, STALLED), z3.And(
                     C(s[V.m]) > s[V.B], s[G_NACC] < s[GN], s[P_IDX] >= 1,
                     s[G_REJ_PHASE] == s[P_IDX] - 1, s[V.rej], s[V.nrec] == s[V.nacc] + 1,
                     s[V.rej_after] >= s[V.rej_before], s[V.rej_before] == C(s[V.m])))),
                ("policy-stop => C(M_out) > B, < N accepted, no rejected record in the last phase",
                 lambda s: z3.Implies(st_is(s, POLICY_STOP), z3.And(
                     C(s[V.m]) > s[V.B], s[G_NACC] < s[GN],
                     z3.Or(s[P_IDX] == 0, s[G_REJ_PHASE] < s[P_IDX] - 1)))),
                ("interrupted => C(M_out) > B, some phase ran",
                 lambda s: z3.Implies(st_is(s, INTERRUPTED), z3.And(C(s[V.m]) > s[V.B], s[P_IDX] >= 1))),
            ),
            mutants=("pipeline-feasible-lt", "no-step-limit-rule", "status-first-phase"),
            summary="each status of the pipeline says something true about M_out and the trace"),
        Obligation(
            "alg10-P1d-induction", "KMR.alg10.prop1", "a10-p1d", ALL_INT,
            state_props=(("pipeline #accepted <= C(M_0) - C(M)",
                          lambda s: s[G_NACC] <= s[GC0] - Cd(s[V.m])),),
            integer_costs=True,
            mutants=("no-carry", "real-costs"),
            summary="integer costs: accepted steps of the pipeline <= C(M_0) - C(M_out)"),
        Obligation(
            "alg10-P1e-induction", "KMR.alg10.prop1", "a10-p1e", ALL,
            state_props=(
                ("M_out is the last accepted model of the pipeline (M_0 if none)",
                 lambda s: z3.Implies(done(s), z3.And(s[V.m] == s[G_ACC_M], C(s[V.m]) == s[G_ACC_AFTER]))),
                ("at most one rejected record per phase that ran",
                 lambda s: s[G_NREJ] <= s[STARTED]),
            ),
            step_props=(
                ("no record follows a rejected record in the same phase",
                 lambda s, i, s2: z3.Implies(s2[G_NREC] != s[G_NREC], s[G_REJ_PHASE] != s[P_IDX])),),
            mutants=("no-carry", "stall-continues", "accept-before-check"),
            summary="the returned model is the last accepted one; each phase's trace holds at most "
                    "one rejected record, its last"),
        Obligation(
            "alg10-skip-induction", "KMR.alg10.skip", "a10-skip", ALL,
            step_props=(("a phase starts only when C(M) > B and fewer than N steps were accepted",
                         lambda s, i, s2: z3.Implies(_starts(s, s2), z3.And(
                             C(s[V.m]) > s[V.B], s[G_NACC] < s[GN]))),),
            mutants=("skip-ignores-feasible", "skip-ignores-used"),
            summary="no phase runs once C(M) <= B or N steps were accepted"),
        Obligation(
            "alg10-phase-break-induction", "KMR.alg10.phase-break", "a10-phase-break", ALL,
            state_props=(("the pipeline returns before its last phase only when feasible, out of "
                          "steps or interrupted",
                          lambda s: z3.Implies(z3.And(done(s), s[P_IDX] < s[P_NUM]), z3.Or(
                              C(s[V.m]) <= s[V.B], s[G_NACC] == s[GN], s[LAST] == INTERRUPTED))),
                         ("a stalled or stopped phase is followed by the next, if any is left",
                          lambda s: z3.Implies(z3.And(s[PPC] == TOP, s[P_IDX] >= 1),
                                               s[LAST] != INTERRUPTED))),
            mutants=("stall-ends-pipeline",),
            summary="a stall or a policy stop ends its phase only; an interrupt ends the pipeline"),
        Obligation(
            "alg10-phase-run-induction", "KMR.alg10.phase-run", "a10-phase-run", ALL,
            step_props=(("a phase starts in Algorithm 1's initial state (KMR.alg1.init, costs >= 0) "
                         "from the last accepted model, with step limit N - accepted",
                         lambda s, i, s2: z3.Implies(_starts(s, s2), z3.And(
                             z3.Implies(s2[V.c0] >= 0, is_init(s2)), s2[V.m] == s[G_ACC_M],
                             s2[V.N] == s[GN] - s[G_NACC]))),),
            mutants=("no-carry", "phase-limit-N"),
            summary="each phase is Algorithm 1 from the last accepted model with the remaining "
                    "step limit N - used"),
        Obligation(
            "alg10-status-induction", "KMR.alg10.status", "a10-status", ALL,
            state_props=(("returned status = feasible if C <= B, else step-limit if N accepted "
                          "(and not interrupted), else the last phase's (policy-stop if none ran)",
                          lambda s: z3.Implies(done(s), s[GSTATUS] == z3.If(
                              C(s[V.m]) <= s[V.B], z3.IntVal(FEASIBLE),
                              z3.If(z3.And(s[G_NACC] == s[GN], s[LAST] != INTERRUPTED), z3.IntVal(STEP_LIMIT),
                                    z3.If(s[P_IDX] == 0, z3.IntVal(POLICY_STOP), s[LAST]))))),
                         ("returned status is one of the five",
                          lambda s: z3.Implies(done(s), z3.And(s[GSTATUS] >= FEASIBLE,
                                                               s[GSTATUS] <= INTERRUPTED)))),
            mutants=("status-first-phase", "no-step-limit-rule", "pipeline-feasible-lt"),
            summary="the returned status is the one line 8 defines"),
    ]


def phase_obligations() -> list[Obligation]:
    """Proposition 1's obligations, reused unchanged on each phase of the pipeline (the ranking
    function of Algorithm 1 is replaced by the pipeline's, ``alg10-P1b``)."""
    out = []
    for ob in prop1.obligations():
        short = ob.id.removesuffix("-induction")
        out.append(dataclasses.replace(ob, id=f"alg10-phase-{short}", clause="KMR.alg10.phase-run",
                                       rank=None, summary=f"every phase keeps {short}: {ob.summary}"))
    return out


def prove(ob: Obligation, phase: bool = False) -> Outcome:
    integer = ob.integer_costs
    sys = alg10_system(Alg10Options(integer_costs=integer))
    inv = phase_invariants(integer) if phase else invariants(integer)
    return prop1.prove_obligation(ob, sys, inv, inv_tag="alg10-phase" if phase else "alg10")


def bounded(ob: Obligation, depth: int) -> Outcome:
    sys = alg10_system(Alg10Options(integer_costs=ob.integer_costs))
    r = ts.bmc(sys, depth, ob.state_props, ob.step_props)
    return Outcome(r.result, [ts.Check(f"bmc(depth={depth})", r.result, r.trace)], r.trace)


def refute(ob: Obligation, mutation: str, depth: int) -> prop1.Refutation:
    """The mutant must violate ``ob`` on a concrete run (BMC from an initial state)."""
    opts = Alg10Options(integer_costs=ob.integer_costs, mutation=mutation)
    sys = alg10_system(opts)
    if mutation == "real-costs" and ob.id == "alg10-P1d-induction":
        real = next(o for o in obligations(real_d=True) if o.id == ob.id)
        sp, st = list(real.state_props), list(real.step_props)
    else:
        sp, st = prop1._props_for(ob, opts.phase.int_sort)
    r = ts.bmc(sys, depth, sp, st)
    if r.result == "failed":
        return prop1.Refutation(True, r.trace, "bmc")
    return prop1.Refutation(False, f"no violation found by BMC to depth {depth} ({r.result})", "bmc")


def coverage(depth: int) -> tuple[str, str]:
    """Every command fires, every status is returned, and the runs the spec talks about exist:
    a phase stalls and the next one accepts (the paper's third experiment); a step accepted in
    a later phase; an interrupt after the N-th accepted step (returned as interrupted, not
    step-limit: ``KMR.alg10.status``, see proofs/README.md)."""
    sys_ = alg10_system(Alg10Options())
    goals: list[tuple[str, StepPred]] = []

    def fires(c: ts.Command) -> StepPred:
        return lambda s, i, s2: sys_.step_by(c, s, i, s2)

    def returns(code: int) -> StepPred:
        return lambda s, i, s2: z3.And(s2[PPC] == DONE, s2[GSTATUS] == code)

    goals += [(f"command {c.name}", fires(c)) for c in sys_.commands]
    goals += [(f"return {STATUS_NAMES[k]}", returns(k)) for k in range(1, len(STATUS_NAMES))]
    goals += [
        ("a phase accepts after the previous phase stalled",
         lambda s, i, s2: z3.And(s2[G_NACC] == s[G_NACC] + 1, s[P_IDX] >= 1, s[G_REJ_PHASE] == s[P_IDX] - 1)),
        ("return interrupted with N steps accepted",
         lambda s, i, s2: z3.And(s2[PPC] == DONE, s2[GSTATUS] == INTERRUPTED, s2[G_NACC] == s2[GN])),
        ("return after two phases ran", lambda s, i, s2: z3.And(s2[PPC] == DONE, s2[P_IDX] >= 2)),
    ]
    found = ts.cover(sys_, depth, goals)
    missing = [n for n, k in found.items() if k is None]
    if missing:
        return "failed", f"unreachable within {depth}: {', '.join(missing)}"
    return "proved", (f"all {len(sys_.commands)} commands fire, all 5 statuses are returned, a phase "
                      f"accepts after a stalled one, an interrupt after the N-th step is returned "
                      f"(runs of <= {max(k for k in found.values() if k is not None)} transitions)")

