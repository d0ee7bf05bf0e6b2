"""Test fixtures: implementations written from the spec text alone (numpy, no kmr_ref rule), and
deliberately deviant variants of them, each deviating in ONE way the conformance kit must catch on a
named primary clause (``tests/test_conformance_deviants.py`` pins which).

Usable as adapters from the command line, e.g.
``python -m kmr_ref.conformance --adapter prune-magnitude=tests.conformance_deviants:FloatKPrune``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from kmr_ref.conformance.adapters import F32Array, PruneOutput, QuantOutput, RuleError, Scheme, Scope, tree_order

F32 = np.float32


class SpecPrune:
    """Magnitude pruning from ``spec/methods/pruning.md``: exact k, a stable sort of |w| over the
    tensors in tree order (``KMR.prune.tensor-order``), pruned entries +0.0."""

    checks_input = True

    def sparsity(self, x: Any) -> Fraction:
        if isinstance(x, bool) or not isinstance(x, int | float | Fraction):
            raise RuleError("KMR.knob.domain-real", f"bad sparsity {x!r}")
        if isinstance(x, float) and not math.isfinite(x):
            raise RuleError("KMR.knob.domain-real", f"bad sparsity {x!r}")
        s = Fraction(repr(x)) if isinstance(x, float) else Fraction(x)
        if not 0 <= s <= 1:
            raise RuleError("KMR.knob.domain-real", f"{s} is outside [0, 1]")
        return s

    def count(self, s: Fraction, n: int) -> int:
        return math.floor(s * n)  # KMR.prune.count, exact

    def order(self, tensors: Sequence[tuple[str, F32Array]], tree: Sequence[Mapping[str, Any]]) -> list[str]:
        return tree_order(tree)

    def zero(self, x: F32Array) -> F32Array:
        return np.zeros_like(x)

    def cost(self, arrays: Sequence[F32Array]) -> Any:
        return sum(int(np.count_nonzero(a)) for a in arrays)

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope, sparsity: Any,
              tree: Sequence[Mapping[str, Any]]) -> PruneOutput:
        names = self.order(tensors, tree)
        given = dict(tensors)
        if knob == "sparsity":
            groups = [list(range(len(names)))] if scope == "global" else [[i] for i in range(len(names))]
        elif knob.startswith("sparsity@") and knob[9:] in names:
            groups = [[names.index(knob[9:])]]
        else:
            raise RuleError("KMR.knob.unknown", knob)
        s = self.sparsity(sparsity)
        arrays = [given[n].copy() for n in names]
        for g in groups:
            for i in g:  # KMR.prune.empty: a zero-size tensor is out of scope
                if not np.isfinite(arrays[i]).all():
                    raise RuleError("KMR.prune.nonfinite", names[i])
        for g in groups:
            flat = np.concatenate([arrays[i].reshape(-1) for i in g]) if g else np.zeros(0, F32)
            k = self.count(s, flat.size)
            idx = np.argsort(np.abs(flat.astype(np.float64)), kind="stable")[:k]
            flat[idx] = self.zero(flat[idx])
            off = 0
            for i in g:
                arrays[i] = flat[off:off + arrays[i].size].reshape(arrays[i].shape)
                off += arrays[i].size
        out = dict(zip(names, arrays, strict=True))
        return PruneOutput([out[n] for n, _ in tensors], self.cost(arrays))


class SpecQuant:
    """Algorithm Q of ``spec/methods/quantization.md`` in numpy binary32, one group per row."""

    checks_input = True

    def scale(self, lo: F32, hi: F32, qmax: int, sym: bool) -> F32:
        return F32(max(-lo, hi) / F32(qmax)) if sym else F32(F32(hi - lo) / F32(qmax))  # KMR.quant.scale

    def floor(self, s: F32) -> F32:
        return max(s, F32(2.0**-23))  # KMR.quant.scale-floor

    def rne(self, x: F32) -> int:
        return int(np.rint(x))

    def code(self, w: F32, s: F32, inv: F32) -> int:
        return self.rne(F32(w * inv))  # KMR.quant.rounding: the product with fp32(1/s)

    def zero_point(self, lo: F32, s: F32, inv: F32, qmin: int, qmax: int) -> int:
        return min(max(qmin - self.rne(F32(lo * inv)), qmin), qmax)

    def quantize(self, w: F32Array, bits: Any, scheme: Scheme) -> QuantOutput:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise RuleError("KMR.quant.bits", f"bits {bits!r}")
        if w.size == 0:
            raise RuleError("KMR.quant.empty", "no entries")
        if not np.isfinite(w).all():
            raise RuleError("KMR.quant.nonfinite", "NaN or inf")
        if (np.abs(w.astype(np.float64)) > 2.0**126).any():
            raise RuleError("KMR.quant.magnitude", "|w| > 2^126")
        sym = scheme == "symmetric"
        qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
        codes, scales, zps, dqs = [], [], [], []
        for row in w:
            lo, hi = min(F32(row.min()), F32(0.0)), max(F32(row.max()), F32(0.0))
            s = self.floor(self.scale(lo, hi, qmax, sym))
            inv = F32(F32(1.0) / s)
            zp = 0 if sym else self.zero_point(lo, s, inv, qmin, qmax)
            q = [min(max(self.code(x, s, inv) + zp, qmin), qmax) for x in row]
            codes.append(q)
            scales.append(s)
            zps.append(zp)
            dqs.append([F32(F32(c - zp) * s) for c in q])
        return QuantOutput(np.array(codes, dtype=np.int64), np.array(scales, dtype=F32),
                           np.array(zps, dtype=np.int64), np.array(dqs, dtype=F32).reshape(w.shape))


# --- the deviants: each differs from the spec in one way -----------------------------------------

class FloatKPrune(SpecPrune):
    """k = floor(float(s) * n): wrong at s = 29/100, n = 100 (binary64 0.29 * 100 = 28.999...)."""

    def count(self, s: Fraction, n: int) -> int:
        return math.floor(float(s) * n)


class NameOrderPrune(SpecPrune):
    """Ranks tensors in the order they are listed (here: by name), not the module tree's."""

    def order(self, tensors: Sequence[tuple[str, F32Array]], tree: Sequence[Mapping[str, Any]]) -> list[str]:
        return [n for n, _ in tensors]


