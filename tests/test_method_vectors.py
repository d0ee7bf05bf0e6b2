"""Frozen method vectors (``pruning.json``, ``quantization.json``): coverage, independence of the
generators, reference and kernel runs, tampering, adapters and the per-clause report.

(Schema validity and byte-for-byte regeneration of every vector file are checked for all kinds by
``tests/test_vectors.py``; this file adds what is specific to the method kinds.)
Clauses exercised through the vectors: KMR.prune.tie-break, KMR.prune.zero-value, KMR.prune.count,
KMR.quant.rounding, KMR.quant.scale-floor, KMR.rule.no-mutation, KMR.rule.deterministic.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.adapters import (
    F32Array,
    NotSupported,
    PruneOutput,
    QuantOutput,
    RuleError,
    Scheme,
    Scope,
    SkipVector,
    tree_order,
)
from kmr_ref.conformance.prune_runner import ReferencePrune, run_prune_vector
from kmr_ref.conformance.quant_runner import ReferenceQuant, run_quant_vector
from kmr_ref.conformance.report import build_report, run_all
from kmr_ref.conformance.vectors import IMPLEMENTATIONS, XFail, load_vectors, run_vector

ROOT = Path(__file__).resolve().parent.parent
VDIR = ROOT / "spec" / "vectors" / SPEC_VERSION
SCHEMA = json.loads((VDIR / "schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
PRUNE = VDIR / "pruning.json"
QUANT = VDIR / "quantization.json"
GEN = {PRUNE: ROOT / "spec" / "vectors" / "generate_pruning.py",
       QUANT: ROOT / "spec" / "vectors" / "generate_quantization.py"}
KERNELS = importlib.util.find_spec("kmr_ref.kernels") is not None


def _ids(path: Path) -> list[str]:
    return [v["id"] for v in load_vectors(path)]


def _f32(h: str) -> float:
    return float(np.array([int(h, 16)], dtype=np.uint32).view(np.float32)[0])


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


# --- the files -----------------------------------------------------------------------------------

def test_files_kinds_and_sizes() -> None:
    """Both files exist with their kinds and about 30-50 vectors each."""
    assert load_vectors(PRUNE).kind == "prune-magnitude"
    assert load_vectors(QUANT).kind == "quant-uniform"
    assert 30 <= len(load_vectors(PRUNE)) <= 50 and 30 <= len(load_vectors(QUANT)) <= 50


def test_pruning_coverage() -> None:
    """The pruning vectors cover: ties across and inside tensors, kept -0.0 (80000000) and pruned
    -0.0 (-> 00000000), denormals, zeros counting towards k, s = 0 and s = 1, floor cases 7/10 and
    1/3 of 10, per-tensor scope, sparsity@name, binary64 spellings and the typed errors."""
    vf = load_vectors(PRUNE)
    ok = [v for v in vf if "error" not in v["expected"]]
    spars = {v["input"]["sparsity"] for v in vf if not isinstance(v["input"]["sparsity"], bool)}
    assert {"0", "1", "7/10", "1/3", 0.7} <= spars
    assert any(v["input"]["scope"] == "per-tensor" and "error" not in v["expected"] for v in vf)
    assert any(v["input"]["knob"].startswith("sparsity@") and "error" not in v["expected"] for v in vf)
    assert {v["expected"].get("error") for v in vf} >= {"KMR.prune.nonfinite", "KMR.knob.domain-real",
                                                         "KMR.knob.unknown"}
    # KMR.prune.empty: a zero-size tensor is skipped (a result, not an error)
    assert any(v["primary"] == "KMR.prune.empty" and "error" not in v["expected"]
               and any(not t["values"] for t in v["input"]["tensors"]) for v in vf)
    kept_negzero = pruned_negzero = denormal = False
    for v in ok:
        for ti, t in enumerate(v["input"]["tensors"]):
            for a, b in zip(t["values"], v["expected"]["tensors"][ti]["values"], strict=True):
                kept_negzero |= a == b == "80000000"
                pruned_negzero |= a == "80000000" and b == "00000000"
                denormal |= a[1:] != "0000000" and int(a, 16) & 0x7F800000 == 0
    assert kept_negzero and pruned_negzero and denormal
    assert any(len(v["input"]["tensors"]) >= 2 and "KMR.prune.tensor-order" in v["clauses"] for v in ok)
    # tensor order observable: the module tree's depth-first order differs from the listed order
    assert sum(1 for v in ok if "tree" in v["input"]
               and tree_order(v["input"]["tree"]) != [t["name"] for t in v["input"]["tensors"]]) >= 2
    # large n with decimal sparsities where binary64 floor(s * n) is off by one
    assert any(sum(len(t["values"]) for t in v["input"]["tensors"]) >= 100 and v["primary"] == "KMR.prune.count"
               and v["input"]["sparsity"] in ("29/100", 0.29) for v in ok)


def test_quantization_coverage() -> None:
    """The quantization vectors cover b = 2, 4, 8, 16 in both schemes, the scale floor 2^-23
    (34000000), clamped codes, the documented product-versus-quotient case and the typed errors."""
    vf = load_vectors(QUANT)
    ok = [v for v in vf if "error" not in v["expected"]]
    assert {(v["input"]["bits"], v["input"]["scheme"]) for v in ok} >= {
        (b, s) for b in (2, 4, 8, 16) for s in ("symmetric", "asymmetric")}
    assert any("34000000" in v["expected"]["scale"] for v in ok)
    assert any(v["input"]["w"] == [["3fef3fc3", "3fc2fa83"]] and v["expected"]["codes"] == [[127, 104]] for v in ok)
    assert {v["expected"].get("error") for v in vf} >= {"KMR.quant.bits", "KMR.quant.nonfinite",
                                                         "KMR.quant.magnitude"}
    # a clamped code: qmax reached by a weight whose rounded code exceeds it (asymmetric ties vector)
    assert any(v["id"] == "quant-ties-half-even-asym" and 15 in v["expected"]["codes"][0] for v in ok)
    # the asymmetric scale's two binary32 roundings, at every bit width 2..16
    assert {v["input"]["bits"] for v in ok if v["id"].startswith("quant-asym-scale-two-roundings")} == set(range(2, 17))


@pytest.mark.parametrize("path", [PRUNE, QUANT], ids=lambda p: p.name)
def test_expected_values_consistent(path: Path) -> None:
    """Independent sanity checks of the frozen expectations (not a second oracle, a net under it):
    pruning keeps bits or writes +0 and its cost counts nonzeros; dequantized = (q - zp) * s."""
    for v in load_vectors(path):
        e = v["expected"]
        if "error" in e:
            continue
        if path == PRUNE:
            flat = [b for t in e["tensors"] for b in t["values"]]
            assert e["cost"] == sum(1 for b in flat if _f32(b) != 0.0 or math.isnan(_f32(b)))
            for t, o in zip(v["input"]["tensors"], e["tensors"], strict=True):
                assert all(b in (a, "00000000") for a, b in zip(t["values"], o["values"], strict=True))
        else:
            for codes, s, zp, dq in zip(e["codes"], e["scale"], e["zp"], e["dequantized"], strict=True):
                assert _f32(s) >= 2.0**-23
                got = [(np.float32(c - zp) * np.float32(_f32(s))) for c in codes]
                assert [f"{int(np.array([x]).view(np.uint32)[0]):08x}" for x in got] == dq


@pytest.mark.parametrize("how", ["bad-bits-pattern", "upper-hex", "bad-dtype", "bad-scope", "error-not-clause",
                                 "quant-float-code", "quant-extra-field", "quant-empty-scale"])
def test_schema_rejects_tampered(how: str) -> None:
    """The schema branches of the method kinds are not vacuous."""
    p = json.loads(PRUNE.read_text(encoding="utf-8"))
    q = json.loads(QUANT.read_text(encoding="utf-8"))
    pv, qv = p["vectors"][0], q["vectors"][0]
    doc = p
    if how == "bad-bits-pattern":
        pv["input"]["tensors"][0]["values"][0] = "3f80000"
    elif how == "upper-hex":
        pv["expected"]["tensors"][0]["values"][0] = "3F800000"
    elif how == "bad-dtype":
        pv["input"]["tensors"][0]["dtype"] = "float16"
    elif how == "bad-scope":
        pv["input"]["scope"] = "layer"
    elif how == "error-not-clause":
        pv["expected"] = {"error": "RuleInputError"}
    else:
        doc = q
        if how == "quant-float-code":
            qv["expected"]["codes"][0][0] = 1.5
        elif how == "quant-extra-field":
            qv["expected"]["extra"] = 1
        elif how == "quant-empty-scale":
            qv["expected"]["scale"] = []
    assert list(VALIDATOR.iter_errors(doc)), f"tampering {how!r} was accepted"


# --- the generators ------------------------------------------------------------------------------

BLOCK = ("import sys, runpy; sys.modules['kmr_ref'] = None; sys.modules['torch'] = None; "
         "sys.argv = [sys.argv[1], sys.argv[2], '--no-cross-check']; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("path", [PRUNE, QUANT], ids=lambda p: p.name)
def test_generator_independent_of_reference(path: Path, tmp_path: Path) -> None:
    """The expected values do not come from the code under test: with ``kmr_ref`` and ``torch``
    unimportable and the cross-check off, the generator writes the committed bytes."""
    proc = _run("-c", BLOCK, str(GEN[path]), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def _load_generator(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"_gen_{path.stem}", GEN[path])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", [PRUNE, QUANT], ids=lambda p: p.name)
def test_generator_cross_check_detects_disagreement(path: Path) -> None:
    """The generator's cross-check passes on the committed file and stops on a tampered expectation."""
    gen = _load_generator(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    gen.cross_check(copy.deepcopy(doc))
    v = next(x for x in doc["vectors"] if "error" not in x["expected"])
    if path == PRUNE:
        v["expected"]["tensors"][0]["values"][-1] = "3f800001"
    else:
        v["expected"]["codes"][0][0] += 1
    with pytest.raises(SystemExit, match=v["id"]):
        gen.cross_check(doc)


# --- runs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("vid", _ids(PRUNE))
def test_pruning_vector_reference(vid: str) -> None:
    """Each pruning vector passes against the reference rule (clauses: the vector's "clauses")."""
    vf = load_vectors(PRUNE)
    r = run_vector(vf.kind, vf.by_id(vid), PRUNE.relative_to(ROOT))
    assert r.outcome == "pass", f"{r.diff}\nreproduce: {r.reproduction}"


@pytest.mark.parametrize("vid", _ids(QUANT))
def test_quantization_vector_reference(vid: str) -> None:
    """Each quantization vector passes against the reference rule."""
    vf = load_vectors(QUANT)
    r = run_vector(vf.kind, vf.by_id(vid), QUANT.relative_to(ROOT))
    assert r.outcome == "pass", f"{r.diff}\nreproduce: {r.reproduction}"


@pytest.mark.skipif(not KERNELS, reason="kmr_ref.kernels is not present")
@pytest.mark.parametrize("path", [PRUNE, QUANT], ids=lambda p: p.name)
def test_vectors_kernels(path: Path) -> None:
    """The kernels pass every non-error vector; error vectors are skipped (bare kernels assume
    validated input), never failed."""
    vf = load_vectors(path)
    for v in vf:
        r = run_vector(vf.kind, v, path.relative_to(ROOT), "kernels")
        want = "skip" if "error" in v["expected"] else "pass"
        assert r.outcome == want, f"{v['id']}: {r.outcome}\n{r.diff}\nreproduce: {r.reproduction}"
        if r.outcome == "fail":
            assert "--impl kernels" in r.reproduction


def _tampered(vec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    e = vec["expected"]
    if "error" in e:
        m = copy.deepcopy(vec)
        m["expected"] = {"error": "KMR.rule.domain-error"}
        return [m]
    if "tensors" in e:
        if e["tensors"]:
            m = copy.deepcopy(vec)
            vals = m["expected"]["tensors"][-1]["values"]
            vals[-1] = f"{int(vals[-1], 16) ^ 1:08x}"  # one bit
            out.append(m)
            m = copy.deepcopy(vec)
            vals = next(t["values"] for t in m["expected"]["tensors"] if t["values"])  # first non-empty tensor
            vals[0] = "80000000" if vals[0] == "00000000" else "00000000"  # the sign of a zero, or a prune
            out.append(m)
        m = copy.deepcopy(vec)
        m["expected"]["cost"] += 1
        out.append(m)
    else:
        for key in ("scale", "dequantized"):
            m = copy.deepcopy(vec)
            row = m["expected"][key] if key == "scale" else m["expected"][key][0]
            row[0] = f"{int(row[0], 16) ^ 0x80000000:08x}"
            out.append(m)
        m = copy.deepcopy(vec)
        m["expected"]["codes"][0][0] += 1
        out.append(m)
        m = copy.deepcopy(vec)
        m["expected"]["zp"][0] += 1
        out.append(m)
    return out


@pytest.mark.parametrize("path", [PRUNE, QUANT], ids=lambda p: p.name)
def test_tampered_expectations_fail(path: Path) -> None:
    """The runners are not vacuous: every tampered expectation of every vector fails with a diff."""
    vf = load_vectors(path)
    for v in vf:
        for m in _tampered(v):
            r = run_vector(vf.kind, m, path)
            assert r.outcome == "fail" and r.diff, f"a tampering of {v['id']} passed"


class _MutatingPrune(ReferencePrune):
    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope, sparsity: Any,
              tree: Sequence[Mapping[str, Any]]) -> PruneOutput:
        out = super().prune(tensors, knob, scope, sparsity, tree)
        if tensors and tensors[0][1].size:
            tensors[0][1].reshape(-1)[0] = 0.0  # KMR.rule.no-mutation violated
        return out


class _FlakyQuant(ReferenceQuant):
    calls = 0

    def quantize(self, w: F32Array, bits: Any, scheme: Scheme) -> QuantOutput:
        out = super().quantize(w, bits, scheme)
        self.calls += 1
        return QuantOutput(np.asarray(out.codes) + (self.calls % 2), out.scale, out.zp, out.dequantized)


def test_runner_checks_mutation_and_determinism() -> None:
    """KMR.rule.no-mutation and KMR.rule.deterministic are checked by the runner itself."""
    pv = load_vectors(PRUNE).by_id("prune-global-two-tensors")
    ok, diff = run_prune_vector(pv, _MutatingPrune())
    assert not ok and "KMR.rule.no-mutation" in diff
    qv = load_vectors(QUANT).by_id("quant-sym-b8")
    ok, diff = run_quant_vector(qv, _FlakyQuant())
    assert not ok and "KMR.rule.deterministic" in diff


def test_outcomes_skip_and_not_supported() -> None:
    """NotSupported and SkipVector raised by an adapter become outcomes, not crashes; a kind with
    no runner in an implementation is not-supported (alg1 has no kernel)."""
    v = load_vectors(PRUNE).by_id("prune-count-1-of-3")

    class Unsupported(ReferencePrune):
        def prune(self, *a: Any, **k: Any) -> PruneOutput:
            raise NotSupported("no per-tensor scope here")

    class Skipping(ReferencePrune):
        def prune(self, *a: Any, **k: Any) -> PruneOutput:
            raise SkipVector("not applicable")

    from kmr_ref.conformance.prune_runner import make_runner
    assert run_vector("prune-magnitude", v, runners={"prune-magnitude": make_runner(Unsupported())}).outcome == \
        "not-supported"
    # SkipVector is allowed on error vectors only; on any other vector it is a failure
    assert run_vector("prune-magnitude", v, runners={"prune-magnitude": make_runner(Skipping())}).outcome == "fail"
    err = next(x for x in load_vectors(PRUNE) if "error" in x["expected"])
    assert run_vector("prune-magnitude", err, runners={"prune-magnitude": make_runner(Skipping())}).outcome == "skip"
    alg1 = load_vectors(VDIR / "alg1.json")
    assert run_vector("alg1", alg1.vectors[0], impl="kernels").outcome == "not-supported"
    assert "alg1" not in IMPLEMENTATIONS["kernels"]


# --- a third-party adapter, written from the spec text with numpy only (the README example) -----

class NumpyPrune:
    """Magnitude pruning in numpy: a stable argsort of |w| over the concatenation (tensor order,
    row-major), pruned entries set to +0.0 (``KMR.prune.tie-break``, ``KMR.prune.zero-value``)."""

    checks_input = True
    zero_keeps_sign = False

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope, sparsity: Any,
              tree: Sequence[Mapping[str, Any]]) -> PruneOutput:
        if isinstance(sparsity, bool) or not isinstance(sparsity, int | float | Fraction):
            raise RuleError("KMR.knob.domain-real", f"bad sparsity {sparsity!r}")
        s = Fraction(repr(sparsity)) if isinstance(sparsity, float) else Fraction(sparsity)
        if not 0 <= s <= 1:
            raise RuleError("KMR.knob.domain-real", f"{s} is outside [0, 1]")
        given = dict(tensors)
        names = tree_order(tree)  # KMR.prune.tensor-order: depth-first over the module tree
        if knob == "sparsity":
            groups = [list(range(len(names)))] if scope == "global" else [[i] for i in range(len(names))]
        elif knob.startswith("sparsity@") and knob[9:] in names:
            groups = [[names.index(knob[9:])]]
        else:
            raise RuleError("KMR.knob.unknown", knob)
        arrays = [given[n].copy() for n in names]
        for g in groups:
            for i in g:
                if not np.isfinite(arrays[i]).all():
                    raise RuleError("KMR.prune.nonfinite", names[i])
            flat = np.concatenate([arrays[i].reshape(-1) for i in g]) if g else np.zeros(0, np.float32)
            k = math.floor(s * flat.size)
            pruned = np.argsort(np.abs(flat.astype(np.float64)), kind="stable")[:k]
            flat[pruned] = flat[pruned] * 0 if self.zero_keeps_sign else 0.0
            off = 0
            for i in g:
                arrays[i] = flat[off:off + arrays[i].size].reshape(arrays[i].shape)
                off += arrays[i].size
        out = dict(zip(names, arrays, strict=True))
        return PruneOutput([out[n] for n, _ in tensors], sum(int(np.count_nonzero(a)) for a in arrays))


