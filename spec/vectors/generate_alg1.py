#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/alg1.json``: language-neutral vectors for Algorithm 1.

The expected values are computed by :func:`interpret`, a tiny interpreter written from the
algorithm box of ``spec/kmr.md`` §7 and the clauses it cites. It deliberately imports nothing
from ``kmr_ref`` (the code under test); ``tests/test_vectors.py`` runs the reference against
these files and regenerates them to compare bytes.

Usage: ``python spec/vectors/generate_alg1.py [OUT_DIR]`` (default: ``spec/vectors/0.1.0``).
Output is canonical JSON (``sort_keys=True, indent=1``, UTF-8, one trailing newline).

The toy world of a vector (see ``spec/vectors/README.md``):
- a model is an integer *state*; ``cost[state]`` is an exact number (JSON integer or ``"p/q"``);
  ``quality[state]`` a JSON number, or ``quality`` is null (no quality meter);
- the rule is a table ``transitions[state]["<knob>=<value>"] = next state``, where ``<value>`` is
  the canonical text of the normalized value (``3``, ``7/10``); a missing entry leaves the state
  unchanged (so the proposal's cost equals the current cost);
- the policy is ``scheduled`` (a fixed list of proposals) or ``greedy`` (a fixed candidate list).
"""

from __future__ import annotations

import json
import math
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

SPEC_VERSION = "0.1.0"
RATIONAL = re.compile(r"^-?(0|[1-9][0-9]*)(/[1-9][0-9]*)?$")

Json = Any


class VectorError(Exception):
    """An error Algorithm 1 must raise; ``name`` is the language-neutral error name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# --- exact numbers (KMR.exact.binary64) ----------------------------------------------------------

def exact(x: Json, err: str) -> Fraction:
    """JSON integer, ``"p/q"`` string, or JSON non-integer number (a binary64, denoting its
    shortest round-trip decimal). Booleans, NaN, infinities and anything else raise ``err``."""
    if isinstance(x, bool):
        raise VectorError(err)
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            raise VectorError(err)
        return Fraction(repr(x))  # Python's repr is the shortest round-trip decimal
    if isinstance(x, str) and RATIONAL.match(x):
        return Fraction(x)
    raise VectorError(err)


def canon(q: Fraction) -> Json:
    """Canonical JSON of an exact number: an integer, or ``"p/q"`` in lowest terms."""
    return q.numerator if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def canon_text(q: Fraction) -> str:
    return str(canon(q))


# --- the interpreter (spec/kmr.md §7, line by line) ---------------------------------------------

def check_value(knobs: list[Json], name: Json, value: Json) -> Fraction:
    """Line 6 (KMR.alg1.knob-domain, KMR.knob.unknown, KMR.knob.domain-*)."""
    for k in knobs:
        if k["name"] == name:
            break
    else:
        raise VectorError("KnobDomainError")
    v = exact(value, "KnobDomainError")
    d = k["domain"]
    if d["type"] == "finite":
        ok = any(v == exact(u, "KnobDomainError") for u in d["values"])
    elif d["type"] == "int":
        ok = v.denominator == 1 and d["lo"] <= v <= d["hi"]
    else:  # real
        ok = exact(d["lo"], "KnobDomainError") <= v <= exact(d["hi"], "KnobDomainError")
    if not ok:
        raise VectorError("KnobDomainError")
    return v


def rule(inp: Json, state: int, knob: str, v: Fraction) -> int:
    """T(M, k, v) of the table world; a missing entry leaves the state unchanged."""
    nxt: int = inp["transitions"].get(str(state), {}).get(f"{knob}={canon_text(v)}", state)
    return nxt


def cost(inp: Json, state: int) -> Fraction:
    c = exact(inp["cost"][str(state)], "MeterError")
    assert c >= 0
    return c


def quality(inp: Json, state: int) -> float | None:
    if inp["quality"] is None:
        return None
    q = inp["quality"][str(state)]
    assert isinstance(q, int | float) and not isinstance(q, bool)
    return float(q)


def policy(inp: Json, state: int, c: Fraction, q: float | None, t: int) -> tuple[str, Json] | None:
    """``KMR.policy.scheduled`` / ``KMR.policy.greedy`` / ``KMR.policy.greedy-ties``; None = Stop."""
    pol = inp["policy"]
    if pol["type"] == "scheduled":
        sched = pol["schedule"]
        return (sched[t]["knob"], sched[t]["value"]) if t < len(sched) else None
    best: tuple[Fraction, Fraction, int] | None = None
    for i, cand in enumerate(pol["candidates"]):
        v = check_value(inp["knobs"], cand["knob"], cand["value"])
        s2 = rule(inp, state, cand["knob"], v)
        c2 = cost(inp, s2)
        if c2 >= c:
            continue
        dc = c - c2
        q2 = quality(inp, s2)
        # exact rational arithmetic on the binary64 values of Q (Fraction(float) is exact)
        score = Fraction(0) if q is None or q2 is None else (Fraction(q2) - Fraction(q)) / dc
        # highest score, then larger cost decrease, then earliest: strict '>' keeps the earliest
        if best is None or (score, dc) > (best[0], best[1]):
            best = (score, dc, i)
    if best is None:
        return None
    chosen = pol["candidates"][best[2]]
    return chosen["knob"], chosen["value"]


def interpret(inp: Json) -> Json:
    """Algorithm 1 (Budgeted-KMR) on a table world; returns the ``expected`` object."""
    try:
        B = exact(inp["budget"], "BudgetError")  # line 0 (KMR.alg1.validate)
        N = inp["max_steps"]
        if isinstance(N, bool) or not isinstance(N, int) or N < 0:
            raise VectorError("BudgetError")
        state = inp["initial_state"]  # line 1
        c, q, t = cost(inp, state), quality(inp, state), 0
        trace: list[Json] = []
        status = None
        while c > B:  # line 2
            if t == N:  # line 3
                status = "step-limit"
                break
            p = policy(inp, state, c, q, t)  # line 4
            if p is None:  # line 5
                status = "policy-stop"
                break
            knob, value = p
            v = check_value(inp["knobs"], knob, value)  # line 6
            s2 = rule(inp, state, knob, v)  # line 7
            c2, q2 = cost(inp, s2), quality(inp, s2)  # line 8
            rec = {"t": t, "knob": knob, "value": canon(v), "cost_before": canon(c), "cost": canon(c2),
                   "quality": q2}
            if c2 < c:  # line 9
                trace.append({**rec, "accepted": True, "reason": "accepted"})  # line 10
                state, c, q = s2, c2, q2
            else:  # line 11
                trace.append({**rec, "accepted": False, "reason": "not-strictly-lower"})
                status = "stalled"
                break
            t += 1  # line 12
        if c <= B:  # line 13
            status = "feasible"
        return {"status": status, "final_state": state, "final_cost": canon(c), "final_quality": q,
                "trace": trace}
    except VectorError as e:
        return {"error": e.name}


# --- the vectors ---------------------------------------------------------------------------------

INT_KNOB = {"name": "s", "domain": {"type": "int", "lo": 0, "hi": 9}}
REAL_KNOB = {"name": "r", "domain": {"type": "real", "lo": 0, "hi": 1, "step": "1/4"}}
FIN_KNOB = {"name": "bits", "domain": {"type": "finite", "values": [8, 4, 2, "1/2"]}}


def chain(costs: list[Json], knob: str = "s") -> tuple[Json, Json]:
    """States 0..n-1; from state i, ``<knob>=i+1`` goes to state i+1."""
    trans = {str(i): {f"{knob}={i + 1}": i + 1} for i in range(len(costs) - 1)}
    return trans, {str(i): c for i, c in enumerate(costs)}


def sched(*vals: Json, knob: str = "s") -> Json:
    return {"type": "scheduled", "schedule": [{"knob": knob, "value": v} for v in vals]}


def vec(vid: str, clauses: list[str], description: str, *, costs: list[Json] | None = None,
        transitions: Json = None, cost: Json = None, quality: Json = None, policy: Json = None,
        budget: Json = 0, max_steps: Json = 10, knobs: list[Json] | None = None, initial_state: int = 0) -> Json:
    if costs is not None:
        transitions, cost = chain(costs)
    inp = {"knobs": knobs if knobs is not None else [INT_KNOB], "initial_state": initial_state,
           "transitions": transitions, "cost": cost, "quality": quality,
           "policy": policy if policy is not None else sched(*range(1, 10)),
           "budget": budget, "max_steps": max_steps}
    exp = interpret(inp)
    primary = PRIMARY[vid] if vid in PRIMARY else next(c for k, c in PRIMARY.items() if vid.startswith(k + "-"))
    feats = sorted({"greedy-policy" if inp["policy"]["type"] == "greedy" else "scheduled-policy"}
                   | ({"input-checks"} if "error" in exp else set()))
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *clauses}), "features": feats,
            "description": description, "input": inp, "expected": exp, "tolerance": None}


