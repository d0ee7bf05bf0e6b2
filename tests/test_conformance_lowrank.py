"""Low-rank vectors (``spec/vectors/0.1.0/lowrank.json``: kind ``lowrank-factors``, the SVD backend's
factors given, compared bit for bit; ``lowrank_svd.json``: kind ``lowrank-svd``, the implementation's
own SVD within a tolerance) and their runner (``kmr_ref/conformance/lowrank_runner.py``).

The reference passes every vector; the generator's spec-only oracle passes as an adapter; deliberate
deviants of that oracle are caught, each on its clause: the tie of the sign convention read at the
last index (KMR.lowrank.sign), no sign convention at all (KMR.lowrank.sign), a strict > in the energy
test (KMR.lowrank.energy), no applicability test (KMR.lowrank.applicable), the split rounded in
binary32 (KMR.lowrank.split), a LowRankFactors factorized again at its own rank
(KMR.lowrank.refactor), no rank-range check (KMR.lowrank.rank-range), include patterns ignored
(KMR.select.include), and an adapter that edits its input (KMR.rule.no-mutation).
"""

from __future__ import annotations

import importlib.util
import math
import struct
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.report import build_report, run_all
from kmr_ref.conformance.vectors import ADAPTER_RUNNERS, BUILTIN_XFAIL, RunOptions, XFail, load_vectors

ROOT = Path(__file__).resolve().parent.parent
VDIR = ROOT / "spec" / "vectors" / SPEC_VERSION
FACTORS = VDIR / "lowrank.json"
SVD = VDIR / "lowrank_svd.json"
Adapter = Callable[[Mapping[str, Any]], dict[str, Any]]
REF_XFAIL = XFail.load(ROOT / "kmr_ref" / "conformance" / BUILTIN_XFAIL["reference"])


