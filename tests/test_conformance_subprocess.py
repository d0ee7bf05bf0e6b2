"""The language-neutral protocol (``kmr conform --exec CMD``, ``subprocess_impl.py``).

The Node.js implementation under ``conformance/impls/node/`` (Algorithms 1 and 10 on table worlds,
magnitude pruning, Algorithm Q, structured pruning, low-rank from given factors; written from spec/ alone)
passes every vector through the subprocess protocol; protocol faults (bad handshake, crash,
nondeterminism, skips on non-error vectors, declared unsupported features) are reported, never raised.
Clauses exercised:
KMR.rule.deterministic (two runs per vector), KMR.prune.tensor-order, KMR.quant.scale,
KMR.structured.score (its exactly rounded sum, written with BigInt), KMR.lowrank.sign (the diagnosis
pins a missing sign convention through the protocol as in-process).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kmr_ref import SPEC_VERSION

ROOT = Path(__file__).resolve().parent.parent
VDIR = ROOT / "spec" / "vectors" / SPEC_VERSION
NODE = shutil.which("node")
NODE_IMPL = ROOT / "conformance" / "impls" / "node" / "kmr.mjs"


def _conform(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmr_ref.conformance", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_implementation_passes_every_vector() -> None:
    """A non-Python implementation conforms through the protocol: every vector of every kind passes."""
    proc = _conform("--json", "--exec", f"{NODE} {NODE_IMPL}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["summary"]["ok"] and rep["summary"]["totals"]["fail"] == 0
    kinds = {f["kind"] for f in rep["summary"]["files"] if f["pass"] == f["vectors"] > 0}
    assert {"alg1", "alg10", "prune-magnitude", "quant-uniform", "prune-structured", "lowrank-factors"} <= kinds
    # it passes the vectors the reference lists as its own bugs (kmr_ref/conformance/reference.xfail)
    res = {r["vector"]: r["outcome"] for r in rep["results"]}
    assert res["lowrank-select-exclude"] == res["lowrank-select-exclude-wins"] == "pass"
    # the kinds it does not declare are not-supported, never failed
    assert all(f["not-supported"] == f["vectors"] for f in rep["summary"]["files"] if f["kind"] not in kinds)


FAKE = textwrap.dedent('''
    import json, sys
    mode = sys.argv[1]
    def send(o):
        sys.stdout.write(json.dumps(o) + "\\n"); sys.stdout.flush()
    calls = 0
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "hello":
            if mode == "bad-hello":
                send({"op": "hi"}); continue
            send({"op": "hello", "protocol": "kmr-conform/1", "spec_version": "SPEC", "name": "fake",
                  "kinds": ["quant-uniform"], "unsupported_features": ["asymmetric"] if mode == "no-asym" else []})
        elif msg["op"] == "run":
            calls += 1
            if mode == "crash" and calls == 3:
                sys.stderr.write("boom: fake crashed\\n"); sys.exit(3)
            if mode == "skip":
                send({"op": "result", "id": msg["id"], "skip": "no"}); continue
            out = {"codes": [[calls]], "scale": ["3f800000"], "zp": [0], "dequantized": [["3f800000"]]}
            send({"op": "result", "id": msg["id"], "output": out})
        elif msg["op"] == "bye":
            break
''').replace("SPEC", SPEC_VERSION)


def _fake(tmp_path: Path, mode: str) -> str:
    script = tmp_path / "fake_impl.py"
    script.write_text(FAKE, encoding="utf-8")
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {mode}"


def test_bad_handshake_is_a_usage_error(tmp_path: Path) -> None:
    proc = _conform("--exec", _fake(tmp_path, "bad-hello"), str(VDIR / "quantization.json"))
    assert proc.returncode == 2 and "kmr-conform/1 hello" in proc.stderr and "Traceback" not in proc.stderr


def test_crash_and_nondeterminism_are_failures(tmp_path: Path) -> None:
    """The fake answers a different code on each call (KMR.rule.deterministic) and crashes on its
    third call: the vectors fail with the stderr tail, the report still completes."""
    proc = _conform("--json", "--exec", _fake(tmp_path, "crash"), str(VDIR / "quantization.json"))
    assert proc.returncode == 1
    rep = json.loads(proc.stdout)
    first, second = rep["failures"][:2]
    assert first["clause"] == "KMR.rule.deterministic"
    assert "boom: fake crashed" in second["diff"]
    assert all(r["outcome"] == "fail" for r in rep["results"])


def test_skip_only_on_error_vectors_and_features(tmp_path: Path) -> None:
    rep = json.loads(_conform("--json", "--exec", _fake(tmp_path, "skip"), str(VDIR / "quantization.json")).stdout)
    outs = {r["vector"]: r["outcome"] for r in rep["results"]}
    assert outs["quant-error-nan"] == "skip" and outs["quant-sym-b8"] == "fail"
    rep = json.loads(_conform("--json", "--exec", _fake(tmp_path, "no-asym"), str(VDIR / "quantization.json")).stdout)
    asym = [r for r in rep["results"] if "asymmetric" in r["features"]]
    assert asym and all(r["outcome"] == "not-supported" for r in asym)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_lowrank_diagnosis_through_the_protocol(tmp_path: Path) -> None:
    """A copy of the Node implementation without the sign convention: through --exec its failures
    are pinned on KMR.lowrank.sign, as the in-process runner pins them."""
    src = NODE_IMPL.read_text(encoding="utf-8")
    assert "if (u[piv][c] < 0) {" in src
    bad = tmp_path / "kmr_nosign.mjs"
    bad.write_text(src.replace("if (u[piv][c] < 0) {", "if (false) {"), encoding="utf-8")
    proc = _conform("--json", "--exec", f"{NODE} {bad}", str(VDIR / "lowrank.json"))
    assert proc.returncode == 1
    blame = {f["id"]: f["clause"] for f in json.loads(proc.stdout)["failures"]}
    assert blame["lowrank-rank1-linear"] == "KMR.lowrank.sign"
    assert blame["lowrank-sign-tie-first-index"] == "KMR.lowrank.sign"