# The clause each vector is built to test (the report blames only it); a key may be an id prefix.
PRIMARY = {
    "alg1-feasible-at-once": "KMR.alg1.loop-guard", "alg1-feasible-after-steps": "KMR.alg1.feasible",
    "alg1-feasible-exactly-at-budget": "KMR.budget.def", "alg1-feasible-n0": "KMR.alg1.feasible",
    "alg1-stalled-equal-cost": "KMR.alg1.strict-progress", "alg1-stalled-cost-increase": "KMR.alg1.early-break",
    "alg1-stalled-missing-transition": "KMR.alg1.early-break",
    "alg1-stalled-just-above-budget": "KMR.alg1.strict-progress",
    "alg1-stalled-negative-budget": "KMR.budget.def", "alg1-step-limit": "KMR.alg1.step-limit",
    "alg1-step-limit-n0": "KMR.alg1.step-limit", "alg1-policy-stop-empty-schedule": "KMR.alg1.policy-stop",
    "alg1-policy-stop-exhausted": "KMR.policy.scheduled", "alg1-rational-costs": "KMR.meter.cost-exact",
    "alg1-rational-costs-tiny-gap": "KMR.meter.cost-exact", "alg1-float-budget-binary64": "KMR.exact.binary64",
    "alg1-float-budget-not-below": "KMR.exact.binary64", "alg1-real-knob-values": "KMR.knob.domain-real",
    "alg1-int-knob-float-spelling": "KMR.knob.domain-int", "alg1-finite-knob": "KMR.knob.domain-finite",
    "alg1-error-unknown-knob": "KMR.knob.unknown", "alg1-error-int-out-of-range": "KMR.knob.domain-int",
    "alg1-error-int-not-integer": "KMR.knob.domain-int", "alg1-error-bool-value": "KMR.knob.domain",
    "alg1-error-real-out-of-range": "KMR.knob.domain-real", "alg1-error-finite-non-member": "KMR.knob.domain-finite",
    "alg1-error-budget": "KMR.alg1.validate", "alg1-error-n": "KMR.alg1.validate",
    "alg1-greedy-no-quality-largest-decrease": "KMR.policy.greedy-ties",
    "alg1-greedy-score-beats-decrease": "KMR.policy.greedy",
    "alg1-greedy-score-tie-larger-decrease": "KMR.policy.greedy-ties",
    "alg1-greedy-full-tie-earliest": "KMR.policy.greedy-ties",
    "alg1-greedy-binary64-score": "KMR.policy.greedy", "alg1-greedy-negative-scores": "KMR.policy.greedy",
    "alg1-greedy-policy-stop": "KMR.policy.stop",
}


