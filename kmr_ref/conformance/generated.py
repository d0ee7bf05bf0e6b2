"""The generated tier: Hypothesis-generated vector inputs, expected values from the independent
oracles of ``spec/vectors/generate_*.py`` (never from the code under test), run through the same
runners as the frozen vectors (learning from array-api-tests' Hypothesis tier).

``generated_vector(kind)`` is a Hypothesis strategy of complete vectors (input + oracle
expectation) for ``alg1``, ``prune-magnitude`` and ``quant-uniform``: tensors with ties, ±0,
denormals, extreme magnitudes, up to a few hundred entries; decimal and rational sparsities;
module trees in shuffled registration order; every bit width and scheme; random table worlds.
:func:`check` runs one through a runner and, on a failure, raises with the shrunk input written
out as a ready vector (``ready_vector``) to paste into a vector file.

``python -m kmr_ref.conformance.generated [--impl IMPL | --adapter KIND=module:attr] [--examples N]``
runs the tier from the command line (derandomized; exit 1 with the vector on a failure).
Requires the ``hypothesis`` package (a dev dependency).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kmr_ref.conformance.vectors import IMPLEMENTATIONS, VectorRunner, blame_of, primary_of
from kmr_ref.spec_index import spec_root

Json = Any
KINDS = ("alg1", "prune-magnitude", "quant-uniform")
_GEN = {"alg1": "generate_alg1.py", "prune-magnitude": "generate_pruning.py",
        "quant-uniform": "generate_quantization.py"}


@cache
def oracle_module(kind: str) -> ModuleType:
    """The generator of ``kind`` (its oracle is written from the spec and imports no kmr_ref)."""
    path = spec_root() / "vectors" / _GEN[kind]
    spec = importlib.util.spec_from_file_location(f"_kmr_oracle_{kind.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def expected_of(kind: str, inp: Json) -> Json:
    mod = oracle_module(kind)
    if kind == "alg1":
        return mod.interpret(inp)
    out: Json = mod.run_oracle(inp)
    return out


# --- strategies ----------------------------------------------------------------------------------

_SPECIAL = ["00000000", "80000000", "00000001", "80000001", "007fffff", "00800000", "3f800000", "bf800000",
            "3f000000", "bf000000", "40000000", "7f7fffff", "ff7fffff", "7e800000", "fe800000"]


def _bits() -> st.SearchStrategy[str]:
    small = st.integers(-12, 12).map(lambda k: _hex(k / 4))  # many exact ties (and signed zeros)
    anyf = st.floats(width=32, allow_nan=False, allow_infinity=False).map(_hex)
    return st.one_of(st.sampled_from(_SPECIAL), small, small, anyf)


def _hex(x: float) -> str:
    import struct

    return struct.pack(">f", x).hex()


@st.composite
def prune_input(draw: st.DrawFn) -> Json:
    n_t = draw(st.integers(0, 3))
    tensors: list[dict[str, Any]] = []
    leaves: list[dict[str, Any]] = []
    big = draw(st.booleans())  # large n, where binary64 floor(s * n) goes wrong for some decimals s
    for i in range(n_t):
        rows, cols = (10, draw(st.sampled_from([10, 20, 30]))) if big and i == 0 else (
            draw(st.integers(1, 4)), draw(st.integers(1, 8)))
        name = draw(st.sampled_from(["fc", "head", "a", "z", "layer"])) + str(i)
        tensors.append({"name": f"{name}.weight", "shape": [rows, cols], "dtype": "float32",
                        "values": draw(st.lists(_bits(), min_size=rows * cols, max_size=rows * cols))})
        leaves.append({"name": name, "type": "Linear"})
    tree = draw(st.permutations(leaves)) if leaves else []
    tensors.sort(key=lambda t: str(t["name"]))  # listed by name: the tree decides the order
    names = [t["name"] for t in tensors]
    knob = draw(st.sampled_from(["sparsity"] + [f"sparsity@{n}" for n in names]))
    sparsity = draw(st.one_of(
        st.integers(0, 100).map(lambda k: k / 100),                                  # binary64 decimals
        st.tuples(st.integers(0, 1000), st.integers(1, 1000)).filter(lambda t: t[0] <= t[1])
          .map(lambda t: _rational(t[0], t[1])),
        st.sampled_from([0, 1, "1/2", "1/3", "2/3"])))
    inp: Json = {"tensors": tensors, "knob": knob, "scope": draw(st.sampled_from(["global", "per-tensor"])),
                 "sparsity": sparsity}
    if tree:
        inp["tree"] = list(tree)
    return inp


def _rational(p: int, q: int) -> Json:
    from fractions import Fraction

    f = Fraction(p, q)
    return int(f) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


@st.composite
def quant_input(draw: st.DrawFn) -> Json:
    g = draw(st.integers(1, 3))
    length = draw(st.integers(1, 8))
    row = st.lists(_bits().filter(lambda b: int(b, 16) & 0x7FFFFFFF <= 0x7E800000), min_size=length, max_size=length)
    return {"w": draw(st.lists(row, min_size=g, max_size=g)), "bits": draw(st.integers(2, 16)),
            "scheme": draw(st.sampled_from(["symmetric", "asymmetric"]))}


@st.composite
def alg1_input(draw: st.DrawFn) -> Json:
    n = draw(st.integers(1, 6))
    cost = {str(i): draw(st.integers(0, 20)) for i in range(n)}
    knob = {"name": "s", "domain": {"type": "int", "lo": 0, "hi": 3}}
    trans: Json = {}
    for i in range(n):
        for v in range(1, 4):
            if draw(st.booleans()):
                trans.setdefault(str(i), {})[f"s={v}"] = draw(st.integers(0, n - 1))
    quality = draw(st.one_of(st.none(), st.fixed_dictionaries(
        {str(i): st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 1.0]) for i in range(n)})))
    values = st.integers(1, 3)
    if draw(st.booleans()):
        policy: Json = {"type": "scheduled", "schedule": [{"knob": "s", "value": v}
                                                          for v in draw(st.lists(values, max_size=6))]}
    else:
        policy = {"type": "greedy", "candidates": [{"knob": "s", "value": v}
                                                   for v in draw(st.lists(values, min_size=1, max_size=3))]}
    return {"knobs": [knob], "initial_state": draw(st.integers(0, n - 1)), "transitions": trans, "cost": cost,
            "quality": quality, "policy": policy, "budget": draw(st.integers(-1, 20)),
            "max_steps": draw(st.integers(0, 6))}


_INPUTS: dict[str, Callable[[], st.SearchStrategy[Json]]] = {
    "alg1": alg1_input, "prune-magnitude": prune_input, "quant-uniform": quant_input}
_PRIMARY = {"alg1": "KMR.alg1.strict-progress", "prune-magnitude": "KMR.prune.tie-break",
            "quant-uniform": "KMR.quant.rounding"}


def generated_vector(kind: str) -> st.SearchStrategy[Json]:
    """Complete vectors of ``kind``: a generated input and the oracle's expectation."""
    return _INPUTS[kind]().map(lambda inp: {
        "id": f"generated-{kind}", "primary": _PRIMARY[kind], "clauses": [_PRIMARY[kind]], "features": [],
        "description": "found by the generated tier (kmr_ref.conformance.generated)",
        "input": inp, "expected": expected_of(kind, inp), "tolerance": None})


