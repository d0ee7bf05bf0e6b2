"""``kmr experiment``: the committed tables under docs/results/ regenerate byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


@pytest.mark.parametrize("name", ["e1", "e3", "e2", "e4"])
def test_committed_table_regenerates_byte_identical(name: str, tmp_path: Path) -> None:
    """The markdown tables hold no timings: a fresh process on this commit writes the same bytes."""
    r = subprocess.run([sys.executable, "-m", "kmr_ref", "experiment", name, "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / f"{name}.md").read_bytes() == (RESULTS / f"{name}.md").read_bytes()
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert payload["experiment"] == name and "machine" in payload


def test_e1_cost_is_monotone_and_e2_has_every_policy() -> None:
    """KMR.prune.monotone on the committed E1 rows; E2 names the five policies, each feasible or not."""
    e1 = json.loads((RESULTS / "e1.json").read_text())
    costs = [row["cost"] for row in e1["rows"]]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs) and e1["monotone"]
    e2 = json.loads((RESULTS / "e2.json").read_text())
    assert [r["policy"] for r in e2["runs"]] == ["scheduled", "greedy", "random", "allocation", "tpe"]
    for r in e2["runs"]:
        assert set(r) >= {"policy", "status", "budget", "final"}
        assert set(r["final"]) >= {"cost", "quality"}
        if r["status"] == "feasible":
            assert int(r["final"]["cost"]) <= int(r["budget"])


def test_e4_select_equals_separate_runs() -> None:
    """KMR.trace.select on the committed E4: at every budget the selected model equals the separate
    run's (byte-identical weights, equal cost and quality) and replays fewer rule applications."""
    e4 = json.loads((RESULTS / "e4.json").read_text())
    assert len(e4["rows"]) >= 3
    for r in e4["rows"]:
        assert r["byte_identical"] and r["equal"] and r["separate"]["status"] == "feasible"
        assert r["select"]["cost"] == r["separate"]["cost"] and r["select"]["quality"] == r["separate"]["quality"]
        assert r["select"]["rule_applications"] == r["step"] < r["separate"]["rule_applications"]


# ---------------------------------------------------------------- MiniLM (opt-in: minutes of CPU)

MINILM = os.environ.get("KMR_MINILM_EXPERIMENTS") == "1"


@pytest.mark.skipif(not MINILM, reason="MiniLM experiments take minutes: set KMR_MINILM_EXPERIMENTS=1")
@pytest.mark.parametrize("name", ["e1", "e2"])
def test_minilm_table_regenerates_byte_identical(name: str, tmp_path: Path) -> None:
    """KMR.models.minilm-quality: ``kmr experiment e1|e2 --model minilm`` writes the committed table."""
    r = subprocess.run([sys.executable, "-m", "kmr_ref", "experiment", name, "--model", "minilm", "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / f"{name}-minilm.md").read_bytes() == (RESULTS / f"{name}-minilm.md").read_bytes()


def test_committed_minilm_results_shape() -> None:
    """The committed MiniLM E1 is monotone (KMR.prune.monotone) and E2 names the five policies."""
    e1, e2 = RESULTS / "e1-minilm.json", RESULTS / "e2-minilm.json"
    if not e1.exists() or not e2.exists():
        pytest.skip("MiniLM results not committed")
    rows = json.loads(e1.read_text())["rows"]
    costs = [row["cost"] for row in rows]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    d = json.loads(e2.read_text())
    assert d["model"] == "minilm"
    assert [r["policy"] for r in d["runs"]] == ["scheduled", "greedy", "random", "allocation", "tpe"]
    for r in d["runs"]:
        if r["status"] == "feasible":
            assert int(r["final"]["cost"]) <= Fraction(r["budget"])


def test_minilm_only_for_e1_e2(tmp_path: Path) -> None:
    """``--model minilm`` exists for e1 and e2 only; e3 and e4 refuse it (exit 2) and write nothing."""
    from kmr_ref.cli import main

    assert main(["experiment", "e4", "--model", "minilm", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_coarse_grid_is_the_same_rule() -> None:
    """KMR.knob.domain-real: the coarse policy grid changes the grid only; outputs equal the rule's."""
    import torch

    from kmr_ref.experiments.common import CoarseGrid
    from kmr_ref.methods.pruning import MagnitudePruning

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    inner = MagnitudePruning.for_model(m)
    coarse = CoarseGrid(inner, Fraction(1, 4))
    k = next(k for k in coarse.knobs() if k.name == "sparsity")
    assert k.grid() == [0, Fraction(1, 4), Fraction(1, 2), Fraction(3, 4), 1]
    assert [kk.name for kk in coarse.knobs()] == [kk.name for kk in inner.knobs()]
    a, b = coarse.apply(m, "sparsity", Fraction(1, 2)), inner.apply(m, "sparsity", Fraction(1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