class SignedZeroPrune(SpecPrune):
    """Prunes by ``w * 0``: a pruned negative entry becomes -0.0, against ``KMR.prune.zero-value``."""

    def zero(self, x: F32Array) -> F32Array:
        out: F32Array = x * F32(0.0)
        return out


class FloatCostPrune(SpecPrune):
    """Returns the cost as a float (5.0): ``KMR.meter.cost-exact`` forbids it."""

    def cost(self, arrays: Sequence[F32Array]) -> Any:
        return float(super().cost(arrays))


class NumpyIntCostPrune(SpecPrune):
    """Returns the cost as ``numpy.int64``: an exact integer, accepted (as the reference's meters do)."""

    def cost(self, arrays: Sequence[F32Array]) -> Any:
        return np.int64(super().cost(arrays))


class OneRoundingQuant(SpecQuant):
    """Asymmetric scale as ONE rounding of (hi - lo) / qmax (binary64), not two binary32 roundings."""

    def scale(self, lo: F32, hi: F32, qmax: int, sym: bool) -> F32:
        if sym:
            return super().scale(lo, hi, qmax, sym)
        return F32((np.float64(hi) - np.float64(lo)) / np.float64(qmax))


class QuotientQuant(SpecQuant):
    """Codes from rne(w / s) instead of rne(w * fp32(1/s))."""

    def code(self, w: F32, s: F32, inv: F32) -> int:
        return self.rne(F32(w / s))


class HalfAwayQuant(SpecQuant):
    """Rounds half away from zero (C ``round``) instead of half to even."""

    def rne(self, x: F32) -> int:
        return int(math.copysign(math.floor(abs(float(x)) + 0.5), float(x)))


class NoFloorQuant(SpecQuant):
    """No scale floor: an all-zero group gets s = 0 (then inf / NaN codes are avoided by s = 1)."""

    def floor(self, s: F32) -> F32:
        return s if s > 0 else F32(1.0)

    def quantize(self, w: F32Array, bits: Any, scheme: Scheme) -> QuantOutput:
        with np.errstate(over="ignore", invalid="ignore"):  # 1 / subnormal s overflows: part of the bug
            return super().quantize(w, bits, scheme)


# vector kind -> {adapter class: the one clause the kit must blame}
DEVIANTS: dict[str, dict[type, str]] = {
    "prune-magnitude": {FloatKPrune: "KMR.prune.count", NameOrderPrune: "KMR.prune.tensor-order",
                        SignedZeroPrune: "KMR.prune.zero-value", FloatCostPrune: "KMR.meter.cost-exact"},
    "quant-uniform": {OneRoundingQuant: "KMR.quant.scale", QuotientQuant: "KMR.quant.rounding",
                      HalfAwayQuant: "KMR.quant.rounding", NoFloorQuant: "KMR.quant.scale-floor"},
}


# --- structured pruning: adapters are functions input -> output -----------------------------------

def _structured_oracle() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "generate_structured.py"
    spec = importlib.util.spec_from_file_location("_structured_deviant", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def spec_structured(inp: Mapping[str, Any]) -> dict[str, Any]:
    """Structured pruning written from the spec: the generator's own oracle, as an adapter."""
    out: dict[str, Any] = _structured_oracle().run_oracle(inp)
    return out


def l2_only_structured(inp: Mapping[str, Any]) -> dict[str, Any]:
    """Always scores by the L2 norm, whatever p the rule is configured with (KMR.structured.score)."""
    mod = _structured_oracle()
    mod.score = lambda row, p: math.fsum(abs(w) * abs(w) for w in row)
    out: dict[str, Any] = mod.run_oracle(inp)
    return out
