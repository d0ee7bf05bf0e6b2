#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/quantization.json``: vectors for per-group uniform quantization.

The expected values are computed by :func:`oracle`, Algorithm Q of ``spec/methods/quantization.md``
written line by line with numpy binary32 scalars (``np.float32``: every ``fp32(a ∘ b)`` of the spec
is one numpy float32 operation), ``np.rint`` (round half to even) and Python integers for the
integer steps. The oracle imports nothing from ``kmr_ref`` (the code under test).

After the document is built, :func:`cross_check` (skipped with ``--no-cross-check``) loads the
reference ``kmr_ref.methods.quantization`` and asserts that ``quantize_groups`` /
``dequantize_groups`` agree with every non-error vector; on a disagreement the generator stops and
writes nothing. The cross-check never feeds a value into the file (``tests/test_method_vectors.py``
regenerates with ``--no-cross-check`` while ``kmr_ref`` and ``torch`` are unimportable).

Usage: ``python spec/vectors/generate_quantization.py [OUT_DIR] [--no-cross-check]``
(default OUT_DIR: ``spec/vectors/0.1.0``). Output is canonical JSON (``sort_keys=True, indent=1``,
UTF-8, one trailing newline), deterministic.

The vector format (``kind: quant-uniform``, see ``spec/vectors/README.md``):
- ``input.w``: the (G, L) weight as G rows of L binary32 bit patterns (8 hex digits), each row one
  group; ``input.bits``: b; ``input.scheme``: ``"symmetric"`` | ``"asymmetric"``;
- ``expected``: ``{"codes": G rows of L integers, "scale": G bit patterns, "zp": G integers,
  "dequantized": G rows of L bit patterns}``, or ``{"error": "<clause ID>"}``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SPEC_VERSION = "0.1.0"
Json = Any
F32 = np.float32


class VectorError(Exception):
    """The rule must raise; ``clause`` is the clause ID the error names."""

    def __init__(self, clause: str) -> None:
        super().__init__(clause)
        self.clause = clause


# --- binary32 bit patterns -----------------------------------------------------------------------

def f32(bits: str) -> np.float32:
    return np.array([int(bits, 16)], dtype=np.uint32).view(np.float32)[0]


def hex_of(x: np.float32) -> str:
    return f"{int(np.array([x], dtype=np.float32).view(np.uint32)[0]):08x}"


def bits_of(x: float | str) -> str:
    """8 hex digits; a float must be exactly representable in binary32 (checked), a string passes."""
    if isinstance(x, str):
        assert re.fullmatch(r"[0-9a-f]{8}", x), x
        return x
    b = struct.pack(">f", x).hex()
    assert float(struct.unpack(">f", bytes.fromhex(b))[0]) == x, f"{x!r} is not a binary32 value"
    return b


# --- the oracle: Algorithm Q of spec/methods/quantization.md -------------------------------------