class SignedZeroPrune(NumpyPrune):
    """A plausible bug: pruning by ``w * 0`` keeps the sign (-0.0), against ``KMR.prune.zero-value``."""

    zero_keeps_sign = True


def test_third_party_adapter_report_passes() -> None:
    """The README's adapter route: an independent numpy pruning function passes every pruning
    vector through ``python -m kmr_ref.conformance --adapter``; other kinds are not-supported."""
    proc = _run("-m", "kmr_ref.conformance", "--json", "--adapter",
                "prune-magnitude=tests.test_method_vectors:NumpyPrune")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    rep = json.loads(proc.stdout)["summary"]
    files = {Path(f["path"]).name: f for f in rep["files"]}
    assert files["pruning.json"]["pass"] == files["pruning.json"]["vectors"]
    assert files["alg1.json"]["not-supported"] == files["alg1.json"]["vectors"]
    assert rep["clauses"]["KMR.prune.tie-break"]["status"] == "pass"


class DecliningPrune:
    """Implements nothing: every vector is not-supported."""

    checks_input = True

    def prune(self, *a: Any, **k: Any) -> PruneOutput:
        raise NotSupported("nothing here")


def test_report_not_ok_without_a_single_pass() -> None:
    """An adapter that declines everything conforms to nothing: the report is not ok (exit 1)."""
    adapter = "prune-magnitude=tests.test_method_vectors:DecliningPrune"
    proc = _run("-m", "kmr_ref.conformance", "--json", "--adapter", adapter, str(PRUNE.relative_to(ROOT)))
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["summary"]["ok"] is False and rep["failures"] == [] and rep["summary"]["totals"]["pass"] == 0