def ready_vector(vec: Mapping[str, Json]) -> str:
    return json.dumps(vec, sort_keys=True, indent=1)


def check(vec: Mapping[str, Json], runner: VectorRunner) -> None:
    """Run one generated vector; raise AssertionError with the ready vector on a failure."""
    ok, diff = runner(vec)
    if not ok:
        raise AssertionError(f"[{blame_of(primary_of(vec), diff)}] generated vector failed:\n{diff}\n"
                             f"ready vector (paste into a {vec['id'].removeprefix('generated-')} file):\n"
                             f"{ready_vector(vec)}")


def run_tier(kind: str, runner: VectorRunner, examples: int = 100, derandomize: bool = True,
             shrink: bool = True) -> None:
    """Hypothesis over ``generated_vector(kind)``; a failure is shrunk (unless ``shrink`` is False)
    and raised with its vector."""
    phases = [p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)]

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None, phases=phases,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(generated_vector(kind))
    def prop(vec: Json) -> None:
        check(vec, runner)

    prop()


def main(argv: Sequence[str] | None = None) -> int:
    from kmr_ref.conformance.report import UsageError, load_adapter
    from kmr_ref.conformance.vectors import ADAPTER_RUNNERS

    ap = argparse.ArgumentParser(prog="python -m kmr_ref.conformance.generated",
                                 description="Hypothesis-generated vectors checked against the spec oracles.")
    ap.add_argument("--impl", default="reference", choices=sorted(IMPLEMENTATIONS))
    ap.add_argument("--adapter", action="append", default=[], metavar="KIND=module:attr")
    ap.add_argument("--kind", action="append", choices=KINDS, help="only this kind (repeatable)")
    ap.add_argument("--examples", type=int, default=100)
    a = ap.parse_args(argv)
    runners: dict[str, VectorRunner] = dict(IMPLEMENTATIONS[a.impl])
    if a.adapter:
        runners = {}
        for spec in a.adapter:
            try:
                kind, adapter = load_adapter(spec)
            except UsageError as e:
                print(f"{ap.prog}: error: {e}", file=sys.stderr)
                return 2
            runners[kind] = ADAPTER_RUNNERS[kind](adapter)
    rc = 0
    for kind in a.kind or KINDS:
        if kind not in runners:
            print(f"{kind}: not-supported")
            continue
        try:
            run_tier(kind, runners[kind], a.examples)
            print(f"{kind}: {a.examples} generated vectors pass")
        except AssertionError as e:
            print(f"{kind}: FAIL\n{e}")
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