def code_range(bits: Json, scheme: str) -> tuple[int, int]:
    """KMR.quant.bits."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise VectorError("KMR.quant.bits")
    if scheme == "symmetric":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def rne(x: np.float32) -> int:
    """Round a binary32 value to the nearest integer, ties to even."""
    return int(np.rint(x))


def oracle(inp: Json) -> Json:
    qmin, qmax = code_range(inp["bits"], inp["scheme"])  # the knob is checked first
    rows = [[f32(b) for b in r] for r in inp["w"]]
    if not rows or any(not r for r in rows):
        raise VectorError("KMR.quant.empty")
    if any(not math.isfinite(float(x)) for r in rows for x in r):
        raise VectorError("KMR.quant.nonfinite")
    if any(abs(float(x)) > 2.0**126 for r in rows for x in r):
        raise VectorError("KMR.quant.magnitude")
    sym = inp["scheme"] == "symmetric"
    codes, scales, zps, dqs = [], [], [], []
    for r in rows:
        lo = min(min(r), F32(0.0))  # line 1, KMR.quant.range
        hi = max(max(r), F32(0.0))
        # line 2, KMR.quant.scale: one binary32 division by fp32(qmax) (exact)
        s = max(-lo, hi) / F32(qmax) if sym else (hi - lo) / F32(qmax)
        s = max(s, F32(2.0**-23))  # line 3, KMR.quant.scale-floor
        inv = F32(1.0) / s  # line 4
        zp = 0 if sym else min(max(qmin - rne(lo * inv), qmin), qmax)  # line 5, KMR.quant.zero-point
        q = [min(max(rne(w * inv) + zp, qmin), qmax) for w in r]  # line 6, KMR.quant.rounding/clamp
        dq = [F32(c - zp) * s for c in q]  # line 7, KMR.quant.dequant (c - zp exact in binary32)
        for x in (s, inv, *dq):
            assert isinstance(x, np.float32), type(x)  # every step stayed in binary32
        codes.append(q)
        scales.append(hex_of(s))
        zps.append(zp)
        dqs.append([hex_of(x) for x in dq])
    return {"codes": codes, "scale": scales, "zp": zps, "dequantized": dqs}


def run_oracle(inp: Json) -> Json:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an overflow or invalid operation is a bug of the vector
            return oracle(inp)
    except VectorError as e:
        return {"error": e.clause}


# --- the vectors ---------------------------------------------------------------------------------

ALGQ = ["KMR.quant.range", "KMR.quant.scale", "KMR.quant.scale-floor", "KMR.quant.zero-point",
        "KMR.quant.rounding", "KMR.quant.clamp", "KMR.quant.dequant", "KMR.quant.bits",
        "KMR.rule.deterministic", "KMR.rule.no-mutation"]


def features_of(inp: Json, exp: Json) -> list[str]:
    """test262-style tags: an implementation that lacks one declares it and gets not-supported."""
    f = {inp["scheme"]}
    if "error" in exp:
        f.add("input-checks")
    if any(int(b, 16) & 0x7F800000 == 0 and int(b, 16) & 0x007FFFFF for r in inp["w"] for b in r):
        f.add("subnormals")
    return sorted(f)


def vec(vid: str, primary: str, clauses: list[str], description: str, w: list[list[float | str]], bits: Json,
        scheme: str) -> Json:
    """One vector; ``primary`` is the clause it is built to test (the report blames only it)."""
    inp = {"w": [[bits_of(x) for x in r] for r in w], "bits": bits, "scheme": scheme}
    exp = run_oracle(inp)
    extra = ["KMR.error.names-clause", "KMR.rule.no-mutation"] if "error" in exp else ALGQ
    clauses = [*extra, *clauses]
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *clauses}), "features": features_of(inp, exp),
            "description": description, "input": inp, "expected": exp, "tolerance": None}


def one_rounding_scale(lo: np.float32, hi: np.float32, qmax: int) -> np.float32:
    """A plausible deviation: ``(hi - lo) / qmax`` in binary64, rounded to binary32 once."""
    return np.float32((np.float64(hi) - np.float64(lo)) / np.float64(qmax))


def two_roundings_row(b: int) -> list[float | str]:
    """The first LCG row (deterministic search) whose asymmetric scale at b bits differs between
    Algorithm Q's two binary32 roundings, fp32(fp32(hi - lo) / qmax), and one rounding."""
    qmax = 2**b - 1
    for seed in range(1, 100000):
        x = seed
        row: list[float | str] = []
        for scale in (2.0, -2.0**-9, 1.0, -2.0**-14):  # mixed exponents: hi - lo is inexact in binary32
            x = (1664525 * x + 1013904223) % 2**32
            row.append((0.5 + (x >> 9) / 2**24) * scale)  # [0.5, 1) * scale, 24 significant bits
        ws = [F32(r) for r in row]
        lo, hi = min(min(ws), F32(0.0)), max(max(ws), F32(0.0))
        if (hi - lo) / F32(qmax) != one_rounding_scale(lo, hi, qmax):
            return row
    raise AssertionError(f"no row found for b = {b}")


def lcg_rows(seed: int, g: int, n: int, scale: float) -> list[list[float | str]]:
    """Deterministic pseudo-random binary32 rows (a 32-bit LCG; no library RNG whose stream could change)."""
    x = seed
    rows: list[list[float | str]] = []
    for _ in range(g):
        row: list[float | str] = []
        for _ in range(n):
            x = (1664525 * x + 1013904223) % 2**32
            u = (x >> 8) / 2**24 * 2.0 - 1.0  # [-1, 1) with 24-bit resolution: exact in binary32
            row.append(u * scale)
        rows.append(row)
    return rows


