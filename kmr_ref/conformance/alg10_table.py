"""Adapter and runner for ``kind: alg10`` vectors: the reference Algorithm 10 on table worlds.

Each phase of a vector is an ``alg1`` table world (its knobs, transitions and policy) over the
shared cost and quality tables (``KMR.alg10.shared-cost``); :func:`reference_alg10` runs
:func:`kmr_ref.core.composed_kmr` on it and returns the language-neutral ``expected`` shape
(records tagged with their ``phase``). Another implementation provides a function of the same
shape (input -> output), like ``alg1_table.Alg1Adapter``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kmr_ref.conformance.alg1_table import build, decode_value
from kmr_ref.core import KMRError, Phase, composed_kmr
from kmr_ref.core.trace import json_value

Json = Any
Alg10Adapter = Callable[[Mapping[str, Json]], dict[str, Json]]


def reference_alg10(inp: Mapping[str, Json]) -> dict[str, Json]:
    """Run ``kmr_ref.core.composed_kmr`` on a vector input; the output has the shape of ``expected``."""
    phases = []
    cost = quality = None
    for ph in inp["phases"]:
        world = {"knobs": ph["knobs"], "transitions": ph["transitions"], "policy": ph["policy"],
                 "cost": inp["cost"], "quality": inp["quality"]}
        triple, policy = build(world)
        cost, quality = triple.cost, triple.quality
        phases.append(Phase(ph["name"], triple.rule, policy))
    if cost is None:  # no phase: the shared meters from the tables alone
        triple, _ = build({"knobs": [], "transitions": {}, "policy": {"type": "scheduled", "schedule": []},
                           "cost": inp["cost"], "quality": inp["quality"]})
        cost, quality = triple.cost, triple.quality
    try:
        res = composed_kmr(inp["initial_state"], phases, cost, decode_value(inp["budget"]), inp["max_steps"],
                           quality=quality)
    except KMRError as e:
        return {"error": type(e).__name__}
    r = res.result
    return {
        "status": r.status.value,
        "final_state": r.model,
        "final_cost": json_value(r.cost_final),
        "final_quality": r.quality_final,
        "phases": [{"name": p.name, "status": p.status.value, "steps": p.steps} for p in res.phases],
        "trace": [{**rec.to_json(), "phase": ph} for rec, ph in zip(r.trace, res.phase_of_record, strict=True)],
    }


def make_runner(adapter: Alg10Adapter) -> Callable[[Mapping[str, Json]], tuple[bool, str]]:
    from kmr_ref.conformance.vectors import run_alg1_vector  # same call-and-compare as alg1

    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_alg1_vector(vec, adapter)

    return run


def run_alg10_vector(vec: Mapping[str, Json], adapter: Alg10Adapter = reference_alg10) -> tuple[bool, str]:
    """Run one ``alg10`` vector through ``adapter`` (default: the reference ``composed_kmr``)."""
    return make_runner(adapter)(vec)
