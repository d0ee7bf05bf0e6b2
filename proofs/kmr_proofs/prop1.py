"""Proposition 1 (``spec/kmr.md`` §8) as proof obligations over an acceptance-loop system.

Each obligation is: a clause ID, the invariant conjuncts it needs (its *support*), state
properties, step properties and (P1b) a ranking function. ``prove_obligation`` discharges it by
induction over ALL states (initiation, consecution, implication), which is an unbounded proof;
``bounded_obligation`` checks the same properties by bounded model checking from the initial
states (a second, independent check); ``refute`` runs a mutant of the encoding and expects a
concrete counterexample run.

Obligations are functions of an :class:`~kmr_proofs.alg1.Alg1Options` and a
:class:`~kmr_proofs.alg1.Vocab` — one obligation set per algorithm, parameterized, not copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import z3

from kmr_proofs import ts
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
    STEP,
    STEP_LIMIT,
    Alg1Options,
    V,
    Vocab,
    alg1_system,
    at,
    cost_fn,
)
from kmr_proofs.ts import Expr, State, StatePred, StepPred


def invariants(opts: Alg1Options, v: Vocab = V) -> dict[str, StatePred]:
    """Named conjuncts of the inductive invariant of Algorithm 1."""
    C = cost_fn(opts)

    def a(s: State, *locs: int) -> Expr:
        return at(s, *locs, v=v)

    inv: dict[str, StatePred] = {
        "domain": lambda s: z3.And(s[v.pc] >= HEAD, s[v.pc] <= RET, s[v.status] >= NONE,
                                   s[v.status] <= INTERRUPTED, s[v.N] >= 0, s[v.t] >= 0),
        "t-le-N": lambda s: s[v.t] <= s[v.N],
        "cache": lambda s: s[v.c] == C(s[v.m]),
        "last-accepted": lambda s: z3.And(s[v.m] == s[v.acc_m], s[v.c] == s[v.acc_after]),
        "monotone": lambda s: s[v.c] <= s[v.c0],
        "count": lambda s: z3.And(
            s[v.nacc] >= 0, s[v.nacc] <= s[v.N],
            z3.Implies(a(s, STEP), z3.And(s[v.nacc] == s[v.t] + 1, s[v.t] < s[v.N])),
            z3.Implies(a(s, HEAD, REJ), s[v.nacc] == s[v.t]),
            z3.Implies(a(s, EXIT, RET), z3.Or(s[v.nacc] == s[v.t], s[v.nacc] == s[v.t] + 1))),
        "records": lambda s: s[v.nrec] == s[v.nacc] + z3.If(s[v.rej], 1, 0),
        "rejected": lambda s: z3.And(
            z3.Implies(s[v.rej], z3.And(a(s, REJ, EXIT, RET), s[v.rej_after] >= s[v.rej_before],
                                        s[v.rej_before] == s[v.c], s[v.c] > s[v.B],
                                        s[v.rej_after] == C(s[v.rej_m]))),
            z3.Implies(a(s, REJ), s[v.rej])),
        "status-loc": lambda s: z3.And(z3.Implies(a(s, HEAD, STEP, REJ), s[v.status] == NONE),
                                       z3.Implies(a(s, RET), s[v.status] != NONE)),
        "status-meaning": lambda s: z3.And(
            z3.Implies(s[v.status] == STALLED, z3.And(s[v.rej], s[v.c] > s[v.B])),
            z3.Implies(s[v.status] == STEP_LIMIT, z3.And(z3.Not(s[v.rej]), s[v.t] == s[v.N],
                                                         s[v.nacc] == s[v.N], s[v.c] > s[v.B])),
            z3.Implies(s[v.status] == POLICY_STOP, z3.And(z3.Not(s[v.rej]), s[v.c] > s[v.B])),
            z3.Implies(z3.And(s[v.status] == INTERRUPTED, a(s, RET)), s[v.c] > s[v.B]),
            z3.Implies(s[v.status] == FEASIBLE, z3.And(a(s, RET), s[v.c] <= s[v.B])),
            z3.Implies(z3.And(a(s, EXIT), s[v.status] == NONE), z3.And(s[v.c] <= s[v.B], z3.Not(s[v.rej])))),
    }
    if opts.integer_costs:  # P1d needs integer costs (KMR.meter.cost-exact, integer meters)
        inv["integer-bound"] = lambda s: s[v.nacc] <= s[v.c0] - s[v.c]
    return inv


@dataclass(frozen=True)
class Obligation:
    id: str
    clause: str
    anchor: str  # proofs/README.md#<anchor>
    support: tuple[str, ...]
    state_props: tuple[tuple[str, StatePred], ...] = ()
    step_props: tuple[tuple[str, StepPred], ...] = ()
    rank: Callable[[State], Expr] | None = None
    integer_costs: bool = False
    mutants: tuple[str, ...] = field(default=())
    summary: str = ""


def obligations(v: Vocab = V) -> list[Obligation]:
    """P1a-P1e and the status totality of Algorithm 1, each with the mutants that must fail it."""

    def ret(s: State) -> Expr:
        return at(s, RET, v=v)

    def Cof(integer: bool) -> Callable[[Expr], Expr]:
        return cost_fn(Alg1Options(integer_costs=integer))  # type: ignore[no-any-return]

    C = Cof(False)
    Ci = Cof(True)

    def rank(s: State) -> Expr:
        # HEAD(t) > STEP(t) > HEAD(t+1); REJ, EXIT, RET below every loop location
        return z3.If(s[v.pc] == HEAD, 2 * (s[v.N] - s[v.t]) + 3,
                     z3.If(s[v.pc] == STEP, 2 * (s[v.N] - s[v.t]) + 2,
                           z3.If(s[v.pc] == REJ, 2, z3.If(s[v.pc] == EXIT, 1, 0))))

    return [
        Obligation(
            "P1a-induction", "KMR.prop1.monotone", "p1a",
            ("domain", "cache", "last-accepted", "monotone"),
            state_props=(("C(M_t) <= C(M_0)", lambda s: C(s[v.m]) <= s[v.c0]),),
            step_props=(
                ("C(M_t+1) <= C(M_t)", lambda s, i, s2: C(s2[v.m]) <= C(s[v.m])),
                ("accepted costs strictly decrease",
                 lambda s, i, s2: z3.Implies(s2[v.nacc] == s[v.nacc] + 1,
                                             z3.And(s2[v.acc_after] < s[v.acc_after],
                                                    s2[v.acc_before] == s[v.acc_after]))),
            ),
            mutants=("drop-strict", "le-for-lt", "accept-before-check"),
            summary="accepted costs strictly decrease; C(M_t) non-increasing; C(M_out) <= C(M_0)"),
        Obligation(
            "P1b-induction", "KMR.prop1.termination", "p1b",
            ("domain", "t-le-N", "count"),
            state_props=(("t <= N", lambda s: s[v.t] <= s[v.N]),
                         ("accepted records <= N", lambda s: s[v.nacc] <= s[v.N])),
            rank=rank,
            mutants=("off-by-one-N", "no-step"),
            summary="t <= N and #accepted <= N in every reachable state; a ranking function "
                    "bounds every run by 2N+3 transitions; no deadlock before return"),
        Obligation(
            "P1c-induction", "KMR.prop1.status-truthful", "p1c",
            ("domain", "t-le-N", "count", "cache", "records", "rejected", "status-loc", "status-meaning"),
            state_props=(
                ("feasible => C(M_out) <= B",
                 lambda s: z3.Implies(z3.And(ret(s), s[v.status] == FEASIBLE), C(s[v.m]) <= s[v.B])),
                ("C(M_out) <= B => feasible",
                 lambda s: z3.Implies(z3.And(ret(s), C(s[v.m]) <= s[v.B]), s[v.status] == FEASIBLE)),
                ("stalled => last record rejected, C' >= C = C(M_out) > B",
                 lambda s: z3.Implies(z3.And(ret(s), s[v.status] == STALLED), z3.And(
                     s[v.rej], s[v.nrec] == s[v.nacc] + 1, s[v.rej_after] >= s[v.rej_before],
                     s[v.rej_before] == C(s[v.m]), C(s[v.m]) > s[v.B]))),
                ("step-limit => N accepted records, C(M_out) > B",
                 lambda s: z3.Implies(z3.And(ret(s), s[v.status] == STEP_LIMIT), z3.And(
                     s[v.nacc] == s[v.N], s[v.nrec] == s[v.N], C(s[v.m]) > s[v.B]))),
                ("policy-stop => C(M_out) > B, no rejected record",
                 lambda s: z3.Implies(z3.And(ret(s), s[v.status] == POLICY_STOP),
                                      z3.And(C(s[v.m]) > s[v.B], z3.Not(s[v.rej])))),
                ("interrupted => C(M_out) > B",
                 lambda s: z3.Implies(z3.And(ret(s), s[v.status] == INTERRUPTED), C(s[v.m]) > s[v.B])),
            ),
            mutants=("feasible-lt", "feasible-only-if-unset", "accept-before-check"),
            summary="each exit status says something true about M_out and the trace"),
        Obligation(
            "alg1-status-induction", "KMR.alg1.status", "status",
            ("domain", "t-le-N", "count", "records", "rejected", "status-loc", "status-meaning"),
            state_props=(("returned status is one of the five",
                          lambda s: z3.Implies(ret(s), z3.And(s[v.status] >= FEASIBLE,
                                                              s[v.status] <= INTERRUPTED))),),
            mutants=("no-feasible-check",),
            summary="the returned status is exactly one of feasible, stalled, step-limit, "
                    "policy-stop, interrupted"),
        Obligation(
            "P1d-induction", "KMR.prop1.integer-bound", "p1d",
            ("cache", "integer-bound"),
            state_props=(("#accepted <= C(M_0) - C(M_t)",
                          lambda s: s[v.nacc] <= s[v.c0] - Ci(s[v.m])),),
            integer_costs=True,
            mutants=("le-for-lt", "real-costs"),
            summary="integer costs: #accepted steps <= C(M_0) - C(M_out)"),
        Obligation(
            "P1e-induction", "KMR.prop1.last-accepted", "p1e",
            ("cache", "last-accepted", "rejected"),
            state_props=(
                ("M_out is the last accepted model (M_0 if none)",
                 lambda s: z3.Implies(ret(s), s[v.m] == s[v.acc_m])),
                ("C(M_out) = cost_after of the last accepted record (C(M_0) if none)",
                 lambda s: z3.Implies(ret(s), C(s[v.m]) == s[v.acc_after])),
                ("a rejected proposal never raises C(M_out)",
                 lambda s: z3.Implies(z3.And(ret(s), s[v.rej]),
                                      z3.And(C(s[v.m]) == s[v.rej_before], C(s[v.m]) <= s[v.rej_after]))),
            ),
            mutants=("accept-before-check",),
            summary="the returned model is the last accepted one; no rejected proposal survives"),
    ]


def _props_for(ob: Obligation, integer: bool) -> tuple[list[tuple[str, StatePred]], list[tuple[str, StepPred]]]:
    """Re-typed properties when the system's cost sort differs from the obligation's (the
    ``real-costs`` mutant of P1d): properties name the cost function of their own system."""
    if ob.integer_costs and not integer:
        C = cost_fn(Alg1Options())
        return [(n, lambda s: s[V.nacc] <= s[V.c0] - C(s[V.m])) for n, _ in ob.state_props], []
    return list(ob.state_props), list(ob.step_props)


@dataclass
class Outcome:
    result: str  # proved | failed | unknown
    checks: list[ts.Check]
    detail: str = ""


def prove_obligation(ob: Obligation, sys: ts.System | None = None,
                     inv: dict[str, StatePred] | None = None, inv_tag: str = "") -> Outcome:
    """Induction over all states; for P1b also the ranking function and no-deadlock.

    ``sys`` / ``inv`` default to Algorithm 1 and its invariant; a composed algorithm passes its
    own system and invariant (with the same conjunct names) to reuse the obligation. With an
    ``inv_tag`` naming ``inv`` (the same tag always for the same invariant), the initiation and
    consecution checks of a support already proved on the same system are reused, not redone
    (their results are copied into this outcome)."""
    opts = Alg1Options(integer_costs=ob.integer_costs)
    sys = sys if sys is not None else alg1_system(opts)
    inv = inv if inv is not None else invariants(opts)
    support = [(n, inv[n]) for n in ob.support]
    key = (sys.name, inv_tag, ob.support)
    if inv_tag and key in _INDUCTIVE:
        base = [ts.Check(c.name, c.result, c.detail) for c in _INDUCTIVE[key]]
    else:
        base = ts.inductive(sys, support)
        if inv_tag:
            _INDUCTIVE[key] = base
    checks = base + ts.implications(sys, support, ob.state_props, ob.step_props)
    if ob.rank is not None:
        checks += ts.ranking(sys, support, ob.rank)
    checks.append(ts.deterministic(sys))
    return _summarize(checks)


_INDUCTIVE: dict[tuple[str, str, tuple[str, ...]], list[ts.Check]] = {}


def bounded_obligation(ob: Obligation, depth: int) -> Outcome:
    """The same properties by BMC on the unmutated system (every run of <= depth transitions)."""
    opts = Alg1Options(integer_costs=ob.integer_costs)
    sys = alg1_system(opts)
    r = ts.bmc(sys, depth, ob.state_props, ob.step_props)
    return Outcome(r.result, [ts.Check(f"bmc(depth={depth})", r.result, r.trace)], r.trace)


@dataclass
class Refutation:
    refuted: bool
    counterexample: str
    how: str  # "bmc" (a concrete run) or "induction" (only a counterexample to induction)


def refute(ob: Obligation, mutation: str, depth: int) -> Refutation:
    """Mutant ``mutation`` of the encoding must violate ``ob``: BMC finds a concrete run."""
    opts = Alg1Options(integer_costs=ob.integer_costs, mutation=mutation)
    sys = alg1_system(opts)
    sp, st = _props_for(ob, opts.int_sort)
    r = ts.bmc(sys, depth, sp, st)
    if r.result == "failed":
        return Refutation(True, r.trace, "bmc")
    return Refutation(False, f"no violation found by BMC to depth {depth} ({r.result})", "bmc")


def _summarize(checks: list[ts.Check]) -> Outcome:
    bad = [c for c in checks if c.result != "proved"]
    if not bad:
        return Outcome("proved", checks)
    res = "failed" if any(c.result == "failed" for c in bad) else "unknown"
    return Outcome(res, checks, "; ".join(f"{c.name}: {c.result} {c.detail}" for c in bad))