def vectors() -> list[Json]:
    v: list[Json] = []
    basic = lcg_rows(7, 3, 6, 2.0)
    # --- bit widths and schemes ------------------------------------------------------------------
    for b in (2, 4, 8, 16):
        for scheme in ("symmetric", "asymmetric"):
            v.append(vec(f"quant-{scheme[:3] if scheme == 'symmetric' else scheme[:4]}-b{b}", "KMR.quant.rounding", [],
                         f"{scheme}, b = {b}: three groups of six pseudo-random weights in [-2, 2).",
                         basic, b, scheme))
    v.append(vec("quant-asym-positive-only", "KMR.quant.zero-point", [],
                 "Asymmetric, a group with no negative weight: lo = 0, so zp = 0 and 0 maps to code 0.",
                 [[0.5, 1.0, 2.0, 0.25], [3.0, 0.0, 1.5, 6.0]], 8, "asymmetric"))
    v.append(vec("quant-negative-only", "KMR.quant.zero-point", [],
                 "Asymmetric, groups with no positive weight: hi = 0, so zp = qmax and 0 maps to code qmax.",
                 [[-0.5, -1.0, -2.0, -0.25], [-3.0, -0.0, -1.5, -6.0]], 4, "asymmetric"))
    # --- zero, constant, tiny groups -------------------------------------------------------------
    v.append(vec("quant-all-zero-groups-sym", "KMR.quant.scale-floor", [],
                 "All-zero groups (+0, -0 mixed) get the floor s = 2^-23 (34000000), codes = zp = 0 and "
                 "dequantized +0.0; a normal group beside them is unaffected.",
                 [[0.0, -0.0, 0.0, -0.0], [-0.0, -0.0, -0.0, -0.0], [1.0, -0.5, 0.25, 0.0]], 8, "symmetric"))
    v.append(vec("quant-all-zero-groups-asym", "KMR.quant.scale-floor", [],
                 "Asymmetric all-zero groups: s = 2^-23, zp = 0, every code 0, dequantized +0.0.",
                 [[0.0, -0.0, 0.0, -0.0], [-0.0, -0.0, -0.0, -0.0]], 4, "asymmetric"))
    v.append(vec("quant-constant-groups-sym", "KMR.quant.scale", [],
                 "Constant groups c, -c and a non-representable constant (0.1): codes +/-qmax after the "
                 "scale's rounding; the dequantized value need not equal c.",
                 [[0.75, 0.75, 0.75], [-3.0, -3.0, -3.0], ["3dcccccd", "3dcccccd", "3dcccccd"]], 8, "symmetric"))
    v.append(vec("quant-constant-groups-asym", "KMR.quant.scale", [],
                 "Asymmetric constant groups: lo = 0 (positive c: zp = 0) or hi = 0 (negative c).",
                 [[0.75, 0.75, 0.75], [-3.0, -3.0, -3.0], ["3dcccccd", "3dcccccd", "3dcccccd"]], 8, "asymmetric"))
    v.append(vec("quant-denormals", "KMR.quant.scale-floor", [],
                 "A group of denormals only (00000001, 807fffff, 00400000) gets the floor s = 2^-23 and "
                 "codes 0; denormals beside normals round to code 0 (zp) and dequantize to +0.0, the "
                 "negative ones too (rne gives -0, the integer code is 0).",
                 [["00000001", "807fffff", "00400000"], [1.0, "00400000", "80000001"]], 8, "symmetric"))
    v.append(vec("quant-denormals-asym", "KMR.quant.scale-floor", [],
                 "Asymmetric, denormal groups: the floor scale, zp from rne(lo * inv) = -0 -> 0.",
                 [["00000001", "807fffff", "00400000"], [1.0, "00400000", "80000001"]], 8, "asymmetric"))
    v.append(vec("quant-scale-floor-tiny-normals", "KMR.quant.scale-floor", [],
                 "Normal weights so small that max|w| / 127 < 2^-23: the scale is floored to 2^-23 and "
                 "the codes are rne(w * 2^23).",
                 [[2.0**-20, -3 * 2.0**-23, 5 * 2.0**-25, -0.0, 3 * 2.0**-24]], 8, "symmetric"))
    v.append(vec("quant-magnitude-limit-ok", "KMR.quant.magnitude", ["KMR.quant.magnitude"],
                 "|w| = 2^126 exactly is admissible (7e800000 / fe800000): hi - lo = 2^127 stays finite.",
                 [["7e800000", "fe800000", 1.0, "7e000000"]], 8, "asymmetric"))
    v.append(vec("quant-magnitude-limit-ok-sym", "KMR.quant.magnitude", ["KMR.quant.magnitude"],
                 "Symmetric b = 2 at |w| = 2^126: s = 2^126, inv = 2^-126 (normal).",
                 [["7e800000", "fe800000", "7e000000", "7d800000"]], 2, "symmetric"))
    v.append(vec("quant-single-entry-groups", "KMR.quant.range", [],
                 "L = 1: every group is one weight; symmetric codes are +/-qmax or 0.",
                 [[1.5], [-0.375], [0.0]], 4, "symmetric"))
    # --- ties and clamping -----------------------------------------------------------------------
    v.append(vec("quant-ties-half-even-sym", "KMR.quant.rounding", [],
                 "Symmetric b = 4, hi = 7: s = 1 and inv = 1 exactly, so w * inv = k + 1/2 exactly: ties go "
                 "to the even integer (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, -2.5 -> -2, "
                 "3.5 -> 4, 6.5 -> 6).",
                 [[7.0, 0.5, 1.5, 2.5, 3.5, 6.5, -0.5, -1.5, -2.5]], 4, "symmetric"))
    v.append(vec("quant-ties-half-even-asym", "KMR.quant.rounding", [],
                 "Asymmetric b = 4, lo = -5.5, hi = 9.5: s = 1; zp = 0 - rne(-5.5) = 6 (tie to -6); "
                 "0.5 -> 6, 1.5 -> 8, -2.5 -> 4; 9.5 -> rne 10 + 6 = 16, clamped to 15.",
                 [[-5.5, 9.5, 0.5, 1.5, -2.5, 2.5, -0.5]], 4, "asymmetric"))
    v.append(vec("quant-clamp-asym-b2", "KMR.quant.clamp", [],
                 "The spec's clamp example: asymmetric b = 2, lo * inv = -1.5, hi * inv = 1.5: zp = 2, "
                 "hi -> r + zp = 4, clamped to 3; lo -> -2 + 2 = 0.",
                 [[-1.5, 1.5, 0.5, -0.5, 0.0]], 2, "asymmetric"))
    # --- product versus quotient -----------------------------------------------------------------
    hi, w = "3fef3fc3", "3fc2fa83"
    s = F32(f32(hi) / F32(127))
    assert rne(f32(w) * (F32(1.0) / s)) == 104 and rne(f32(w) / s) == 103, "the spec's documented case moved"
    v.append(vec("quant-product-not-quotient-sym", "KMR.quant.rounding", [],
                 "The spec's documented case (KMR.quant.rounding): symmetric b = 8, group [hi, w] = "
                 "[3fef3fc3, 3fc2fa83]: rne(fp32(w * fp32(1/s))) = 104 whereas rne(fp32(w / s)) = 103; "
                 "the code is 104.",
                 [[hi, w]], 8, "symmetric"))
    lo, hi, w = "bf8d3879", "3fca81f8", "3e897dc6"
    s = F32((f32(hi) - f32(lo)) / F32(15))
    assert rne(f32(w) * (F32(1.0) / s)) == 2 and rne(f32(w) / s) == 1
    v.append(vec("quant-product-not-quotient-asym", "KMR.quant.rounding", [],
                 "Asymmetric b = 4, group [bf8d3879, 3fca81f8, 3e897dc6]: for the last weight "
                 "rne(fp32(w * fp32(1/s))) = 2 whereas rne(fp32(w / s)) = 1; the code is 2 + zp.",
                 [[lo, hi, w]], 4, "asymmetric"))
    # --- the asymmetric scale is two binary32 roundings, at every bit width ---------------------
    for b in range(2, 17):
        row = two_roundings_row(b)
        ws = [F32(r) for r in row]
        lo, hi = min(min(ws), F32(0.0)), max(max(ws), F32(0.0))
        v.append(vec(f"quant-asym-scale-two-roundings-b{b}", "KMR.quant.scale", [],
                     f"Asymmetric b = {b}: s = fp32(fp32(hi - lo) / {2**b - 1}) = {hex_of((hi - lo) / F32(2**b - 1))}; "
                     f"rounding (hi - lo) / qmax once gives {hex_of(one_rounding_scale(lo, hi, 2**b - 1))}.",
                     [row], b, "asymmetric"))
    # --- errors ----------------------------------------------------------------------------------
    ok_w: list[list[float | str]] = [[1.0, -0.5]]
    kd = ["KMR.quant.bits", "KMR.knob.domain"]
    bad = ["KMR.quant.nonfinite", "KMR.rule.domain-error"]
    v.append(vec("quant-error-bits-1", "KMR.quant.bits",
                 kd, "b = 1 is outside 2..16: KnobDomainError.", ok_w, 1, "symmetric"))
    v.append(vec("quant-error-bits-17", "KMR.quant.bits",
                 kd, "b = 17 is outside 2..16: KnobDomainError.", ok_w, 17, "asymmetric"))
    v.append(vec("quant-error-nan", "KMR.quant.nonfinite",
                 bad, "A NaN weight: RuleInputError.", [[1.0, "7fc00000"]], 8, "symmetric"))
    v.append(vec("quant-error-inf", "KMR.quant.nonfinite", bad, "-inf in the second group: RuleInputError.",
                 [[1.0, 2.0], ["ff800000", 0.0]], 8, "asymmetric"))
    v.append(vec("quant-error-magnitude", "KMR.quant.magnitude", ["KMR.quant.magnitude", "KMR.rule.domain-error"],
                 "|w| = 2^127 > 2^126: RuleInputError.", [[1.0, "7f000000"]], 8, "symmetric"))
    v.append(vec("quant-error-magnitude-next-up", "KMR.quant.magnitude",
                 ["KMR.quant.magnitude", "KMR.rule.domain-error"],
                 "|w| = the binary32 just above 2^126 (fe800001): RuleInputError.", [["fe800001", 1.0]], 4,
                 "asymmetric"))
    v.append(vec("quant-error-empty-group", "KMR.quant.empty", ["KMR.quant.empty", "KMR.rule.domain-error"],
                 "A weight with zero entries (one group of length 0): RuleInputError.", [[]], 8, "symmetric"))
    ids = [x["id"] for x in v]
    assert len(ids) == len(set(ids)), "duplicate vector id"
    return v


