#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/lowrank.json`` and ``lowrank_svd.json``: vectors for low-rank
factorization (``spec/methods/lowrank.md``).

No SVD is correctly rounded, so an SVD's last bits depend on the backend (``KMR.lowrank.svd``).
The two kinds make that caveat explicit:

- ``lowrank-factors`` (``lowrank.json``, exact): every layer carries **the factors an SVD backend
  returned** for its binary64 matrix (``svd: {"u", "s", "vh"}``, binary64 bit patterns, before the
  sign convention). Everything after the SVD is exact IEEE arithmetic and is compared bit for bit:
  the sign convention (``KMR.lowrank.sign``), the rank from the energy (``KMR.lowrank.energy``),
  the applicability test, the split into √s on both sides and the one cast to the layer's dtype
  (``KMR.lowrank.split``), the Conv shapes, refactorization, and every error. An implementation
  uses the given factors instead of calling its own SVD.
- ``lowrank-svd`` (``lowrank_svd.json``, tolerance): the implementation runs its own SVD; the
  factors, and the outputs of the factorized layer on the vector's inputs ``x``
  (``KMR.lowrank.equivalence``), are compared within the vector's ``tolerance``. Their matrices have
  well-separated singular values and a clear largest entry in each singular vector, so any
  backward-stable SVD with the sign convention lands within it.

The expected values come from :func:`oracle`, written from ``spec/methods/lowrank.md`` in plain
Python (``struct`` for bit patterns, ``math.fsum`` and ``Fraction`` for the energy); the layers are made from
known factors (Householder products of integer vectors, a rational orthogonal matrix), so no SVD
library is involved and the bytes do not depend on the machine. It imports nothing from ``kmr_ref``.

Usage: ``python spec/vectors/generate_lowrank.py [OUT_DIR]`` (default: ``spec/vectors/0.1.0``).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import re
import struct
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

SPEC_VERSION = "0.1.0"
Json = Any
RATIONAL = re.compile(r"^-?(0|[1-9][0-9]*)(/[1-9][0-9]*)?$")
RANK_MAX = 1 << 20
FLOAT = ("float32", "float64")


class VectorError(Exception):
    def __init__(self, clause: str) -> None:
        super().__init__(clause)
        self.clause = clause


# --- bit patterns --------------------------------------------------------------------------------

def f32(bits: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(bits))[0])


def f64(bits: str) -> float:
    return float(struct.unpack(">d", bytes.fromhex(bits))[0])


def b32(x: float) -> str:
    """The binary32 nearest to x (round to nearest, ties to even), as a bit pattern."""
    return struct.pack(">f", x).hex()


def b64(x: float) -> str:
    return struct.pack(">d", float(x)).hex()


def decode(t: Json) -> list[float]:
    if t["dtype"] == "float32":
        return [f32(b) for b in t["values"]]
    if t["dtype"] == "float64":
        return [f64(b) for b in t["values"]]
    return [float(v) for v in t["values"]]


def encode(vals: list[float], dtype: str) -> list[str]:
    return [b32(v) for v in vals] if dtype == "float32" else [b64(v) for v in vals]


# --- the oracle (spec/methods/lowrank.md) --------------------------------------------------------

def matrix(layer: Json) -> tuple[int, int, list[list[float]]]:
    """KMR.lowrank.conv / KMR.lowrank.refactor: the m x n binary64 matrix of a layer."""
    if layer["type"] == "LowRankFactors":
        r0, n, a = matrix(layer["first"])
        m, _, b = matrix(layer["second"])
        # the product in binary64: only its shape and the factors given for it are used below
        return m, n, [[math.fsum(b[i][k] * a[k][j] for k in range(r0)) for j in range(n)] for i in range(m)]
    w = layer["weight"]
    shape = w["shape"]
    m = shape[0]
    n = math.prod(shape[1:])
    v = decode(w)
    return m, n, [v[i * n:(i + 1) * n] for i in range(m)]


def params_of(layer: Json) -> list[Json]:
    if layer["type"] == "LowRankFactors":
        return params_of(layer["first"]) + params_of(layer["second"])
    out = [layer["weight"]]
    if layer["bias"] is not None:
        out.append({"dtype": layer["weight"]["dtype"], "values": layer["bias"], "shape": [len(layer["bias"])]})
    return out


def param_names(layer: Json) -> list[str]:
    """The layer's parameter names as named_parameters() spells them under the layer."""
    if layer["type"] == "LowRankFactors":
        return [f"0.{q}" for q in param_names(layer["first"])] + [f"1.{q}" for q in param_names(layer["second"])]
    return ["weight"] + (["bias"] if layer["bias"] is not None else [])


def numel(layer: Json) -> int:
    return sum(math.prod(p["shape"]) for p in params_of(layer))


