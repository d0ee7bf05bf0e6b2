#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/alg10.json``: language-neutral vectors for Algorithm 10.

The expected values come from :func:`interpret`, written from the box of ``spec/kmr.md`` §9: each
phase is the Algorithm 1 interpreter of ``generate_alg1.py`` (itself written from §7, and importing
nothing from ``kmr_ref``) on the phase's table world, with the shared cost and quality tables, the
pipeline's budget and the remaining step limit. Nothing here imports ``kmr_ref``.

Usage: ``python spec/vectors/generate_alg10.py [OUT_DIR]`` (default: ``spec/vectors/0.1.0``).

The world of a vector (``kind: alg10``): ``initial_state``, shared ``cost`` / ``quality`` tables
(``KMR.alg10.shared-cost``), ``budget``, ``max_steps``, and ``phases``: ``[{"name", "knobs",
"transitions", "policy"}]`` in pipeline order, each shaped like an ``alg1`` world.
``expected``: ``{"status", "final_state", "final_cost", "final_quality", "phases": [{"name",
"status", "steps"}], "trace": [alg1 records + "phase"]}`` or ``{"error": "BudgetError"}``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_generate_alg1", HERE / "generate_alg1.py")
assert _spec is not None and _spec.loader is not None
A1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(A1)

SPEC_VERSION = A1.SPEC_VERSION
Json = Any


def interpret(inp: Json) -> Json:
    """Algorithm 10 (Composed-KMR) on table worlds, line by line."""
    try:
        B = A1.exact(inp["budget"], "BudgetError")  # validated as Algorithm 1 line 0
        N = inp["max_steps"]
        if isinstance(N, bool) or not isinstance(N, int) or N < 0:
            raise A1.VectorError("BudgetError")
    except A1.VectorError as e:
        return {"error": e.name}
    state, used, trace, phases = inp["initial_state"], 0, [], []  # line 1, KMR.alg10.init
    c = A1.cost(inp, state)
    status = "feasible" if c <= B else "policy-stop"
    for ph in inp["phases"]:  # line 2, KMR.alg10.phases
        if c <= B or used == N:  # line 3, KMR.alg10.skip
            break
        world = {"knobs": ph["knobs"], "initial_state": state, "transitions": ph["transitions"],
                 "cost": inp["cost"], "quality": inp["quality"], "policy": ph["policy"],
                 "budget": inp["budget"], "max_steps": N - used}  # lines 4-5, shared cost, N - used
        res = A1.interpret(world)
        if "error" in res:
            return {"error": res["error"]}
        for r in res["trace"]:  # line 6, KMR.alg10.phase-trace: t shifted, tagged
            trace.append({**r, "t": r["t"] + used, "phase": ph["name"]})
        used += sum(1 for r in res["trace"] if r["accepted"])
        phases.append({"name": ph["name"], "status": res["status"], "steps": len(res["trace"])})
        state, status = res["final_state"], res["status"]  # line 7: stalled / policy-stop end this phase
        c = A1.cost(inp, state)
    if c <= B:  # line 8, KMR.alg10.status
        status = "feasible"
    elif used == N:
        status = "step-limit"
    return {"status": status, "final_state": state, "final_cost": A1.canon(c),
            "final_quality": A1.quality(inp, state), "phases": phases, "trace": trace}  # line 9


def chain(n: int, knob: str, start: int = 0) -> Json:
    """From state start + i, ``<knob>=i+1`` goes to start + i + 1 (i < n)."""
    return {str(start + i): {f"{knob}={i + 1}": start + i + 1} for i in range(n)}


def knob(name: str) -> Json:
    return {"name": name, "domain": {"type": "int", "lo": 0, "hi": 9}}


def phase(name: str, transitions: Json, values: list[int], policy: Json = None) -> Json:
    pol = policy or {"type": "scheduled", "schedule": [{"knob": name, "value": v} for v in values]}
    return {"name": name, "knobs": [knob(name)], "transitions": transitions, "policy": pol}


