"""Runner-level diagnoses of the low-rank kinds (numpy only, no torch: the subprocess runner uses
them too): they pin a failure to the clause it breaks whatever vector shows it."""

from __future__ import annotations

from typing import Any

import numpy as np

from kmr_ref.conformance.vectors import compare, decode_floats

Json = Any


def _columns(layer: Json, tol: Json) -> list[tuple[list[float], list[float]]] | None:
    """A factorized layer's rank-1 terms: (column j of second, row j of first) as floats."""
    if not isinstance(layer, dict) or layer.get("type") != "LowRankFactors":
        return None
    try:
        a = decode_floats(layer["first"]["weight"]["values"])
        b = decode_floats(layer["second"]["weight"]["values"])
        r = int(layer["first"]["weight"]["shape"][0])
        m = int(layer["second"]["weight"]["shape"][0])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if not r or len(a) % r or len(b) != m * r:
        return None
    n = len(a) // r
    return [([b[i * r + j] for i in range(m)], a[j * n:(j + 1) * n]) for j in range(r)]


def diagnose(inp: Json, expected: Json, got: Json, tol: Json) -> list[str]:
    """Runner-level checks that pin a failure to its clause whatever vector shows it: in an exact kind,
    a result equal to the expected one up to last-bit rounding (``KMR.lowrank.split``); a layer whose
    factors equal the expected ones with some (u_i, v_i) negated (``KMR.lowrank.sign``); a layer
    factorized that must stay unchanged because r (m + n) >= m n (``KMR.lowrank.applicable``) or
    because its current rank is not above r (``KMR.lowrank.refactor``)."""
    if not isinstance(got, dict) or not isinstance(got.get("layers"), list) or "layers" not in expected:
        return []
    # exact kinds: "negated" up to a relative 1e-6, so that a sign flip shows through last-bit rounding
    bound = (float(tol.get("abs", 0.0)), float(tol.get("rel", 0.0))) if tol else (0.0, 1e-6)

    def close(x: list[float], y: list[float]) -> bool:
        return len(x) == len(y) and all(abs(p - q) <= bound[0] + bound[1] * abs(q) for p, q in zip(x, y, strict=True))

    if tol is None and not compare(decode_floats(expected), decode_floats(got), {"abs": 0.0, "rel": 1e-6}):
        return ["KMR.lowrank.split: the result differs from the expected one in last bits only (or in the sign of "
                "a zero): sqrt(s) and the products are computed in binary64 and cast once to the layer's dtype"]
    out: list[str] = []
    for lin, e, g in zip(inp["layers"], expected["layers"], got["layers"], strict=False):
        ce, cg = _columns(e, tol), _columns(g, tol)
        if isinstance(e, dict) and lin.get("type") == "LowRankFactors" and g != e and e == {
                k: v for k, v in lin.items() if k != "svd"}:
            out.append(f"KMR.lowrank.refactor: layer {e.get('name')} (a LowRankFactors of current rank "
                       f"{lin['first']['weight']['shape'][0]}) must be left unchanged at this rank")
        elif ce is not None and cg is not None and len(ce) == len(cg):
            flips = [j for j, ((be, ae), (bg, ag)) in enumerate(zip(ce, cg, strict=True))
                     if be != bg and not close(bg, be) and close([-x for x in bg], be) and close([-x for x in ag], ae)]
            if flips:
                out.append(f"KMR.lowrank.sign: layer {e.get('name')}: the factors of singular pair(s) {flips} are "
                           "the expected ones negated (the entry of u_i of largest |value|, first index on ties, "
                           "must be positive)")
        elif isinstance(e, dict) and e.get("type") != "LowRankFactors" and cg is not None:
            w = lin.get("weight", {}).get("shape", [0, 0])
            m, n = int(w[0]), int(np.prod(w[1:])) if len(w) > 1 else 0
            r = len(cg)
            if r * (m + n) >= m * n:
                out.append(f"KMR.lowrank.applicable: layer {e.get('name')} was factorized at rank {r} although "
                           f"r (m + n) = {r * (m + n)} >= m n = {m * n}: it must be left unchanged")
    return out[:1]