def exact_value(x: Json, kind: str) -> Fraction:
    if kind == "rank":  # KMR.lowrank.rank-range: an integer 1..2^20
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= RANK_MAX:
            raise VectorError("KMR.lowrank.rank-range")
        return Fraction(x)
    if isinstance(x, bool):
        raise VectorError("KMR.knob.domain-real")
    if isinstance(x, int):
        e = Fraction(x)
    elif isinstance(x, float):
        e = Fraction(repr(x))  # KMR.exact.binary64
    elif isinstance(x, str) and RATIONAL.match(x):
        e = Fraction(x)
    else:
        raise VectorError("KMR.knob.domain-real")
    if not 0 < e <= 1:  # KMR.lowrank.energy: (0, 1]
        raise VectorError("KMR.knob.domain-real")
    return e


def signed(svd: Json, m: int, n: int) -> tuple[list[list[float]], list[float], list[list[float]]]:
    """KMR.lowrank.sign on the given factors: negate (u_i, v_i) when u_i's entry of largest |value|
    (first index on ties) is negative."""
    k = min(m, n)
    uf = [f64(b) for b in svd["u"]]
    s = [f64(b) for b in svd["s"]]
    vf = [f64(b) for b in svd["vh"]]
    u = [uf[i * k:(i + 1) * k] for i in range(m)]
    vh = [vf[i * n:(i + 1) * n] for i in range(k)]
    for c in range(k):
        col = [u[i][c] for i in range(m)]
        big = max(abs(x) for x in col)
        piv = next(i for i, x in enumerate(col) if abs(x) == big)
        if col[piv] < 0:
            for i in range(m):
                u[i][c] = u[i][c] * -1.0
            vh[c] = [x * -1.0 for x in vh[c]]
    return u, s, vh


def energy_rank(s: list[float], e: Fraction) -> int:
    """KMR.lowrank.energy: the smallest r with fsum(e_1..e_r) >= e * fsum(e_1..e_k), exactly."""
    sq = [x * x for x in s]
    total = math.fsum(sq)
    if not math.isfinite(total):  # KMR.lowrank.nonfinite: the energy overflows binary64
        raise VectorError("KMR.lowrank.nonfinite")
    for r in range(1, len(sq) + 1):
        if Fraction(math.fsum(sq[:r])) >= e * Fraction(total):
            return r
    return len(sq)


def factor_layers(layer: Json, r: int) -> Json:
    """KMR.lowrank.split / KMR.lowrank.conv: first = sqrt(S_r) V_r^T, second = U_r sqrt(S_r), each
    entry one binary64 product, cast once to the layer's dtype; the bias moves to second."""
    base = layer["first"] if layer["type"] == "LowRankFactors" else layer
    last = layer["second"] if layer["type"] == "LowRankFactors" else layer
    m, n, _ = matrix(layer)
    u, s, vh = signed(layer["svd"], m, n)
    root = [math.sqrt(x) for x in s[:r]]
    a = [root[i] * vh[i][j] for i in range(r) for j in range(n)]
    b = [u[i][j] * root[j] for i in range(m) for j in range(r)]
    dtype = base["weight"]["dtype"]
    if base["type"] == "Linear":
        first = {"type": "Linear", "weight": {"shape": [r, n], "dtype": dtype, "values": encode(a, dtype)},
                 "bias": None}
        second = {"type": "Linear", "weight": {"shape": [m, r], "dtype": dtype, "values": encode(b, dtype)},
                  "bias": last["bias"]}
    else:
        shape = base["weight"]["shape"]
        first = {"type": base["type"], "weight": {"shape": [r, *shape[1:]], "dtype": dtype, "values": encode(a, dtype)},
                 "bias": None, "conv": base["conv"]}
        ones = [1] * (len(shape) - 2)
        second = {"type": base["type"], "weight": {"shape": [m, r, *ones], "dtype": dtype, "values": encode(b, dtype)},
                  "bias": last["bias"], "conv": {"stride": ones, "padding": [0] * len(ones), "dilation": ones}}
    return {"name": layer["name"], "type": "LowRankFactors", "first": first, "second": second}


def strip(layer: Json) -> Json:
    out = {k: v for k, v in layer.items() if k != "svd"}
    return out