ALG10 = ["KMR.alg10.init", "KMR.alg10.phases", "KMR.alg10.shared-cost", "KMR.alg10.phase-run",
         "KMR.alg10.phase-trace", "KMR.alg10.status", "KMR.alg10.return", "KMR.alg10.prop1"]


def vec(vid: str, primary: str, description: str, *, phases: list[Json], cost: list[Json] | Json,
        budget: Json, max_steps: Json = 10, quality: Json = None, clauses: tuple[str, ...] = ()) -> Json:
    costs = cost if isinstance(cost, dict) else {str(i): c for i, c in enumerate(cost)}
    inp = {"initial_state": 0, "cost": costs, "quality": quality, "budget": budget, "max_steps": max_steps,
           "phases": phases}
    exp = interpret(inp)
    extra = ["KMR.alg1.validate", "KMR.error.names-clause"] if "error" in exp else ALG10
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *extra, *clauses}),
            "features": ["input-checks"] if "error" in exp else [], "description": description,
            "input": inp, "expected": exp, "tolerance": None}


def vectors() -> list[Json]:
    v: list[Json] = []
    # states: prune moves 0 -> 1 -> 2 -> ...; quantize from any state jumps to 10 + state etc.
    prune = phase("prune", chain(3, "prune"), [1, 2, 3])
    v.append(vec("alg10-second-phase-continues-after-stall", "KMR.alg10.phase-break",
                 "prune accepts one step then stalls (equal cost); quantize starts from the last accepted "
                 "model and reaches the budget: feasible. The rejected record stays in the trace.",
                 phases=[phase("prune", {"0": {"prune=1": 1}, "1": {"prune=2": 2}}, [1, 2]),
                         phase("quant", {"1": {"quant=1": 3}}, [1])],
                 cost=[20, 15, 15, 5], budget=8, clauses=("KMR.alg1.early-break",)))
    v.append(vec("alg10-skip-when-feasible", "KMR.alg10.skip",
                 "prune reaches C <= B: quantize never runs (no record, not in phases).",
                 phases=[prune, phase("quant", {"2": {"quant=1": 3}}, [1])],
                 cost=[20, 12, 7, 1], budget=8))
    v.append(vec("alg10-skip-when-step-limit-spent", "KMR.alg10.skip",
                 "N = 2 steps are spent in prune (status step-limit, above budget): quantize is skipped.",
                 phases=[prune, phase("quant", {"2": {"quant=1": 5}}, [1])],
                 cost=[20, 15, 11, 9, 8, 1], budget=5, max_steps=2, clauses=("KMR.alg1.step-limit",)))
    v.append(vec("alg10-remaining-step-limit", "KMR.alg10.phase-run",
                 "N = 3: prune accepts 2 then stops (schedule exhausted); quantize runs with N - used = 1 "
                 "step, accepts it and ends at step-limit above budget.",
                 phases=[phase("prune", chain(2, "prune"), [1, 2]),
                         phase("quant", {"2": {"quant=1": 3}, "3": {"quant=2": 4}}, [1, 2])],
                 cost=[20, 15, 11, 9, 2], budget=5, max_steps=3))
    v.append(vec("alg10-trace-t-shifted", "KMR.alg10.phase-trace",
                 "Records of the second phase have t shifted by the steps accepted before it (2), and "
                 "every record is tagged with its phase.",
                 phases=[phase("prune", chain(2, "prune"), [1, 2]),
                         phase("quant", {"2": {"quant=1": 3}, "3": {"quant=2": 4}}, [1, 2])],
                 cost=[20, 15, 11, 9, 2], budget=5))
    v.append(vec("alg10-status-last-phase-stalled", "KMR.alg10.status",
                 "Both phases end above budget and steps remain: the status is the last phase's (stalled), "
                 "not the first's (policy-stop).",
                 phases=[phase("prune", chain(1, "prune"), [1]),
                         phase("quant", {"1": {"quant=1": 2}}, [1, 2])],
                 cost=[20, 15, 12], budget=5))
    v.append(vec("alg10-status-last-phase-policy-stop", "KMR.alg10.status",
                 "The first phase stalls, the second's schedule is empty: policy-stop.",
                 phases=[phase("prune", {}, [1]), phase("quant", {}, [])],
                 cost=[20], budget=5))
    v.append(vec("alg10-no-phases-above-budget", "KMR.alg10.status",
                 "No phase at all and C(M_0) > B: policy-stop (none ran), M_0 returned.",
                 phases=[], cost=[20], budget=5, clauses=("KMR.alg10.init",)))
    v.append(vec("alg10-no-phases-feasible", "KMR.alg10.init",
                 "No phase and C(M_0) <= B: feasible at once.", phases=[], cost=[3], budget=5))
    v.append(vec("alg10-return-last-accepted", "KMR.alg10.return",
                 "The last phase's proposal raises cost and is rejected: the pipeline returns the last "
                 "accepted state (2), never the rejected one (9).",
                 phases=[phase("prune", chain(2, "prune"), [1, 2]),
                         phase("quant", {"2": {"quant=1": 9}}, [1])],
                 cost={"0": 20, "1": 15, "2": 11, "9": 30}, budget=5))
    order_a = phase("a", {"0": {"a=1": 1}, "2": {"a=1": 3}}, [1])
    order_b = phase("b", {"0": {"b=1": 2}, "1": {"b=1": 4}}, [1])
    cost_ab = {"0": 20, "1": 12, "2": 16, "3": 9, "4": 14}
    v.append(vec("alg10-phases-in-order-ab", "KMR.alg10.phases",
                 "Phases a then b: 0 -a-> 1 (12) -b-> 4 (14) rejected: stalled at 12.",
                 phases=[order_a, order_b], cost=cost_ab, budget=5))
    v.append(vec("alg10-phases-in-order-ba", "KMR.alg10.phases",
                 "The same phases b then a: 0 -b-> 2 (16) -a-> 3 (9): a different result (order matters).",
                 phases=[order_b, order_a], cost=cost_ab, budget=5))
    v.append(vec("alg10-shared-cost-quality", "KMR.alg10.shared-cost",
                 "One cost and one quality table judge both phases; a greedy second phase scores its "
                 "candidates on the shared quality.",
                 phases=[phase("prune", chain(1, "prune"), [1]),
                         phase("quant", {"1": {"quant=1": 2, "quant=2": 3}}, [],
                               {"type": "greedy", "candidates": [{"knob": "quant", "value": 1},
                                                                 {"knob": "quant", "value": 2}]})],
                 cost=[20, 15, 10, 12], quality={"0": 1.0, "1": 0.75, "2": 0.25, "3": 0.5}, budget=12,
                 clauses=("KMR.policy.greedy",)))
    v.append(vec("alg10-error-budget", "KMR.alg1.validate", "A non-rational budget: BudgetError, nothing runs.",
                 phases=[prune], cost=[20, 15, 11, 1], budget="x"))
    v.append(vec("alg10-error-n-negative", "KMR.alg1.validate", "N = -1: BudgetError.",
                 phases=[prune], cost=[20, 15, 11, 1], budget=5, max_steps=-1))
    ids = [x["id"] for x in v]
    assert len(ids) == len(set(ids)), "duplicate vector id"
    return v


def document() -> Json:
    return {
        "kind": "alg10",
        "spec_version": SPEC_VERSION,
        "generator": "spec/vectors/generate_alg10.py",
        "description": "Algorithm 10 (Composed-KMR, spec/kmr.md §9) on table worlds: phases, each an "
                       "Algorithm 1 table world, under one cost table. See spec/vectors/README.md.",
        "vectors": vectors(),
    }


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE / SPEC_VERSION
    out.mkdir(parents=True, exist_ok=True)
    (out / "alg10.json").write_bytes(A1.dump(document()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
