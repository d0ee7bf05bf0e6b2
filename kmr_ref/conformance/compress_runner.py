"""Runner and reference adapter for ``kind: compress-config`` (``spec/compress.md``).

An adapter is a function ``input -> output``: ``input.toml`` is the text of a config file; the
output is ``{"config": <normalized config>}`` (``spec/vectors/generate_compress.py`` describes the
normalized form) or ``{"error": "<clause ID>", "message": "<the error's message>"}``. The runner
compares the clause exactly and checks that the message names the key the vector gives
(``vectors.compare_kind``); through ``--exec`` the same shapes travel as JSON.

:func:`reference_config` writes the text to ``config.toml`` in a fresh temporary folder and reads
it with the reference's ``load_config`` (``KMR.compress.toml``: tomllib, the JSON Schema, the
dataclasses' checks), then reports the config as the reference holds it: the parsed budget
(``config_budget``), the phase names (``phase_names``), the knob a scheduled policy drives.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from kmr_ref.compress.config import DEFAULT_KNOB, CompressConfig, GreedyConfig, config_budget, load_config
from kmr_ref.conformance.method_runner import call_encoded
from kmr_ref.conformance.vectors import VectorRunner, compare_kind, named_key
from kmr_ref.core import KMRError
from kmr_ref.core.exact import to_exact

Json = Any
ConfigAdapter = Callable[[Mapping[str, Json]], dict[str, Json]]


def exact_json(x: object) -> Json:
    """An exact number as JSON: an integer, or ``"p/q"`` in lowest terms; anything that is not an
    exact number is reported as written."""
    try:
        q = to_exact(x, clause="KMR.compress.config", error=KMRError, what="value")
    except KMRError:
        return x
    f = Fraction(q)
    return int(f) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _rel(p: Path | None, base: Path) -> str | None:
    return None if p is None else Path(os.path.relpath(p, base)).as_posix()


def normalize(cfg: CompressConfig, base: Path) -> dict[str, Json]:
    b = config_budget(cfg)
    phases = []
    for p, name in zip(cfg.phases, cfg.phase_names(), strict=True):
        method = p.method.method
        pol: dict[str, Json]
        if isinstance(p.policy, GreedyConfig):
            knobs = p.policy.knobs
            pol = {"type": "greedy", "knobs": knobs if isinstance(knobs, str) else list(knobs)}
        else:
            pol = {"type": "scheduled", "knob": p.policy.knob or DEFAULT_KNOB[method],
                   "values": [exact_json(v) for v in p.policy.values]}
        phases.append({"name": name, "method": method, "include": None if p.include is None else list(p.include),
                       "exclude": list(p.exclude), "policy": pol})
    return {"meter": cfg.meter, "max_steps": cfg.max_steps,
            "budget": {"fraction" if b.relative else "absolute": exact_json(b.value)},
            "overwrite": cfg.overwrite, "model": cfg.model, "quality": cfg.quality,
            "example_input": cfg.example_input, "weights": _rel(cfg.weights, base), "out_dir": _rel(cfg.out_dir, base),
            "phases": phases}


def reference_config(inp: Mapping[str, Json]) -> dict[str, Json]:
    """The reference's ``load_config`` on the vector's text (a file in a fresh temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="kmr-config-") as d:
        base = Path(d).resolve()
        path = base / "config.toml"
        path.write_text(inp["toml"], encoding="utf-8")
        try:
            cfg = load_config(path)
        except KMRError as e:
            return {"error": e.clause, "message": str(e)}
        return {"config": normalize(cfg, base)}


def run_config_vector(vec: Mapping[str, Json], adapter: ConfigAdapter) -> tuple[bool, str]:
    """Two calls (``KMR.rule.deterministic``: a config reads the same way twice), the input left as
    it was, then the comparison of ``vectors.compare_kind``."""
    inp = vec["input"]
    before = copy.deepcopy(inp)

    def call() -> Json:  # an error naming a clause is an answer; any other is a failure
        return call_encoded(lambda: adapter(inp), with_message=True)

    got, again = call(), call()
    diffs: list[str] = []
    if inp != before:
        diffs.append("KMR.rule.no-mutation: the implementation modified the input it was given")
    # messages may name a temporary file: two readings agree when their answers do
    if named_key(vec["expected"], again) != named_key(vec["expected"], got):
        diffs.append("KMR.rule.deterministic: a second reading of the same text gave a different result")
    diffs += compare_kind("compress-config", vec["expected"], got, vec.get("tolerance"))
    return not diffs, "\n".join(diffs)


def make_runner(adapter: ConfigAdapter) -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_config_vector(vec, adapter)

    return run


reference_runner = make_runner(reference_config)
