"""``kmr select`` (``KMR.trace.select``, spec/compress.md): a run directory is a family of models.

On the digits CNN (prune, then quantize, one storage meter): selecting at several budgets from one
run equals separate ``kmr compress`` runs stopped at those budgets — byte-identical
``model.safetensors`` and the same trace prefix; no feasible model is a typed error (exit 1); a
damaged trace is refused (exit 2).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from kmr_ref.cli import main
from kmr_ref.cli.select_cmd import NoFeasibleModel, first_within, select, write
from kmr_ref.compress import CompressConfig, ConfigError, compress, load_config, load_model

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "kmr_ref" / "examples" / "compress_digits.toml"
# the run's accepted costs (composed storage bits), read off its trace: 1225024 (M_0), 1140960,
# 1018960, 896848, 774736, 652624 (prune), 351248, 198576, 121576 (quantize)


def _cfg(budget: object) -> CompressConfig:
    d = load_config(CONFIG).to_json()
    d.pop("budget_fraction", None)
    d["budget"] = budget
    return CompressConfig.from_dict(d)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("select") / "full"
    cfg = load_config(CONFIG)
    rep = compress(load_model(cfg), cfg, out_dir=out)
    assert rep.status.value == "feasible" and rep.accepted_steps == 8
    return out


def _lines(p: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_first_within_binary_search() -> None:
    """KMR.trace.select: the least index with cost <= B in a strictly decreasing sequence."""
    costs = (10, 7, 4, Fraction(5, 2), 1)
    assert [first_within(costs, b) for b in (10, 9, 7, 3, Fraction(5, 2), 2, 1, 0, 11)] == [0, 1, 1, 3, 3, 4, 4,
                                                                                           None, 0]
    assert first_within((5,), 4) is None and first_within((5,), 5) == 0


@pytest.mark.parametrize("budget, step", [(700000, 5), (652624, 5), (200000, 7), (1225024, 0)])
def test_select_equals_a_separate_run(full_run: Path, tmp_path: Path, budget: int, step: int) -> None:
    """KMR.trace.select: the model selected at B is byte for byte the model of a separate run
    with budget B (scheduled policies do not read B), and its trace is the prefix of the full one."""
    sel = select(full_run, str(budget))
    assert sel.step == step and sel.rule_applications == step and sel.cost <= budget
    files = write(sel, full_run, tmp_path / "sel")
    assert all(f.exists() for f in files)
    sep = tmp_path / "separate"
    cfg = _cfg(budget)
    rep = compress(load_model(cfg), cfg, out_dir=sep)
    assert rep.status.value == "feasible" and rep.accepted_steps == step and rep.cost_final == sel.cost
    assert (tmp_path / "sel" / "model.safetensors").read_bytes() == (sep / "model.safetensors").read_bytes()
    assert _lines(sep / "trace.jsonl") == _lines(full_run / "trace.jsonl")[:step]
    assert sel.quality == rep.quality_final
    assert main(["eval", str(tmp_path / "sel")]) == 0  # KMR.compress.eval re-measures it


def test_select_percent_budget_and_no_feasible(full_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """KMR.trace.select: B as in the config (30% of C(M_0) = 367507.2 -> the 16-bit step); below
    the last accepted cost: NoFeasibleModel naming the clause, exit status 1."""
    sel = select(full_run, "30%")
    assert sel.budget == Fraction(3, 10) * 1225024 and sel.cost == 351248 and sel.phase == "quantize"
    with pytest.raises(NoFeasibleModel, match=r"^\[KMR\.trace\.select\] no model of this run has cost <= 121575"):
        select(full_run, 121575)
    assert main(["select", str(full_run), "--budget", "121575"]) == 1
    assert "[KMR.trace.select]" in capsys.readouterr().err
    assert main(["select", str(full_run), "--budget", "121576", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 8


def test_select_refuses_damaged_runs(full_run: Path, tmp_path: Path) -> None:
    """KMR.trace.select: a trace whose accepted costs do not decrease, a missing header, and the
    run directory itself as --out are refused (ConfigError, exit 2); the run directory is untouched."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_bytes((full_run / "run.json").read_bytes())
    recs = _lines(full_run / "trace.jsonl")
    recs[2]["cost"] = recs[1]["cost"]  # an accepted step that did not lower cost
    recs[3]["cost_before"] = recs[2]["cost"]
    (bad / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ConfigError, match=r"^\[KMR\.trace\.select\].*strictly decrease"):
        select(bad, 200000)
    assert main(["select", str(tmp_path / "nothing"), "--budget", "1"]) == 2
    before = sorted((p.name, p.read_bytes()) for p in full_run.iterdir())
    assert main(["select", str(full_run), "--budget", "700000", "--out", str(full_run)]) == 2
    assert sorted((p.name, p.read_bytes()) for p in full_run.iterdir()) == before