def test_report_fails_a_wrong_implementation() -> None:
    """A pruning function that leaves -0.0 in pruned negative entries fails KMR.prune.zero-value
    (exit 1); each failure has a reproduction command that itself exits 1."""
    adapter = "prune-magnitude=tests.test_method_vectors:SignedZeroPrune"
    proc = _run("-m", "kmr_ref.conformance", "--json", "--adapter", adapter, str(PRUNE.relative_to(ROOT)))
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    clauses = rep["summary"]["clauses"]
    assert clauses["KMR.prune.zero-value"]["status"] == "fail"
    assert clauses["KMR.knob.unknown"]["status"] == "pass"
    # blamed on the primary clause only: the runner's own checks are not charged
    assert clauses["KMR.rule.no-mutation"]["status"] == "pass" and clauses["KMR.rule.deterministic"]["fail"] == 0
    fail_ids = {f["id"] for f in rep["failures"]}
    assert "prune-s1-all-plus-zero" in fail_ids and "prune-count-floor-to-zero" not in fail_ids
    repro = rep["failures"][0]["reproduction"]
    assert "-m kmr_ref.conformance --adapter" in repro and "--id" in repro and "--show" in repro
    proc2 = subprocess.run(repro, shell=True, capture_output=True, text=True, cwd="/", timeout=300, check=False)
    assert proc2.returncode == 1 and "FAIL" in proc2.stdout and "input: " in proc2.stdout