def oracle(inp: Json) -> Json:
    layers = inp["layers"]
    by_name = {x["name"]: x for x in layers}
    if inp.get("rule_layers") is not None:  # KMR.lowrank.scope: the configured names
        for nm in inp["rule_layers"]:
            if nm not in by_name:
                raise VectorError("KMR.lowrank.scope")
        configured = list(inp["rule_layers"])
    else:
        configured = None

    def in_scope(x: Json) -> bool:  # KMR.lowrank.empty: a zero-size parameter is not in scope
        return all(math.prod(p["shape"]) > 0 for p in params_of(x))

    rule_names = configured if configured is not None else [x["name"] for x in layers if in_scope(x)]
    inc, exc = inp.get("include"), inp.get("exclude", [])
    if inc is not None or exc:  # KMR.select.include / exclude / no-match, on the layers' parameter names
        if isinstance(inc, str) or isinstance(exc, str):
            raise VectorError("KMR.select.include")  # a bare string is not a list of patterns
        pnames = {nm: [f"{nm}.{q}" for q in param_names(by_name[nm])] for nm in rule_names}
        every = [q for nm in rule_names for q in pnames[nm]]
        for pat in [*(inc or []), *exc]:
            if not any(fnmatch.fnmatchcase(q, pat) for q in every):
                raise VectorError("KMR.select.no-match")
        rule_names = [nm for nm in rule_names
                      if (inc is None or any(fnmatch.fnmatchcase(q, p) for q in pnames[nm] for p in inc))
                      and not any(fnmatch.fnmatchcase(q, p) for q in pnames[nm] for p in exc)]
    knob = inp["knob"]
    kind, _, target = knob.partition("@")
    known = {"rank", "energy"} | {f"{k}@{nm}" for nm in rule_names for k in ("rank", "energy")}
    if knob not in known:
        raise VectorError("KMR.knob.unknown")
    v = exact_value(inp["value"], kind)
    scope = [by_name[nm] for nm in (configured if configured is not None else rule_names)]
    scope = [x for x in scope if in_scope(x)]
    if target:  # KMR.lowrank.per-layer-knob
        scope = [x for x in scope if x["name"] == target]
    for x in scope:  # KMR.lowrank.dtype, KMR.lowrank.nonfinite
        for p in params_of(x):
            if p["dtype"] not in FLOAT:
                raise VectorError("KMR.lowrank.dtype")
            if any(not math.isfinite(z) for z in decode(p)):
                raise VectorError("KMR.lowrank.nonfinite")
    plan: dict[str, int] = {}
    for x in scope:
        m, n, _ = matrix(x)
        if kind == "rank":
            r = int(v)
            if target and r >= min(m, n):  # KMR.lowrank.rank-range (per-layer knob)
                raise VectorError("KMR.lowrank.rank-range")
        else:
            r = energy_rank([f64(b) for b in x["svd"]["s"]], v)
        if x["type"] == "LowRankFactors" and r >= x["first"]["weight"]["shape"][0]:
            continue  # KMR.lowrank.refactor: never raises the rank
        if not r * (m + n) < m * n:  # KMR.lowrank.applicable (also r >= min(m, n) under `rank`)
            continue
        plan[x["name"]] = r
    out = [factor_layers(x, plan[x["name"]]) if x["name"] in plan else strip(x) for x in layers]
    return {"layers": out, "params": sum(numel(x) for x in out)}  # KMR.meter.params


def run_oracle(inp: Json) -> Json:
    try:
        return oracle(inp)
    except VectorError as e:
        return {"error": e.clause}


# --- building layers ------------------------------------------------------------------------------
# Every float layer is built from factors (U, s, V) made here with a fixed sequence of IEEE operations
# (Householder reflections of small integer vectors, math.fsum), never by an SVD library, so the
# file's bytes do not depend on the machine's LAPACK; W is U diag(s) V^T cast to the layer's dtype,
# and the factors given as "the backend's" are (U, s, V^T) (a backward-stable SVD of W agrees with
# them within binary32 rounding).

Mat = list[list[float]]


def lcg(seed: int) -> Any:
    x = seed
    while True:
        x = (6364136223846793005 * x + 1442695040888963407) % (1 << 64)
        yield int((x >> 33) % 7) - 3  # small integers in -3..3


def orthogonal(n: int, seed: int) -> Mat:
    """An n x n orthogonal matrix: a product of n Householder reflections I - 2 v v^T / (v^T v) with
    integer v (pure Python, fixed order of operations)."""
    q = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    g = lcg(seed)
    for _ in range(n):
        vv = [next(g) for _ in range(n)]
        if not any(vv):
            vv[0] = 1
        nn = sum(t * t for t in vv)
        h = [[(1.0 if i == j else 0.0) - 2.0 * vv[i] * vv[j] / nn for j in range(n)] for i in range(n)]
        q = [[math.fsum(q[i][t] * h[t][j] for t in range(n)) for j in range(n)] for i in range(n)]
    return q


def cols(q: Mat, k: int) -> Mat:
    return [row[:k] for row in q]


def transpose(a: Mat) -> Mat:
    return [list(r) for r in zip(*a, strict=True)] if a else []


def compose(u: Mat, s: list[float], vh: Mat) -> Mat:
    """U diag(s) V^T in binary64, each entry an exactly rounded sum."""
    k = len(s)
    n = len(vh[0]) if vh else 0
    return [[math.fsum(u[i][t] * s[t] * vh[t][j] for t in range(k)) for j in range(n)] for i in range(len(u))]


