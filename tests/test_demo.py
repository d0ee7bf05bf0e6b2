"""The main job: ``kmr demo --json`` (fast mode) meets its status contract."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path

from kmr_ref.cli import main


def test_demo_json_contract(tmp_path: Path) -> None:
    """KMR.prop1.monotone, KMR.prop1.status-truthful and KMR.trace.record on the real CNN run;
    KMR.alg1.return: final cost is the last accepted cost; streamed traces equal the JSON steps."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--fast", "--json", "--out", str(tmp_path)])
    assert rc == 0
    runs = json.loads(buf.getvalue())
    assert [r["policy"] for r in runs] == ["scheduled", "greedy", "prune-then-quantize", "quantize-then-prune"]
    for r in runs:
        for key in ("policy", "status", "budget", "steps", "final"):
            assert key in r
        budget = Fraction(r["budget"])
        costs = [Fraction(s["cost"]) for s in r["steps"] if s["accepted"]]
        assert all(b < a for a, b in zip([Fraction(r["initial"]["cost"]), *costs], costs, strict=False))
        final = Fraction(r["final"]["cost"])
        assert final == (costs[-1] if costs else Fraction(r["initial"]["cost"]))
        assert r["status"] in {"feasible", "stalled", "step-limit", "policy-stop", "interrupted"}
        assert (r["status"] == "feasible") == (final <= budget)
        for s in r["steps"]:
            assert set(s) >= {"t", "knob", "value", "cost", "quality", "accepted"}
        lines = (tmp_path / f"{r['policy']}.trace.jsonl").read_text().splitlines()
        assert [json.loads(x) for x in lines] == r["steps"]
        assert (tmp_path / f"{r['policy']}.safetensors").stat().st_size > 0
    # KMR.alg10.phase-break: quantizing first leaves 4-bit codes that the prune rule replaces by
    # float weights, so the first prune step raises storage and the prune phase stalls at once.
    qp = runs[3]
    assert [p["name"] for p in qp["phases"]] == ["quantize", "prune"]
    assert qp["phases"][1]["status"] == "stalled" and qp["steps"][-1]["phase"] == "prune"
    assert runs[2]["status"] == "feasible" and runs[2]["cost_unit"] == "bit"
