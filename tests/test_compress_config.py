"""KMR.compress.config KMR.compress.budget-units KMR.compress.pairs KMR.compress.select
KMR.compress.progress: the JSON Schema, budgets with units, the method x meter table,
include/exclude patterns and the live progress output."""

from __future__ import annotations

import copy
import json
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from torch import nn

from kmr_ref.compress import (
    CompressConfig,
    ConfigError,
    LowRankMethod,
    PhaseConfig,
    PruneMethod,
    QuantizeMethod,
    ScheduledConfig,
    StructuredMethod,
    compress,
    parse_budget,
    schema,
)
from kmr_ref.compress.build import build_rule
from kmr_ref.core.trace import StepRecord
from kmr_ref.methods.lowrank import LowRankFactors
from kmr_ref.methods.quantization import kept_codes
from tests.test_compress import BASE, factory, mlp, run_cli, state_bytes, write_toml  # noqa: F401

# --------------------------------------------------------------------------------------------
# The JSON Schema


def test_schema_is_valid_and_matches_the_dataclasses() -> None:
    """KMR.compress.config: config.schema.json is a valid draft 2020-12 schema; its per-method key
    lists are the dataclasses' fields; the shipped example validates."""
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    for method, cls in (("prune", PruneMethod), ("quantize", QuantizeMethod), ("structured", StructuredMethod),
                        ("lowrank", LowRankMethod)):
        keys = set(s["$defs"][f"method-{method}"]["properties"]) - {"method", "name", "include", "exclude", "policy"}
        fields = set(cls.__dataclass_fields__) - {"method"}
        assert keys == fields, method
    assert set(s["properties"]["meter"]["enum"]) == {"nonzeros", "params", "storage_bits",
                                                      "composed_storage_bits", "macs",
                                                      "trained_params", "expected_macs"}  # training methods


@pytest.mark.parametrize(("path", "value", "clause", "words"), [
    (("phases", 0, "policy", "values"), "1/2", "KMR.compress.config", "non-empty list"),
    (("phases", 0, "include"), "0.*", "KMR.compress.select", "glob patterns"),
    (("phases", 0, "kernel"), "yes", "KMR.compress.methods", "phases[0].kernel"),
    (("overwrite",), 1, "KMR.compress.config", "overwrite"),
    (("budget_fraction",), [1], "KMR.compress.budget-fraction", "budget_fraction"),
])
def test_schema_errors_name_key_and_clause(path: tuple[Any, ...], value: Any, clause: str, words: str) -> None:
    """KMR.compress.config: a schema violation names the key path and the node's clause."""
    d: Any = copy.deepcopy(BASE)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    with pytest.raises(ConfigError) as e:
        CompressConfig.from_dict(d)
    assert e.value.clause == clause and words in e.value.message, e.value


# --------------------------------------------------------------------------------------------
# Budgets with units


@pytest.mark.parametrize(("text", "meter", "value", "relative"), [
    ("18MB", "composed_storage_bits", 18 * 10**6 * 8, False),
    ("18 MB", "storage_bits", 144_000_000, False),
    ("1.5KiB", "storage_bits", 1536 * 8, False),
    ("100kbit", "storage_bits", 100_000, False),
    ("2.5M", "params", 2_500_000, False),
    ("1.2G", "macs", 1_200_000_000, False),
    ("0.1k", "nonzeros", 100, False),
    ("25%", "nonzeros", Fraction(1, 4), True),
    ("12.5%", "composed_storage_bits", Fraction(1, 8), True),
    ("2.5", "params", Fraction(5, 2), False),
    ("7/3", "params", Fraction(7, 3), False),
    ("1e3", "params", 1000, False),
    (153128, "storage_bits", 153128, False),
])
def test_budget_units(text: object, meter: str, value: Fraction | int, relative: bool) -> None:
    """KMR.compress.budget-units: decimal SI prefixes exact, 1 B = 8 bit, MB = 10^6 B, % of C(M_0)."""
    b = parse_budget(text, meter, "budget")
    assert b.value == value and b.relative is relative


@pytest.mark.parametrize(("key", "text", "meter", "clause", "words"), [
    ("budget", "18MB", "params", "KMR.compress.budget-units", "does not fit meter 'params'"),
    ("budget", "3bit", "macs", "KMR.compress.budget-units", "does not fit"),
    ("budget", "3Mi", "params", "KMR.compress.budget-units", "binary prefixes"),
    ("budget", "120%", "params", "KMR.compress.budget-units", "[0%, 100%]"),
    ("budget", "lots", "params", "KMR.compress.budget-units", "neither a number"),
    ("budget", "5 m", "params", "KMR.compress.budget-units", "neither a number"),
    ("budget", -3, "params", "KMR.compress.budget-units", ">= 0"),
    ("budget_fraction", "1MB", "storage_bits", "KMR.compress.budget-fraction", "no unit"),
])
def test_budget_unit_errors(key: str, text: object, meter: str, clause: str, words: str) -> None:
    """KMR.compress.budget-units: a bad unit names the key and the clause, from the TOML mapping."""
    d: Any = {**copy.deepcopy(BASE), "meter": meter}
    d.pop("budget_fraction")
    d[key] = text
    d["phases"][0]["method"] = "structured"
    with pytest.raises(ConfigError) as e:
        CompressConfig.from_dict(d)
    assert e.value.clause == clause and words in e.value.message and key in e.value.message, e.value