def flat(a: Mat) -> list[float]:
    return [x for row in a for x in row]


def given_svd(u: Mat, s: list[float], vh: Mat) -> Json:
    return {"u": [b64(x) for x in flat(u)], "s": [b64(x) for x in s], "vh": [b64(x) for x in flat(vh)]}


def made(m: int, n: int, s: list[float], seed: int) -> tuple[Mat, list[float], Mat]:
    """Factors (U m x k, s, V^T k x n) with k = min(m, n), orthonormal columns from :func:`orthogonal`."""
    k = min(m, n)
    s = (s + [0.0] * k)[:k]
    return cols(orthogonal(m, seed), k), s, transpose(cols(orthogonal(n, seed + 1), k))


def lin(name: str, f: tuple[Mat, list[float], Mat] | None, bias: list[float] | None = None, dtype: str = "float32",
        w: Mat | None = None, svd: Json | str = "made") -> Json:
    """A Linear whose weight is U diag(s) V^T (``f``) cast to ``dtype``, or ``w`` as given."""
    if w is None:
        assert f is not None
        w = compose(*f)
    m = len(w)
    n = len(w[0]) if w else 0
    vals: list[Any] = [int(x) for x in flat(w)] if dtype not in FLOAT else encode(flat(w), dtype)
    layer: Json = {"name": name, "type": "Linear", "weight": {"shape": [m, n], "dtype": dtype, "values": vals},
                   "bias": None if bias is None else encode(bias, dtype)}
    layer["svd"] = given_svd(*f) if svd == "made" and f is not None else (None if svd == "made" else svd)
    return layer


def conv1d(name: str, out: int, inn: int, k: int, s: list[float], seed: int, bias: list[float] | None,
           stride: int, padding: int, dilation: int) -> Json:
    f = made(out, inn * k, s, seed)
    vals = encode(flat(compose(*f)), "float32")
    layer: Json = {"name": name, "type": "Conv1d",
                   "weight": {"shape": [out, inn, k], "dtype": "float32", "values": vals},
                   "bias": None if bias is None else encode(bias, "float32"),
                   "conv": {"stride": [stride], "padding": [padding], "dilation": [dilation]}, "svd": given_svd(*f)}
    return layer


def factors(name: str, m: int, n: int, s: list[float], seed: int, bias: list[float] | None) -> Json:
    """A LowRankFactors (second @ first) of current rank len(s), made as the split of (U, s, V^T);
    the factors given for its product B A are those (U, s, V^T), padded with zero singular values."""
    r0 = len(s)
    u, sf, vh = made(m, n, s, seed)
    root = [math.sqrt(x) for x in s]
    a = [[root[i] * vh[i][j] for j in range(n)] for i in range(r0)]
    b = [[u[i][j] * root[j] for j in range(r0)] for i in range(m)]
    layer: Json = {"name": name, "type": "LowRankFactors",
                   "first": {"type": "Linear", "weight": {"shape": [r0, n], "dtype": "float32",
                                                          "values": encode(flat(a), "float32")}, "bias": None},
                   "second": {"type": "Linear", "weight": {"shape": [m, r0], "dtype": "float32",
                                                           "values": encode(flat(b), "float32")},
                              "bias": None if bias is None else encode(bias, "float32")},
                   "svd": given_svd(u, sf, vh)}
    return layer


# Q3: a rational orthogonal matrix whose columns have ties in |entry| (KMR.lowrank.sign: first index)
Q3 = [[2 / 3, 2 / 3, 1 / 3], [-2 / 3, 1 / 3, 2 / 3], [1 / 3, -2 / 3, 2 / 3]]
P3 = [[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]  # a signed permutation (V^T)


def negate_pairs(f: tuple[Mat, list[float], Mat], which: list[int]) -> tuple[Mat, list[float], Mat]:
    u, s, vh = f
    u2 = [[-x if j in which else x for j, x in enumerate(row)] for row in u]
    vh2 = [[-x for x in row] if i in which else list(row) for i, row in enumerate(vh)]
    return u2, s, vh2


SPLIT = ["KMR.lowrank.split", "KMR.lowrank.sign", "KMR.lowrank.scope", "KMR.lowrank.applicable",
         "KMR.meter.params", "KMR.rule.deterministic", "KMR.rule.no-mutation"]


def vec(vid: str, primary: str, clauses: list[str], description: str, layers: list[Json], knob: str, value: Json,
        rule_layers: list[str] | None = None, features: list[str] | None = None, include: Json = None,
        exclude: Json = None) -> Json:
    inp: Json = {"layers": layers, "knob": knob, "value": value}
    if rule_layers is not None:
        inp["rule_layers"] = rule_layers
    if include is not None:
        inp["include"] = include
    if exclude is not None:
        inp["exclude"] = exclude
    if include is not None or exclude is not None:
        features = [*(features or []), "select"]
    exp = run_oracle(copy.deepcopy(inp))
    extra = ["KMR.error.names-clause", "KMR.rule.no-mutation"] if "error" in exp else SPLIT
    feats = set(features or ())
    if "error" in exp:
        feats.add("input-checks")
    if any(x["type"] == "Conv1d" for x in layers):
        feats.add("conv")
    if any(x["type"] == "LowRankFactors" for x in layers):
        feats.add("refactor")
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *extra, *clauses}), "features": sorted(feats),
            "description": description, "input": inp, "expected": exp, "tolerance": None}


