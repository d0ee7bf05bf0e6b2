"""``kmr experiment``: the committed tables under docs/results/ regenerate byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
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