# --- the per-clause report -----------------------------------------------------------------------

def test_report_json_reference() -> None:
    """``python -m kmr_ref.conformance --json``: every default file, exit 0, and per clause the counts
    of the vectors citing it (recomputed here from the files)."""
    proc = _run("-m", "kmr_ref.conformance", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    full = json.loads(proc.stdout)
    rep = full["summary"]
    assert full["impl"] == "reference" and rep["ok"] and not full["failures"]
    names = {Path(f["path"]).name for f in rep["files"]}
    assert {"alg1.json", "alg10.json", "pruning.json", "quantization.json", "lowrank.json", "lowrank_svd.json",
            "compress_config.json"} <= names
    # every vector passes but the reference's own expected failures (kmr_ref/conformance/reference.xfail:
    # bugs a vector found, reported; strict, so a fix shows as an XPASS)
    listed = XFail.load(ROOT / "kmr_ref" / "conformance" / "reference.xfail")
    xfailed = {r["vector"] for r in full["results"] if r["outcome"] == "xfail"}
    assert all(listed.reason(v) for v in xfailed)
    assert all(r["outcome"] == "pass" for r in full["results"] if r["vector"] not in xfailed)
    assert len(full["results"]) == sum(f["vectors"] for f in rep["files"])
    cites: dict[str, int] = {}
    for f in rep["files"]:
        for v in load_vectors(ROOT / f["path"]):
            if v["id"] in xfailed:
                continue
            for c in v["clauses"]:
                cites[c] = cites.get(c, 0) + 1
    assert set(cites) <= set(rep["clauses"])
    for c in cites:
        d = rep["clauses"][c]
        assert d["status"] == "pass" and d["pass"] == cites[c] and d["fail"] == 0, c


@pytest.mark.skipif(not KERNELS, reason="kmr_ref.kernels is not present")
def test_report_text_kernels() -> None:
    """``--impl kernels`` (text): alg1 is not-supported, error vectors skip, nothing fails."""
    proc = _run("-m", "kmr_ref.conformance", "--impl", "kernels")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "implementation kernels" in proc.stdout and "FAIL" not in proc.stdout
    assert "KMR.prune.tie-break" in proc.stdout


def test_report_tampered_file(tmp_path: Path) -> None:
    """A tampered copy of quantization.json: the report exits 1, the clauses the vector cites fail,
    others still pass, and the reproduction command reruns exactly that vector (and fails)."""
    doc = json.loads(QUANT.read_text(encoding="utf-8"))
    v = next(x for x in doc["vectors"] if x["id"] == "quant-ties-half-even-sym")
    v["expected"]["codes"][0][2] = 1  # 1.5 rounds to 2 (half to even), not 1
    f = tmp_path / "quantization.json"
    f.write_text(json.dumps(doc), encoding="utf-8")
    runs = run_all([f])
    rep = build_report(runs, "reference")
    s = rep["summary"]
    assert not s["ok"] and [x["id"] for x in rep["failures"]] == ["quant-ties-half-even-sym"]
    assert s["clauses"]["KMR.quant.rounding"]["status"] == "fail"
    assert s["clauses"]["KMR.quant.rounding"]["fail"] == 1
    assert s["clauses"]["KMR.quant.scale"]["fail"] == 0  # cited, but not the primary clause
    assert s["clauses"]["KMR.quant.nonfinite"]["status"] == "pass"
    proc = _run("-m", "kmr_ref.conformance", "--json", str(f))
    assert proc.returncode == 1
    repro = json.loads(proc.stdout)["failures"][0]["reproduction"]
    assert str(f) in repro and "--id quant-ties-half-even-sym" in repro
    proc2 = subprocess.run(repro, shell=True, capture_output=True, text=True, cwd="/", timeout=300, check=False)
    assert proc2.returncode == 1 and "expected.codes[0][2]" in proc2.stdout