def factor_vectors() -> list[Json]:
    v: list[Json] = []
    f43 = made(4, 3, [3.0, 1.5, 0.5], 1)
    b4 = [0.5, -0.25, 0.125, 1.0]
    v.append(vec("lowrank-rank1-linear", "KMR.lowrank.split", [],
                 "A 4 x 3 Linear at rank 1 (1 * 7 < 12): first = sqrt(s_1) v_1^T (1 x 3), second = u_1 sqrt(s_1) "
                 "(4 x 1) with the bias; each entry one binary64 product cast once to binary32.",
                 [lin("0", f43, b4)], "rank", 1))
    v.append(vec("lowrank-rank2-linear", "KMR.lowrank.split", [],
                 "The same layer at rank 2 is not applicable (2 * 7 >= 12); a 6 x 5 layer at rank 2 (22 < 30) is "
                 "split into 2 x 5 and 6 x 2.", [lin("0", made(6, 5, [4.0, 2.0, 1.0, 0.5, 0.25], 3))], "rank", 2))
    w43 = compose(*f43)
    conv = signed(given_svd(*f43), 4, 3)
    flipped = lin("0", f43, b4, w=w43, svd=given_svd(*negate_pairs(conv, [0, 1, 2])))
    v.append(vec("lowrank-sign-flipped-backend", "KMR.lowrank.sign", [],
                 "The 4 x 3 layer at rank 1, but the backend returned every (u_i, v_i) with the largest |entry| of "
                 "u_i negative (an equally valid SVD): the sign convention negates each pair and gives the same "
                 "factors as lowrank-rank1-linear, bit for bit.", [flipped], "rank", 1))
    w3 = compose(Q3, [4.0, 2.0, 1.0], P3)
    tie = negate_pairs((Q3, [4.0, 2.0, 1.0], P3), [0])
    v.append(vec("lowrank-sign-tie-first-index", "KMR.lowrank.sign", [],
                 "u_1 = (-2/3, 2/3, -1/3) as the backend gave it: |u| ties at indices 0 and 1; the first (index 0) "
                 "is negative, so (u_1, v_1) is negated. Reading the last index of the tie would keep it.",
                 [lin("0", None, None, w=w3, svd=given_svd(*tie))], "rank", 1))
    f44 = made(4, 4, [4.0, 3.0, 1.0, 0.5], 5)
    v.append(vec("lowrank-not-applicable", "KMR.lowrank.applicable", ["KMR.lowrank.sharing"],
                 "A 4 x 4 Linear at rank 2: 2 * (4 + 4) = 16 is not < 16, so the layer is left unchanged (not an "
                 "error); its bits are the input's.", [lin("0", f44)], "rank", 2))
    v.append(vec("lowrank-applicable-rank1", "KMR.lowrank.applicable", [],
                 "The same 4 x 4 Linear at rank 1: 8 < 16, factorized.", [lin("0", f44)], "rank", 1))
    two = [lin("0", made(6, 5, [5.0, 3.0, 2.0, 1.0, 0.5], 7), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
           lin("2", made(2, 6, [2.0, 1.0], 9), [0.0, 1.0])]
    v.append(vec("lowrank-global-rank-skips-small-layer", "KMR.lowrank.rank-range", ["KMR.lowrank.sharing"],
                 "The global knob rank = 2 on a 6 x 5 layer (factorized: 22 < 30) and a 2 x 6 output layer, where "
                 "2 >= min(2, 6): that layer is left unchanged, not refused.", two, "rank", 2))
    v.append(vec("lowrank-per-layer-knob", "KMR.lowrank.per-layer-knob", ["KMR.lowrank.sharing"],
                 "rank@2 = 1 factorizes layer 2 alone (8 < 12); layer 0 keeps its weight.", two, "rank@2", 1))
    v.append(vec("lowrank-error-rank-at-layer-too-large", "KMR.lowrank.rank-range", [],
                 "rank@2 = 2 names one layer with 2 >= min(2, 6): RuleInputError.", two, "rank@2", 2))
    v.append(vec("lowrank-error-rank-zero", "KMR.lowrank.rank-range", ["KMR.knob.domain"],
                 "rank = 0 is outside 1..2^20: KnobDomainError naming KMR.lowrank.rank-range.", two, "rank", 0))
    v.append(vec("lowrank-error-rank-fraction", "KMR.lowrank.rank-range", ["KMR.knob.domain"],
                 "rank = \"3/2\" is not an integer: KnobDomainError naming KMR.lowrank.rank-range.", two, "rank",
                 "3/2"))
    v.append(vec("lowrank-error-unknown-layer-knob", "KMR.knob.unknown", ["KMR.lowrank.per-layer-knob"],
                 "rank@1 names the ReLU, not a layer of the rule: KnobDomainError (unknown knob).", two, "rank@1", 1))
    v.append(vec("lowrank-error-scope-not-a-layer", "KMR.lowrank.scope", [],
                 "The rule is configured with the layer names [\"9\"], which the model does not have: "
                 "RuleInputError.", two, "rank", 1, rule_layers=["9"]))
    v.append(vec("lowrank-configured-layers", "KMR.lowrank.scope", ["KMR.lowrank.sharing"],
                 "The rule is configured with [\"0\"]: the global knob rank = 1 factorizes layer 0 only.",
                 two, "rank", 1, rule_layers=["0"]))
    v.append(vec("lowrank-select-include", "KMR.select.include", [],
                 "include = [\"2.*\"]: only layer 2's parameters are selected, so rank = 1 factorizes layer 2 alone.",
                 two, "rank", 1, include=["2.*"]))
    v.append(vec("lowrank-select-exclude", "KMR.select.exclude", [],
                 "exclude = [\"0.bias\"]: a layer is in scope only when none of its parameters is excluded, so "
                 "layer 0 keeps its weight and layer 2 is factorized.", two, "rank", 1, exclude=["0.bias"]))
    v.append(vec("lowrank-select-exclude-wins", "KMR.select.exclude", ["KMR.select.include"],
                 "include = [\"*\"], exclude = [\"2.weight\"]: exclude wins over include; layer 0 alone.",
                 two, "rank", 1, include=["*"], exclude=["2.weight"]))
    v.append(vec("lowrank-error-select-no-match", "KMR.select.no-match", [],
                 "include = [\"9.*\"] matches no parameter of a layer in scope: RuleInputError.",
                 two, "rank", 1, include=["9.*"]))
    v.append(vec("lowrank-error-select-exclude-no-match", "KMR.select.no-match", ["KMR.select.exclude"],
                 "exclude = [\"*.gamma\"] matches nothing either: RuleInputError (a typo never selects silently).",
                 two, "rank", 1, exclude=["*.gamma"]))
    v.append(vec("lowrank-error-select-bare-string", "KMR.select.include", [],
                 "include = \"2.*\" (a string, not a list of patterns): RuleInputError.", two, "rank", 1,
                 include="2.*"))
    # energy on a 6 x 6 layer with s = 4, 2, 1, 1/2, 1/4, 1/8 (e = 16, 4, 1, 1/4, 1/16, 1/64; P = 1365/64)
    s6 = [4.0, 2.0, 1.0, 0.5, 0.25, 0.125]
    e6 = lin("0", made(6, 6, s6, 11))
    v.append(vec("lowrank-energy-boundary-exact", "KMR.lowrank.energy", [],
                 "s = 4, 2, 1, 1/2, 1/4, 1/8: P_1 = 16 is exactly 1024/1365 of P_6 = 1365/64, so energy 1024/1365 "
                 "gives r = 1 (>= compared as exact rationals).", [e6], "energy", "1024/1365"))
    v.append(vec("lowrank-energy-just-above", "KMR.lowrank.energy", [],
                 "energy 1025/1365 needs r = 2 (P_2 = 20): 2 * 12 < 36, factorized at rank 2.", [e6], "energy",
                 "1025/1365"))
    v.append(vec("lowrank-energy-binary64-spelling", "KMR.exact.binary64", ["KMR.lowrank.energy"],
                 "energy as the JSON number 0.75 denotes 3/4 (P_1 = 16 >= 3/4 * 1365/64 = 15.99...): r = 1.",
                 [e6], "energy", 0.75))
    v.append(vec("lowrank-energy-one-not-applicable", "KMR.lowrank.energy", ["KMR.lowrank.applicable"],
                 "energy 1 needs every singular value (r = 6): not applicable, the layer is unchanged.", [e6],
                 "energy", 1))
    z = ([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]], [0.0, 0.0], [[0.0, 1.0], [-1.0, 0.0]])
    v.append(vec("lowrank-energy-all-zero", "KMR.lowrank.energy", [],
                 "An all-zero 4 x 2 W (the backend's s = 0, 0): energy 1/2 gives r = 1 (1 * 6 < 8); the factors are "
                 "+-0.0, with the signs of the given u and v times +0.0.",
                 [lin("0", z, w=[[0.0, 0.0]] * 4)], "energy", "1/2"))
    v.append(vec("lowrank-error-energy-zero", "KMR.knob.domain-real", ["KMR.lowrank.energy"],
                 "energy 0 is outside (0, 1]: KnobDomainError.", [e6], "energy", 0))
    v.append(vec("lowrank-conv1d", "KMR.lowrank.conv", [],
                 "Conv1d(2, 4, kernel 3, stride 2, padding 1, dilation 1): m = 4, n = 2 * 3 = 6 (row-major "
                 "reshape); rank 1 (10 < 24) gives Conv1d(2, 1, 3, same geometry, no bias) then Conv1d(1, 4, 1) "
                 "with the bias.", [conv1d("0", 4, 2, 3, [3.0, 2.0, 1.0, 0.5], 13, [0.5, 0.0, -0.5, 1.0], 2, 1, 1)],
                 "rank", 1))
    lrf = factors("0", 5, 5, [3.0, 1.0], 15, [0.25, 0.5, 0.75, 1.0, -1.0])
    v.append(vec("lowrank-refactor-lower", "KMR.lowrank.refactor", [],
                 "A LowRankFactors of current rank 2 (5 x 5) at rank 1: its binary64 product B A is factorized again "
                 "(the factors given are those of B A); the bias stays on the second layer.", [lrf], "rank", 1))
    v.append(vec("lowrank-refactor-never-raises", "KMR.lowrank.refactor", ["KMR.lowrank.sharing"],
                 "The same LowRankFactors at rank 2 (its current rank): left unchanged.", [lrf], "rank", 2))
    v.append(vec("lowrank-empty-layer-skipped", "KMR.lowrank.empty", ["KMR.select.zero-size", "KMR.lowrank.sharing"],
                 "A Linear(0, 3) (zero-size weight) is not in scope: left unchanged; the 4 x 3 layer after it is "
                 "factorized at rank 1.", [lin("0", None, w=[[], [], []]), lin("2", f43)], "rank", 1))
    nan = [list(r) for r in w43]
    nan[1][2] = float("nan")
    v.append(vec("lowrank-error-nan-weight", "KMR.lowrank.nonfinite", ["KMR.rule.domain-error"],
                 "A NaN in the weight of a layer in scope: RuleInputError, nothing is factorized.",
                 [lin("0", None, w=nan)], "rank", 1))
    v.append(vec("lowrank-error-inf-bias", "KMR.lowrank.nonfinite", ["KMR.rule.domain-error"],
                 "+inf in the bias of a layer in scope: RuleInputError.",
                 [lin("0", f43, [0.0, float("inf"), 0.0, 0.0])], "rank", 1))
    eye = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    v.append(vec("lowrank-error-energy-overflow", "KMR.lowrank.nonfinite", ["KMR.lowrank.energy"],
                 "A binary64 layer with singular values 1e200: s_i^2 overflows binary64, so the energy knob raises "
                 "RuleInputError.", [lin("0", (eye, [1e200] * 3, eye), None, dtype="float64")], "energy", "1/2",
                 features=["float64"]))
    v.append(vec("lowrank-error-int-weight", "KMR.lowrank.dtype", [],
                 "An int32 weight in scope: RuleInputError.",
                 [lin("0", None, None, dtype="int32", w=[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 0, 1]])], "rank", 1,
                 features=["integer-dtype"]))
    return v


