"""Adapter: run the reference Algorithm 1 on the *table world* of an ``alg1`` vector.

The table world (``spec/vectors/README.md``): a model is an integer state; the rule looks up
``transitions[state]["<knob>=<canonical value>"]`` (a missing entry leaves the state unchanged);
cost and quality are tables. The adapter turns a vector's ``input`` into a ``KMRTriple``, a
policy, a budget and a step limit, calls :func:`kmr_ref.core.budgeted_kmr`, and returns the
result in the language-neutral shape of a vector's ``expected`` object. An implementation in
another language conforms by providing a function of the same shape (input -> output).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kmr_ref.core import (
    CostMeter,
    FiniteDomain,
    GreedyPolicy,
    IntRange,
    KMRError,
    KMRTriple,
    Knob,
    KnobValue,
    Policy,
    PolicyState,
    Proposal,
    QualityMeter,
    ScheduledPolicy,
    budgeted_kmr,
    real_knob,
)
from kmr_ref.core.exact import Exact, fmt_exact
from kmr_ref.core.knobs import find_knob
from kmr_ref.core.trace import json_value

Json = Any
Alg1Adapter = Callable[[Mapping[str, Json]], dict[str, Json]]
_RATIONAL = re.compile(r"^-?(0|[1-9][0-9]*)(/[1-9][0-9]*)?$")


def decode_exact(x: Json) -> Exact:
    """A table entry: a JSON integer or a ``"p/q"`` string."""
    if isinstance(x, bool) or not isinstance(x, int | str):
        raise ValueError(f"not an exact table entry: {x!r}")
    if isinstance(x, int):
        return x
    q = Fraction(x)
    return q if q.denominator != 1 else int(q.numerator)


def decode_value(x: Json) -> Any:
    """A value as the caller spells it: ``"p/q"`` strings become Fractions (the JSON spelling of
    an exact number); integers, binary64 floats, booleans and other strings pass unchanged, so
    that the reference's own normalization (``KMR.exact.binary64``) is what is tested."""
    if isinstance(x, str) and _RATIONAL.match(x):
        return decode_exact(x)
    return x


def decode_knob(k: Mapping[str, Json]) -> Knob:
    d = k["domain"]
    if d["type"] == "finite":
        return Knob(k["name"], FiniteDomain(tuple(decode_exact(v) for v in d["values"])))
    if d["type"] == "int":
        return Knob(k["name"], IntRange(d["lo"], d["hi"]))
    if d["type"] == "real":
        return real_knob(k["name"], decode_value(d["lo"]), decode_value(d["hi"]),
                         None if d.get("step") is None else decode_value(d["step"]))
    raise ValueError(f"unknown domain type {d['type']!r}")


@dataclass(frozen=True)
class TableRule:
    """T(state, k, v) = transitions[state]["k=v"], or state when there is no entry."""

    knob_list: tuple[Knob, ...]
    transitions: Mapping[str, Mapping[str, int]]

    def knobs(self) -> Sequence[Knob]:
        return self.knob_list

    def apply(self, model: int, knob: str, value: KnobValue) -> int:
        v = find_knob(self.knob_list, knob).check(value)  # KMR.knob.domain: the rule checks too
        return self.transitions.get(str(model), {}).get(f"{knob}={fmt_exact(v)}", model)  # type: ignore[arg-type]


def build(inp: Mapping[str, Json]) -> tuple[KMRTriple[int], Policy[int]]:
    """The triple and the policy of a vector's input."""
    knobs = tuple(decode_knob(k) for k in inp["knobs"])
    cost_t: Mapping[str, Json] = inp["cost"]
    qual_t: Mapping[str, Json] | None = inp["quality"]
    cost = CostMeter[int]("table", lambda s: decode_exact(cost_t[str(s)]))
    quality = None if qual_t is None else QualityMeter[int]("table", lambda s: float(qual_t[str(s)]))
    triple = KMRTriple("table", TableRule(knobs, inp["transitions"]), cost, quality)
    pol = inp["policy"]
    if pol["type"] == "scheduled":
        sched = tuple(Proposal(p["knob"], decode_value(p["value"])) for p in pol["schedule"])
        return triple, ScheduledPolicy[int](sched)
    if pol["type"] == "greedy":
        cands = [Proposal(p["knob"], decode_value(p["value"])) for p in pol["candidates"]]

        def candidates(state: PolicyState[int]) -> Sequence[Proposal]:
            return cands

        return triple, GreedyPolicy[int](candidates)
    raise ValueError(f"unknown policy type {pol['type']!r}")


def reference_alg1(inp: Mapping[str, Json]) -> dict[str, Json]:
    """Run ``kmr_ref.core.budgeted_kmr`` on a vector input; the output has the shape of ``expected``."""
    triple, policy = build(inp)
    try:
        res = budgeted_kmr(inp["initial_state"], triple, policy, decode_value(inp["budget"]), inp["max_steps"])
    except KMRError as e:
        return {"error": type(e).__name__}
    return {
        "status": res.status.value,
        "final_state": res.model,
        "final_cost": json_value(res.cost_final),
        "final_quality": res.quality_final,
        "trace": [r.to_json() for r in res.trace],
    }