P1 = ["KMR.prop1.monotone", "KMR.prop1.termination", "KMR.prop1.status-truthful",
      "KMR.prop1.integer-bound", "KMR.prop1.last-accepted", "KMR.trace.record", "KMR.alg1.status"]
LOOP = ["KMR.alg1.init", "KMR.alg1.loop-guard", "KMR.alg1.propose", "KMR.alg1.apply", "KMR.alg1.measure",
        "KMR.alg1.strict-progress", "KMR.alg1.accept", "KMR.alg1.step", "KMR.alg1.return",
        "KMR.policy.scheduled", "KMR.meter.cost-exact", "KMR.budget.def"]


def vectors() -> list[Json]:
    v: list[Json] = []
    # --- feasible -------------------------------------------------------------------------------
    v.append(vec("alg1-feasible-at-once", ["KMR.alg1.init", "KMR.alg1.loop-guard", "KMR.alg1.feasible",
                                           "KMR.alg1.return", "KMR.budget.def", *P1],
                 "C(M_0) = B: feasible at once, no step, empty trace.", costs=[5, 3], budget=5))
    v.append(vec("alg1-feasible-after-steps", [*LOOP, "KMR.alg1.feasible", *P1],
                 "Three strictly decreasing steps reach C <= B.", costs=[20, 15, 11, 8, 2], budget=10))
    v.append(vec("alg1-feasible-exactly-at-budget", [*LOOP, "KMR.alg1.feasible", "KMR.budget.def", *P1],
                 "The last step lands on C = B exactly: feasible (C <= B).", costs=[9, 7, 6], budget=6))
    v.append(vec("alg1-feasible-n0", ["KMR.alg1.validate", "KMR.alg1.step-limit", "KMR.alg1.feasible", *P1],
                 "N = 0 and C(M_0) <= B: feasible, not step-limit.", costs=[4, 1], budget=4, max_steps=0))
    # --- stalled (early break) ------------------------------------------------------------------
    v.append(vec("alg1-stalled-equal-cost", [*LOOP, "KMR.alg1.early-break", *P1],
                 "After one accepted step, a proposal with equal cost is rejected: stalled.",
                 costs=[20, 15, 15, 1], budget=10))
    v.append(vec("alg1-stalled-cost-increase", [*LOOP, "KMR.alg1.early-break", *P1],
                 "A proposal that raises cost is rejected; the rejected state is never returned.",
                 costs=[20, 15, 18, 1], budget=10))
    v.append(vec("alg1-stalled-missing-transition", [*LOOP, "KMR.alg1.early-break", *P1],
                 "No table entry: the rule leaves the state unchanged, equal cost, stalled at t = 0.",
                 transitions={}, cost={"0": 12}, budget=10))
    v.append(vec("alg1-stalled-just-above-budget",
                 [*LOOP, "KMR.alg1.early-break", "KMR.meter.quality", *P1],
                 "C(M) = B + 1 and the proposal keeps C(M') = C(M) with a far better quality: still "
                 "rejected (strict progress only; quality never decides). Note: C(M) <= C(M') <= B "
                 "cannot occur inside the loop since the guard gives C(M) > B.",
                 costs=[13, 11, 11], quality={"0": 0.25, "1": 0.5, "2": 0.99}, budget=10))
    v.append(vec("alg1-stalled-negative-budget", [*LOOP, "KMR.alg1.early-break", "KMR.budget.def", *P1],
                 "B = -1 is admissible but unreachable: costs fall to 0, then the next proposal "
                 "cannot lower cost.", costs=[3, 1, 0], budget=-1))
    # --- step-limit -----------------------------------------------------------------------------
    v.append(vec("alg1-step-limit", [*LOOP, "KMR.alg1.step-limit", *P1],
                 "N = 2 accepted steps, still above budget: step-limit.",
                 costs=[20, 15, 11, 8, 2], budget=5, max_steps=2))
    v.append(vec("alg1-step-limit-n0", ["KMR.alg1.validate", "KMR.alg1.step-limit", *P1],
                 "N = 0 and C(M_0) > B: step-limit with an empty trace.", costs=[20, 1], budget=5, max_steps=0))
    # --- policy-stop ----------------------------------------------------------------------------
    v.append(vec("alg1-policy-stop-empty-schedule", ["KMR.alg1.policy-stop", "KMR.policy.stop",
                                                     "KMR.policy.scheduled", *P1],
                 "An empty schedule stops at once.", costs=[20, 1], budget=5, policy=sched()))
    v.append(vec("alg1-policy-stop-exhausted", [*LOOP, "KMR.alg1.policy-stop", "KMR.policy.stop", *P1],
                 "The schedule is exhausted after two accepted steps.",
                 costs=[20, 15, 11, 2], budget=5, policy=sched(1, 2)))
    # --- exact numbers --------------------------------------------------------------------------
    v.append(vec("alg1-rational-costs", [*LOOP, "KMR.alg1.feasible", "KMR.meter.cost-exact", *P1],
                 "Rational costs and budget compared exactly: 21/2 > 41/4 > 19/2 = B.",
                 costs=["21/2", "41/4", "19/2", 0], budget="19/2"))
    v.append(vec("alg1-rational-costs-tiny-gap", [*LOOP, "KMR.alg1.step-limit", *P1],
                 "C = 1000001/100000 exceeds B = 10 by 1/100000: not feasible (step-limit at N = 1).",
                 costs=[11, "1000001/100000", 10], budget=10, max_steps=1))
    v.append(vec("alg1-float-budget-binary64", ["KMR.exact.binary64", "KMR.alg1.validate", *LOOP,
                                                "KMR.alg1.feasible", *P1],
                 "B given as the binary64 0.7 denotes 7/10, so C = 7/10 is feasible (the binary value "
                 "0.6999999999999999555910790149937... would make it infeasible).",
                 costs=[2, "7/10", 0], budget=0.7))
    v.append(vec("alg1-float-budget-not-below", ["KMR.exact.binary64", "KMR.alg1.validate", *LOOP, *P1],
                 "B given as the binary64 0.1 denotes 1/10: C = 1/10 + 1/10^18 is not feasible (it is "
                 "below the binary value 0.1000000000000000055511151231257827...).",
                 costs=[1, "100000000000000001/1000000000000000000", "1/20"], budget=0.1, max_steps=1))
    # --- knob values ----------------------------------------------------------------------------
    real_trans = {"0": {"r=1/10": 1}, "1": {"r=1/4": 2}, "2": {"r=1/3": 3}}
    v.append(vec("alg1-real-knob-values", ["KMR.alg1.knob-domain", "KMR.exact.binary64", "KMR.knob.domain-real",
                                           *LOOP, *P1],
                 "Values of a real knob: the binary64 0.1 is 1/10, 0.25 is 1/4, the string 1/3 is exact; "
                 "records carry the normalized value.",
                 knobs=[REAL_KNOB], transitions=real_trans, cost={"0": 9, "1": 7, "2": 5, "3": 1},
                 policy=sched(0.1, 0.25, "1/3", knob="r"), budget=1))
    v.append(vec("alg1-int-knob-float-spelling", ["KMR.alg1.knob-domain", "KMR.exact.binary64",
                                                  "KMR.knob.domain-int", *LOOP, *P1],
                 "The binary64 2.0 spells the integer 2 for an int knob; the record carries 2.",
                 transitions={"0": {"s=2": 1}}, cost={"0": 9, "1": 4}, policy=sched(2.0), budget=5))
    v.append(vec("alg1-finite-knob", ["KMR.alg1.knob-domain", "KMR.knob.domain-finite", *LOOP, *P1],
                 "A finite domain [8, 4, 2, 1/2]; the binary64 0.5 is the member 1/2.",
                 knobs=[FIN_KNOB], transitions={"0": {"bits=4": 1}, "1": {"bits=1/2": 2}},
                 cost={"0": 32, "1": 16, "2": 2}, policy=sched(4, 0.5, knob="bits"), budget=2))
    # --- errors ---------------------------------------------------------------------------------
    for vid, clauses, desc, pol, knobs in [
        ("alg1-error-unknown-knob", ["KMR.knob.unknown"], "A proposal naming a knob the rule does not have.",
         {"type": "scheduled", "schedule": [{"knob": "s", "value": 1}, {"knob": "nope", "value": 1}]}, None),
        ("alg1-error-int-out-of-range", ["KMR.knob.domain", "KMR.knob.domain-int"], "10 is outside 0..9.",
         sched(1, 10), None),
        ("alg1-error-int-not-integer", ["KMR.knob.domain", "KMR.knob.domain-int", "KMR.exact.binary64"],
         "3.5 is not an integer.", sched(3.5), None),
        ("alg1-error-bool-value", ["KMR.knob.domain", "KMR.exact.binary64"], "A boolean is not a knob value.",
         sched(True), None),
        ("alg1-error-real-out-of-range", ["KMR.knob.domain", "KMR.knob.domain-real"], "5/4 is outside [0, 1].",
         sched("5/4", knob="r"), [REAL_KNOB]),
        ("alg1-error-finite-non-member", ["KMR.knob.domain", "KMR.knob.domain-finite"], "3 is not a member.",
         sched(3, knob="bits"), [FIN_KNOB]),
    ]:
        v.append(vec(vid, ["KMR.alg1.knob-domain", "KMR.error.names-clause", *clauses],
                     desc + " Algorithm 1 raises KnobDomainError before the rule runs.",
                     costs=[20, 15, 11], budget=5, policy=pol, knobs=knobs))
    for vid, budget, n, desc in [
        ("alg1-error-budget-not-rational", "abc", 3, "The budget string is not a rational."),
        ("alg1-error-budget-bool", True, 3, "A boolean budget."),
        ("alg1-error-n-negative", 5, -1, "N = -1."),
        ("alg1-error-n-float", 5, 1.5, "N = 1.5."),
        ("alg1-error-n-bool", 5, True, "N = true."),
    ]:
        v.append(vec(vid, ["KMR.alg1.validate", "KMR.error.names-clause", "KMR.exact.binary64"],
                     desc + " Algorithm 1 raises BudgetError before any rule runs.",
                     costs=[20, 15], budget=budget, max_steps=n))
    # --- greedy ---------------------------------------------------------------------------------
    greedy_knobs = [{"name": "a", "domain": {"type": "int", "lo": 0, "hi": 9}}]
    cands = {"type": "greedy", "candidates": [{"knob": "a", "value": i} for i in range(1, 5)]}
    G = ["KMR.policy.greedy", "KMR.policy.greedy-ties", "KMR.alg1.propose", *P1]
    v.append(vec("alg1-greedy-no-quality-largest-decrease", [*G, "KMR.alg1.feasible"],
                 "No quality meter: score 0 for all, so the largest decrease wins; a=2 and a=3 tie on "
                 "decrease 5 and the earlier (a=2) wins; a=4 raises cost and is dropped.",
                 knobs=greedy_knobs, transitions={"0": {"a=1": 1, "a=2": 2, "a=3": 3, "a=4": 4},
                                                  "2": {"a=1": 5}},
                 cost={"0": 20, "1": 18, "2": 15, "3": 15, "4": 25, "5": 9}, policy=cands, budget=10))
    v.append(vec("alg1-greedy-score-beats-decrease", [*G, "KMR.meter.quality", "KMR.alg1.feasible"],
                 "Q(M)=0.5. a=1: dC=1, Q'=0.75 (score 1/4); a=2: dC=4, Q'=0.5 (score 0): a=1 wins.",
                 knobs=greedy_knobs, transitions={"0": {"a=1": 1, "a=2": 2}},
                 cost={"0": 12, "1": 11, "2": 8}, quality={"0": 0.5, "1": 0.75, "2": 0.5},
                 policy=cands, budget=11))
    v.append(vec("alg1-greedy-score-tie-larger-decrease", [*G, "KMR.meter.quality", "KMR.alg1.feasible"],
                 "Q(M)=0.5. a=1: dC=1, Q'=0.75; a=2: dC=2, Q'=1 -> both score exactly 1/4: the larger "
                 "decrease (a=2) wins.",
                 knobs=greedy_knobs, transitions={"0": {"a=1": 1, "a=2": 2}},
                 cost={"0": 12, "1": 11, "2": 10}, quality={"0": 0.5, "1": 0.75, "2": 1.0},
                 policy=cands, budget=11))
    v.append(vec("alg1-greedy-full-tie-earliest", [*G, "KMR.meter.quality", "KMR.alg1.feasible"],
                 "The candidate list is [a=3, a=1, a=2]; a=3 and a=1 lead to states of equal cost and "
                 "quality: the earlier in the list (a=3) wins, whatever the values.",
                 knobs=greedy_knobs, transitions={"0": {"a=1": 1, "a=3": 3, "a=2": 2}},
                 cost={"0": 12, "1": 9, "2": 11, "3": 9}, quality={"0": 0.5, "1": 0.5, "2": 0.25, "3": 0.5},
                 policy={"type": "greedy", "candidates": [{"knob": "a", "value": 3}, {"knob": "a", "value": 1},
                                                          {"knob": "a", "value": 2}]}, budget=10))
    v.append(vec("alg1-greedy-binary64-score", [*G, "KMR.meter.quality", "KMR.alg1.feasible"],
                 "Scores use the exact binary64 values of Q: Q(M)=0; a=1: dC=1, Q'=0.1; a=2: dC=3, "
                 "Q'=0.3. As binary64, 0.1/1 > 0.3/3 (0.3 is just below 3 x 0.1), so a=1 wins; "
                 "with decimal values they would tie and a=2 would win on decrease.",
                 knobs=greedy_knobs, transitions={"0": {"a=1": 1, "a=2": 2}},
                 cost={"0": 12, "1": 11, "2": 9}, quality={"0": 0.0, "1": 0.1, "2": 0.3},
                 policy=cands, budget=11))
    v.append(vec("alg1-greedy-negative-scores", [*G, "KMR.meter.quality", "KMR.alg1.step-limit"],
                 "All candidates lose quality; the least loss per unit of cost wins at each step "
                 "(-1/10 beats -1/6, then -1/6 beats -1/4); N = 2 ends it.",
                 knobs=greedy_knobs,
                 transitions={"0": {"a=1": 1, "a=2": 2}, "2": {"a=1": 3, "a=2": 4}},
                 cost={"0": 30, "1": 27, "2": 20, "3": 17, "4": 12},
                 quality={"0": 1.0, "1": 0.5, "2": 0.0, "3": -0.5, "4": -2.0},
                 policy=cands, budget=10, max_steps=2))
    v.append(vec("alg1-greedy-policy-stop", [*G, "KMR.alg1.policy-stop", "KMR.policy.stop"],
                 "After one step no candidate lowers cost: greedy stops (never stalled).",
                 knobs=greedy_knobs, transitions={"0": {"a=1": 1}, "1": {"a=2": 2}},
                 cost={"0": 20, "1": 15, "2": 15}, policy=cands, budget=10))
    ids = [x["id"] for x in v]
    assert len(ids) == len(set(ids)), "duplicate vector id"
    return v


def document() -> Json:
    return {
        "kind": "alg1",
        "spec_version": SPEC_VERSION,
        "generator": "spec/vectors/generate_alg1.py",
        "description": "Algorithm 1 (Budgeted-KMR, spec/kmr.md §7) on table worlds: integer states, "
                       "a transition table as the rule, exact cost tables. See spec/vectors/README.md.",
        "vectors": vectors(),
    }


def dump(doc: Json) -> bytes:
    """Canonical bytes: sorted keys, indent 1, UTF-8, one trailing newline."""
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / SPEC_VERSION
    out.mkdir(parents=True, exist_ok=True)
    (out / "alg1.json").write_bytes(dump(document()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