# --- lowrank-svd (tolerance) ----------------------------------------------------------------------

TOL = {"abs": 1e-5, "rel": 1e-5}


def svd_expected(inp: Json, given: list[Json]) -> Json:
    """As :func:`oracle`, with the factors the layers were made from, and the outputs on ``x``."""
    full = copy.deepcopy(inp)
    for x, g in zip(full["layers"], given, strict=True):
        x["svd"] = g
    out = run_oracle(full)
    if "error" in out or "x" not in inp:
        return out
    xs = decode(inp["x"])
    bsz, n0 = inp["x"]["shape"]
    y = [xs[i * n0:(i + 1) * n0] for i in range(bsz)]
    for li, lay in enumerate(out["layers"]):
        for part in ([lay["first"], lay["second"]] if lay["type"] == "LowRankFactors" else [lay]):
            o, k = part["weight"]["shape"]
            w = decode(part["weight"])
            bias = [f32(b) for b in part["bias"]] if part["bias"] is not None else [0.0] * o
            y = [[math.fsum([*(w[c * k + j] * row[j] for j in range(k)), bias[c]]) for c in range(o)] for row in y]
        if li + 1 < len(out["layers"]):
            y = [[max(t, 0.0) for t in row] for row in y]  # the ReLU between layers
    out["y"] = {"shape": [bsz, len(y[0])], "dtype": "float32", "values": [b32(t) for row in y for t in row]}
    return out