def document() -> Json:
    return {
        "kind": "quant-uniform",
        "spec_version": SPEC_VERSION,
        "generator": "spec/vectors/generate_quantization.py",
        "description": "Uniform affine quantization, Algorithm Q of spec/methods/quantization.md, per group "
                       "(row) of a binary32 weight given as bit patterns. See spec/vectors/README.md.",
        "vectors": vectors(),
    }


def dump(doc: Json) -> bytes:
    """Canonical bytes: sorted keys, indent 1, UTF-8, one trailing newline."""
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


# --- the cross-check against the reference (never a source of expected values) ------------------

def cross_check(doc: Json) -> None:
    """Assert that ``kmr_ref.methods.quantization.quantize_groups`` / ``dequantize_groups`` give the
    oracle's codes, scales, zero points and dequantized values on every non-error vector. Error
    vectors are checked against the full rule by the conformance runner."""
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    torch = importlib.import_module("torch")
    ref = importlib.import_module("kmr_ref.methods.quantization")

    def hexes(t: Any) -> list[str]:
        return [f"{int(x):08x}" for x in t.reshape(-1).view(torch.int32).numpy().view(np.uint32)]

    bad: list[str] = []
    for vd in doc["vectors"]:
        inp, exp = vd["input"], vd["expected"]
        if "error" in exp:
            continue
        g, n = len(inp["w"]), len(inp["w"][0])
        w = torch.from_numpy(np.array([int(b, 16) for r in inp["w"] for b in r], dtype=np.uint32)
                             .view(np.float32).reshape(g, n))
        codes, scale, zp = ref.quantize_groups(w, inp["bits"], inp["scheme"])
        dq = ref.dequantize_groups(codes, scale, zp)
        got = {"codes": codes.tolist(), "scale": hexes(scale), "zp": zp.tolist(),
               "dequantized": [hexes(row) for row in dq]}
        if got != exp:
            bad.append(f"{vd['id']}: reference {got} != oracle {exp}")
    if bad:
        raise SystemExit("kmr_ref.methods.quantization disagrees with the spec oracle:\n" + "\n".join(bad))


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    out = Path(args[0]) if args else Path(__file__).resolve().parent / SPEC_VERSION
    data = dump(document())
    if "--no-cross-check" not in argv:
        cross_check(json.loads(data))
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantization.json").write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