def test_percent_budget_runs_as_fraction() -> None:
    """KMR.compress.budget-units: "50%" is the budget 1/2 x C(M_0), exactly as budget_fraction."""
    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/4", "1/2", "3/4"))),),
                         meter="nonzeros", budget="50%")
    rep = compress(mlp(), cfg)
    assert rep.budget == 46 and rep.cost_initial == 92
    assert CompressConfig.from_dict(cfg.to_json()).budget == "50%"


# --------------------------------------------------------------------------------------------
# Pointless method/meter pairs

REFUSED = {("prune", "params"), ("prune", "macs"), ("prune", "storage_bits"),
           ("quantize", "params"), ("quantize", "nonzeros"), ("quantize", "macs")}


@pytest.mark.parametrize("method", ["prune", "quantize", "structured", "lowrank"])
@pytest.mark.parametrize("meter", ["nonzeros", "params", "storage_bits", "composed_storage_bits", "macs"])
def test_pointless_pairs_refused(method: str, meter: str) -> None:
    """KMR.compress.pairs: exactly the table's pairs are refused, with the reason."""
    d: Any = {**copy.deepcopy(BASE), "meter": meter}
    d["phases"][0]["method"] = method
    d["phases"][0]["policy"] = {"type": "scheduled", "values": [4] if method in ("quantize", "lowrank") else ["1/2"]}
    if (method, meter) in REFUSED:
        with pytest.raises(ConfigError) as e:
            CompressConfig.from_dict(d)
        assert e.value.clause == "KMR.compress.pairs" and "refused: " in e.value.message
        assert method in e.value.message and meter in e.value.message
    else:
        assert CompressConfig.from_dict(d).meter == meter


# --------------------------------------------------------------------------------------------
# include / exclude


def wide() -> nn.Sequential:
    return mlp((6, 8, 8, 4))


def one_phase(method: Any, values: tuple[object, ...], meter: str, **kw: Any) -> CompressConfig:
    knob = "rank" if isinstance(method, LowRankMethod) else None
    return CompressConfig(phases=(PhaseConfig(method, ScheduledConfig(values, knob), **kw),), meter=meter, budget=0)


def changed(a: nn.Module, b: nn.Module) -> set[str]:
    sa, sb = state_bytes(a), state_bytes(b)
    return {k for k in sa if sb.get(k) != sa[k]} | (set(sb) - set(sa))


def test_include_exclude_prune_and_quantize() -> None:
    """KMR.compress.select: prune touches only the included parameters minus the excluded (an
    include pattern may take a bias: KMR.select.include); quantize keeps codes only for the
    selected weights."""
    m = wide()
    r = compress(m, one_phase(PruneMethod(), ("1/2",), "nonzeros", include=["0.*", "2.*"], exclude=["2.weight"]))
    assert changed(m, r.model) == {"0.weight", "0.bias", "2.bias"}
    r = compress(m, one_phase(PruneMethod(), ("1/2",), "nonzeros", include=["*.weight"], exclude=["2.weight"]))
    assert changed(m, r.model) == {"0.weight", "4.weight"}
    r = compress(m, one_phase(PruneMethod(), ("1/2",), "nonzeros", exclude=["0.weight"]))
    assert changed(m, r.model) == {"2.weight", "4.weight"}
    r = compress(m, one_phase(QuantizeMethod(), (4,), "storage_bits", include=["*2.weight"]))
    assert changed(m, r.model) == {"2.weight"}
    assert [n for n in ("0", "2", "4") if kept_codes(r.model.get_submodule(n), "weight") is not None] == ["2"]


def test_include_lowrank() -> None:
    """KMR.compress.select: low-rank replaces only the included layers."""
    m = wide()
    r = compress(m, one_phase(LowRankMethod(), (2,), "params", include=["2.weight"]))
    assert [n for n, mod in r.model.named_modules() if isinstance(mod, LowRankFactors)] == ["2"]


def test_include_structured() -> None:
    """KMR.compress.select: structured pruning removes channels only of the included layers."""
    m = wide()
    r = compress(m, one_phase(StructuredMethod(), ("1/2",), "params", include=["2.weight"]))
    assert r.model[0].out_features == 8 and r.model[2].out_features == 4