def pivot_margin(f: tuple[Mat, list[float], Mat], r: int) -> float:
    """How clearly the largest |entry| of each of u_1..u_r is the largest (the sign convention's pivot)."""
    u = f[0]
    m = len(u)
    worst = 1.0
    for c in range(r):
        col = sorted((abs(u[i][c]) for i in range(m)), reverse=True)
        worst = min(worst, col[0] - col[1])
    return worst


def svd_vec(vid: str, primary: str, clauses: list[str], description: str, layers: list[Json], knob: str,
            value: Json, x: Mat | None = None) -> Json:
    inp: Json = {"layers": [strip(lay) for lay in layers], "knob": knob, "value": value}
    if x is not None:
        inp["x"] = {"shape": [len(x), len(x[0])], "dtype": "float32", "values": encode(flat(x), "float32")}
    exp = svd_expected(inp, [lay["svd"] for lay in layers])
    base = ["KMR.lowrank.svd", "KMR.lowrank.sign", "KMR.lowrank.split", "KMR.lowrank.error-eckart-young",
            "KMR.meter.params", "KMR.rule.deterministic", "KMR.rule.no-mutation"]
    if x is not None:
        base.append("KMR.lowrank.equivalence")
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *base, *clauses}), "features": ["own-svd"],
            "description": description, "input": inp, "expected": exp, "tolerance": TOL}