def _oracle() -> ModuleType:
    """A fresh copy of the generator's oracle (spec-only, no kmr_ref), so a deviant may patch it."""
    spec = importlib.util.spec_from_file_location("_lowrank_oracle", ROOT / "spec" / "vectors" / "generate_lowrank.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(path: Path, adapter: Adapter) -> dict[str, Any]:
    kind = load_vectors(path).kind
    rep: dict[str, Any] = build_report(run_all([path], "a", {kind: ADAPTER_RUNNERS[kind](adapter)}), "a")
    return rep


def _blame(path: Path, adapter: Adapter) -> dict[str, str]:
    return {f["id"]: f["clause"] for f in _report(path, adapter)["failures"]}


def _adapter(mod: ModuleType) -> Adapter:
    def run(inp: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = mod.run_oracle(dict(inp))
        return out

    return run


@pytest.mark.parametrize("path", [FACTORS, SVD], ids=lambda p: p.name)
def test_reference_passes_every_vector(path: Path) -> None:
    """Every vector but the reference's listed bugs (reference.xfail, strict: a fix is an XPASS)."""
    rep = build_report(run_all([path], options=RunOptions(xfail=REF_XFAIL)), "reference")
    assert rep["summary"]["ok"], rep["failures"][:3]
    t = rep["summary"]["totals"]
    assert t["pass"] + t["xfail"] == len(load_vectors(path))
    assert all(REF_XFAIL.reason(r["vector"]) for r in rep["results"] if r["outcome"] == "xfail")


def test_spec_oracle_passes_as_an_adapter() -> None:
    """The oracle written from spec/methods/lowrank.md alone, given the vector's factors, passes."""
    rep = _report(FACTORS, _adapter(_oracle()))
    assert rep["summary"]["ok"] and rep["summary"]["totals"]["fail"] == 0


def test_sign_deviants_are_caught_on_the_sign_clause() -> None:
    last = _oracle()

    def signed_last(svd: Any, m: int, n: int) -> Any:
        k = min(m, n)
        u = [[last.f64(b) for b in svd["u"]][i * k:(i + 1) * k] for i in range(m)]
        s = [last.f64(b) for b in svd["s"]]
        vh = [[last.f64(b) for b in svd["vh"]][i * n:(i + 1) * n] for i in range(k)]
        for c in range(k):
            col = [u[i][c] for i in range(m)]
            big = max(abs(x) for x in col)
            piv = max(i for i, x in enumerate(col) if abs(x) == big)  # the LAST index on ties
            if col[piv] < 0:
                for i in range(m):
                    u[i][c] = -u[i][c]
                vh[c] = [-x for x in vh[c]]
        return u, s, vh

    last.signed = signed_last
    blame = _blame(FACTORS, _adapter(last))
    assert blame == {"lowrank-sign-tie-first-index": "KMR.lowrank.sign"}

    none = _oracle()
    raw = none.signed

    def unsigned(svd: Any, m: int, n: int) -> Any:
        _, s, _ = raw(svd, m, n)  # then undo: the backend's signs as given
        k = min(m, n)
        ug = [[none.f64(b) for b in svd["u"]][i * k:(i + 1) * k] for i in range(m)]
        vg = [[none.f64(b) for b in svd["vh"]][i * n:(i + 1) * n] for i in range(k)]
        return ug, s, vg

    none.signed = unsigned
    blame = _blame(FACTORS, _adapter(none))
    assert blame["lowrank-sign-flipped-backend"] == "KMR.lowrank.sign"
    assert blame["lowrank-sign-tie-first-index"] == "KMR.lowrank.sign"


def test_energy_strict_comparison_is_caught() -> None:
    mod = _oracle()

    def strict(s: list[float], e: Fraction) -> int:
        sq = [x * x for x in s]
        total = math.fsum(sq)
        if not math.isfinite(total):
            raise mod.VectorError("KMR.lowrank.nonfinite")
        return next((r for r in range(1, len(sq) + 1) if Fraction(math.fsum(sq[:r])) > e * Fraction(total)), len(sq))

    mod.energy_rank = strict
    # at the exact boundary, and for an all-zero W (0 > 0 never holds), it picks another rank
    assert _blame(FACTORS, _adapter(mod)) == {"lowrank-energy-boundary-exact": "KMR.lowrank.energy",
                                              "lowrank-energy-all-zero": "KMR.lowrank.energy"}


def test_applicability_refactor_and_range_deviants() -> None:
    """Without the applicability test a too-large factorization is kept; without the refactor rule
    a LowRankFactors is factorized at its own rank; without the range check rank 0 is accepted."""
    mod = _oracle()
    src = mod.oracle

    def no_checks(inp: Mapping[str, Any]) -> Any:
        inp = dict(inp)
        layers = inp["layers"]
        if inp["knob"] == "rank" and isinstance(inp["value"], int) and inp["value"] >= 1:
            r = inp["value"]
            out = []
            for x in layers:
                m, n, _ = mod.matrix(x)
                ok = x.get("svd") is not None and r < min(m, n) and all(
                    math.prod(p["shape"]) for p in mod.params_of(x))
                out.append(mod.factor_layers(x, r) if ok else mod.strip(x))
            return {"layers": out, "params": sum(mod.numel(x) for x in out)}
        return src(inp)

    mod.oracle = no_checks
    blame = _blame(FACTORS, _adapter(mod))
    assert blame["lowrank-not-applicable"] == "KMR.lowrank.applicable"
    assert blame["lowrank-refactor-never-raises"] == "KMR.lowrank.refactor"

    rng = _oracle()
    exact = rng.exact_value
    rng.exact_value = lambda x, kind: Fraction(1) if kind == "rank" and x == 0 else exact(x, kind)
    assert _blame(FACTORS, _adapter(rng)) == {"lowrank-error-rank-zero": "KMR.lowrank.rank-range"}


def test_binary32_split_is_caught_on_the_split_clause() -> None:
    mod = _oracle()

    def f32(x: float) -> float:
        return float(struct.unpack(">f", struct.pack(">f", x))[0])

    orig = mod.factor_layers

    def split32(layer: Any, r: int) -> Any:
        out = orig(layer, r)
        m, n, _ = mod.matrix(layer)
        u, s, vh = mod.signed(layer["svd"], m, n)
        root = [f32(math.sqrt(f32(x))) for x in s[:r]]  # sqrt and products in binary32
        a = [f32(root[i] * f32(vh[i][j])) for i in range(r) for j in range(n)]
        b = [f32(f32(u[i][j]) * root[j]) for i in range(m) for j in range(r)]
        if layer.get("type") == "Linear" and layer["weight"]["dtype"] == "float32":
            out["first"]["weight"]["values"] = mod.encode(a, "float32")
            out["second"]["weight"]["values"] = mod.encode(b, "float32")
        return out

    mod.factor_layers = split32
    blame = _blame(FACTORS, _adapter(mod))
    assert blame and set(blame.values()) == {"KMR.lowrank.split"}, blame


def test_mutating_adapter_is_caught() -> None:
    mod = _oracle()

    def mutate(inp: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = mod.run_oracle(dict(inp))
        inp["layers"][0]["name"] = inp["layers"][0]["name"]  # harmless
        if "svd" in inp["layers"][0]:
            inp["layers"][0]["svd"] = dict(inp["layers"][0]["svd"] or {}, touched=True)
        return out

    blame = _blame(FACTORS, mutate)
    assert blame and all(c == "KMR.rule.no-mutation" for c in blame.values())


def test_tolerance_kind_accepts_small_errors_and_refuses_large() -> None:
    """lowrank-svd compares float tensors within the tolerance (1e-5): a nudge of 1e-7 relative passes,
    one of 1e-3 fails on the vector's primary clause."""
    vecs = load_vectors(SVD)
    exp = {v["id"]: v["expected"] for v in vecs}

    def nudged(scale: float) -> Adapter:
        def run(inp: Mapping[str, Any]) -> dict[str, Any]:
            vid = next(v["id"] for v in vecs if v["input"] == inp)
            out: dict[str, Any] = _nudge(exp[vid], scale)
            return out

        return run

    assert not _blame(SVD, nudged(1e-7))
    blame = _blame(SVD, nudged(1e-3))
    assert blame == {v["id"]: v["primary"] for v in vecs}


def _nudge(x: Any, scale: float) -> Any:
    if isinstance(x, dict):
        return {k: _nudge(v, scale) for k, v in x.items()}
    if isinstance(x, list) and x and all(isinstance(b, str) and len(b) == 8 for b in x):
        vals = [struct.unpack(">f", bytes.fromhex(b))[0] for b in x]
        return [struct.pack(">f", v * (1 + scale) + scale).hex() for v in vals]
    if isinstance(x, list):
        return [_nudge(v, scale) for v in x]
    return x


def test_ignored_include_is_caught() -> None:
    mod = _oracle()
    src = mod.oracle

    def no_include(inp: Mapping[str, Any]) -> Any:
        return src({k: v for k, v in inp.items() if k != "include"})

    mod.oracle = no_include
    blame = _blame(FACTORS, _adapter(mod))
    assert blame["lowrank-select-include"] == "KMR.select.include"
    assert blame["lowrank-error-select-no-match"] == "KMR.select.no-match"