def test_pattern_matching_nothing_is_refused(tmp_path: Path) -> None:
    """KMR.compress.select: a pattern that matches no parameter name is refused before anything
    runs or is written, naming the pattern."""
    for kw in ({"include": ["encoder.*"]}, {"exclude": ["0.weight", "nope"]}):
        with pytest.raises(ConfigError) as e:
            compress(wide(), one_phase(PruneMethod(), ("1/2",), "nonzeros", **kw), out_dir=tmp_path / "o")
        assert e.value.clause == "KMR.compress.select" and ("encoder.*" in e.value.message
                                                           or "nope" in e.value.message)
        assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError) as e:
        PhaseConfig(PruneMethod(), ScheduledConfig(("1/2",)), include=[""])
    assert e.value.clause == "KMR.compress.select"
    rule = build_rule(PhaseConfig(PruneMethod(), ScheduledConfig(("1/2",)), include=["0.weight"]), wide())
    assert next(k.name for k in rule.knobs()) == "sparsity"


def test_toml_include_exclude_round_trip() -> None:
    """KMR.compress.select KMR.compress.toml: include/exclude read from the mapping and echoed."""
    d: Any = copy.deepcopy(BASE)
    d["phases"][0] |= {"include": ["0.*"], "exclude": ["0.bias"]}
    cfg = CompressConfig.from_dict(d)
    assert cfg.phases[0].include == ("0.*",) and cfg.phases[0].exclude == ("0.bias",)
    again = CompressConfig.from_dict(cfg.to_json())
    assert again.phases[0].include == ("0.*",) and again.phases[0].exclude == ("0.bias",)


# --------------------------------------------------------------------------------------------
# Progress


class Sink:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def measuring(self) -> None:
        self.log.append("measuring")

    def started(self, **kw: Any) -> None:
        self.log.append(f"started B={kw['budget']}")

    def step(self, phase: str, record: StepRecord, replayed: bool) -> None:
        self.log.append(f"step {record.t}")

    def finished(self, report: Any) -> None:
        self.log.append("finished")

    def close(self) -> None:
        self.log.append("closed")


def test_progress_events_arrive_as_they_happen() -> None:
    """KMR.compress.progress: measuring comes before the first cost measurement; each record's
    event comes before the next proposal is measured (not at the end)."""
    log: list[str] = []
    x = torch.randn(3, 6)

    def q(m: nn.Module) -> float:
        log.append("quality")
        return float(m(x).sum())

    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/4", "1/2", "3/4"))),),
                         meter="nonzeros", budget_fraction="1/2")
    compress(mlp(), cfg, quality=q, progress=Sink(log))
    assert log == ["measuring", "quality", "started B=46", "quality", "step 0", "quality", "step 1",
                   "quality", "step 2", "finished", "closed"]


def test_cli_progress_streams(tmp_path: Path, factory: str) -> None:  # noqa: F811
    """KMR.compress.progress KMR.compress.exit-code: with --json stdout is the report only and the
    progress (measuring line first, one line per record, decimals, the bar) is on stderr; without
    --json it is on stdout."""
    toml = write_toml(tmp_path, factory)
    rc, out, err = run_cli(["compress", str(toml), "--json"])
    rep = json.loads(out)
    assert rc == 0
    lines = err.splitlines()
    assert lines[0].startswith("kmr compress: loading the model")
    assert lines[1].startswith("kmr compress: measuring")
    assert "budget 106.667" not in err and "budget ~106.667" in err  # 320/3, a decimal, not "320/3"
    assert "320/3" not in err
    step_lines = [s for s in lines if s.startswith("t=")]
    # the structured phase goes first (fraction@0 = 3/20 after the ladder passes 1/20 and 1/10)
    assert len(step_lines) == len(rep["steps"]) and "structured: fraction@0 = 0.15" in step_lines[0]
    assert "steps" in err and f"{rep['accepted_steps']}/10" in err
    assert re.search(r"\d+:\d\d:\d\d", err)  # the bar's elapsed time
    rc, out2, err2 = run_cli(["compress", str(toml), "--overwrite", "--dense"])
    assert rc == 0 and out2.splitlines()[1].startswith("kmr compress: measuring") and err2 == ""
    assert (tmp_path / "out" / "model.dense.safetensors").is_file()
    assert sys.modules[factory] is not None


def test_greedy_per_tensor_bits() -> None:
    """KMR.compress.policies: greedy "per-layer" quantization climbs one bits@<param> knob a rung
    (16, 15, ...) per accepted step."""
    from kmr_ref.compress import GreedyConfig

    x = torch.randn(4, 6)
    m = mlp()
    ref = m(x).detach()
    cfg = CompressConfig(phases=(PhaseConfig(QuantizeMethod(), GreedyConfig()),), meter="storage_bits",
                         budget_fraction="1/4", max_steps=6)
    rep = compress(m, cfg, quality=lambda mm: -float(((mm(x) - ref) ** 2).mean()))
    seen: dict[str, int] = {}
    for r in rep.steps:
        assert r.knob in ("bits@0.weight", "bits@2.weight")
        assert r.value == seen.get(r.knob, 16) - 1
        seen[r.knob] = int(r.value)
    assert rep.accepted_steps == 6