def clear(m: int, n: int, s: list[float], seed: int, r: int) -> tuple[Mat, list[float], Mat]:
    """:func:`made` with the first seed from ``seed`` on whose u_1..u_r have a clear largest entry, so
    that any backend's singular vectors pick the same pivot (KMR.lowrank.sign)."""
    while pivot_margin(f := made(m, n, s, seed), r) <= 0.05:
        seed += 1
    return f


def inputs(b: int, n: int, seed: int) -> Mat:
    g = lcg(seed)
    return [[next(g) / 4.0 for _ in range(n)] for _ in range(b)]


def svd_vectors() -> list[Json]:
    v: list[Json] = []
    f = clear(6, 5, [8.0, 4.0, 2.0, 1.0, 0.5], 21, 2)
    x = inputs(3, 5, 22)
    v.append(svd_vec("lowrank-svd-rank2", "KMR.lowrank.svd", [],
                     "A 6 x 5 Linear with singular values 8, 4, 2, 1, 1/2 at rank 2, with the implementation's own "
                     "SVD: factors and outputs on x within the tolerance (sign convention applied).",
                     [lin("0", f, [0.5, -0.5, 0.25, 0.0, 1.0, -1.0])], "rank", 2, x))
    v.append(svd_vec("lowrank-svd-energy", "KMR.lowrank.energy", [],
                     "energy 9/10 on the same layer: P_1 = 64 < 76.7 <= P_2 = 80 (of 85.25), r = 2, far from any "
                     "boundary.", [lin("0", f)], "energy", "9/10", x))
    x2 = inputs(2, 6, 23)
    v.append(svd_vec("lowrank-svd-chain", "KMR.lowrank.equivalence", [],
                     "Two layers (4 x 6 and 3 x 4, ReLU between) at the global rank 1: both factorized; the outputs "
                     "of the factorized chain on x within the tolerance.",
                     [lin("0", clear(4, 6, [3.0, 1.5, 0.75, 0.25], 25, 1), [0.1, -0.1, 0.2, -0.2]),
                      lin("2", clear(3, 4, [2.0, 1.0, 0.5], 27, 1), [0.0, 0.5, -0.5])], "rank", 1, x2))
    return v


def document(kind: str) -> Json:
    if kind == "lowrank-factors":
        desc = ("Low-rank factorization (spec/methods/lowrank.md) with the SVD backend's factors given in the "
                "vector (binary64 bit patterns): everything after the SVD is compared bit for bit. See "
                "spec/vectors/README.md.")
        vs = factor_vectors()
    else:
        desc = ("Low-rank factorization with the implementation's own SVD: factors and outputs compared within "
                "the tolerance (no SVD is correctly rounded). See spec/vectors/README.md.")
        vs = svd_vectors()
    return {"kind": kind, "spec_version": SPEC_VERSION, "generator": "spec/vectors/generate_lowrank.py",
            "description": desc, "vectors": vs}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / SPEC_VERSION
    out.mkdir(parents=True, exist_ok=True)
    for name, kind in (("lowrank.json", "lowrank-factors"), ("lowrank_svd.json", "lowrank-svd")):
        data = json.dumps(document(kind), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        (out / name).write_bytes(data.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
