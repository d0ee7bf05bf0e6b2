"""Per-rule lemmas over the integers and the reals, each tied to a method clause.

Every lemma is a formula ``hypotheses => claim`` proved valid by Z3 for ALL values of its free
variables (bit-widths, sizes, scales, weights are symbolic). Every lemma is built by one function
with a ``mut`` argument; each named mutation must make Z3 find a counterexample (non-vacuity).

Rounding is modelled, not assumed: ``round_half_even(x, r)`` says r is an integer with
``|x - r| <= 1/2`` and, on a tie, r even; ``floor_def(x, k)`` says ``k <= x < k + 1``. Both are
checked to define a total function (a witness exists for every x, and it is unique), so a lemma
cannot hold vacuously because its rounding constraint is unsatisfiable.

Quantization lemmas are stated in *scale units* (u = w/scale, dq/scale), where they are
linear and Z3 decides them; a scaling lemma over the reals (proved with them, in the same
formula) lifts every comparison to w, dq and scale.

The power ``2^(b-1)`` of the quantization range is abstracted to an arbitrary integer ``P >= 1``
(``2^b`` to ``2P``): the lemmas hold for every such P, hence for every bit-width b >= 1.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import z3

from kmr_proofs.ts import Expr, check_valid

# ---------------------------------------------------------------- rounding, modelled


def round_half_even(x: Expr, r: Expr) -> Expr:
    """r = round-half-to-even(x): nearest integer, ties to the even one (Python ``round``,
    ``torch.round``, IEEE roundTiesToEven)."""
    d = x - z3.ToReal(r)
    return z3.And(d <= z3.RealVal("1/2"), d >= z3.RealVal("-1/2"),
                  z3.Implies(z3.Or(d == z3.RealVal("1/2"), d == z3.RealVal("-1/2")), r % 2 == 0))


def round_floor(x: Expr, r: Expr) -> Expr:
    """The *wrong rounding* mutant: truncation towards -inf."""
    return z3.And(z3.ToReal(r) <= x, x < z3.ToReal(r) + 1)


def floor_def(x: Expr, k: Expr) -> Expr:
    return z3.And(z3.ToReal(k) <= x, x < z3.ToReal(k) + 1)


Rounder = Callable[[Expr, Expr], Expr]


def rounding_is_function(rnd: Rounder, witness: Callable[[Expr], Expr]) -> list[tuple[str, str]]:
    """Existence (the witness satisfies the constraint for every x) and uniqueness."""
    x = z3.Real("x")
    r1, r2 = z3.Ints("r1 r2")
    ex, _ = check_valid(rnd(x, witness(x)))
    un, _ = check_valid(z3.Implies(z3.And(rnd(x, r1), rnd(x, r2)), r1 == r2))
    return [("exists", ex), ("unique", un)]


def _rhe_witness(x: Expr) -> Expr:
    f = z3.ToInt(x + z3.RealVal("1/2"))  # floor(x + 1/2)
    tie = z3.ToReal(f) == x + z3.RealVal("1/2")
    return z3.If(z3.And(tie, f % 2 == 1), f - 1, f)


def python_round_agrees(samples: int = 400, seed: int = 7) -> tuple[bool, str]:
    """The encoding of round-half-even accepts exactly Python's ``round`` on rationals
    (ties included): for each sample x, round(x) satisfies it and round(x) +- 1 do not."""
    rng = random.Random(seed)
    x, r = z3.Real("x"), z3.Int("r")
    s = z3.Solver()
    s.add(round_half_even(x, r))
    for k in range(samples):
        q = (Fraction(rng.randint(-40, 40), 2) if k % 2 == 0  # ties
             else Fraction(rng.randint(-10**6, 10**6), rng.randint(1, 997)))
        py = round(q)
        for cand, want in ((py, True), (py - 1, False), (py + 1, False)):
            s.push()
            s.add(x == z3.RealVal(f"{q.numerator}/{q.denominator}"), r == cand)
            got = s.check() == z3.sat
            s.pop()
            if got != want:
                return False, f"x={q}: python round={py}, candidate {cand} accepted={got}"
    return True, f"{samples} rationals ({samples // 2} ties)"


# ---------------------------------------------------------------- lemmas


@dataclass(frozen=True)
class Lemma:
    id: str
    clause: str
    anchor: str
    summary: str
    build: Callable[[str | None], tuple[Expr, dict[str, Expr]]]  # mut -> (claim, shown vars)
    mutants: dict[str, str] = field(default_factory=dict)


def _prune_count(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
    s, n, k = z3.Real("s"), z3.Int("n"), z3.Int("k")
    x = s * z3.ToReal(n)
    if mut == "round-nearest":
        rule = round_half_even(x, k)
    elif mut == "ceil":
        rule = z3.And(z3.ToReal(k) >= x, x > z3.ToReal(k) - 1)
    else:
        rule = floor_def(x, k)  # KMR.prune.count: k = floor(s * n)
    hyp = z3.And(s >= 0, s <= 1, n >= 0, rule)
    claim = z3.And(k >= 0, k <= n, z3.ToReal(k) <= x, x - z3.ToReal(k) < 1,
                   z3.Implies(s == 1, k == n), z3.Implies(x < 1, k == 0))
    return z3.Implies(hyp, claim), {"s": s, "n": n, "k": k}


def _prune_cost(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
    n, z, k = z3.Ints("n z k")
    # the k pruned entries come first in ascending |w|; zeros have |w| = 0, so they come first
    zeros_pruned = (z3.If(k - (n - z) > 0, k - (n - z), 0) if mut == "zeros-last"
                    else z3.If(k < z, k, z))
    nonzeros_after = (n - z) - (k - zeros_pruned)
    stated = n - k if mut == "ignore-zeros" else n - z3.If(z > k, z, k)  # KMR.prune.cost
    hyp = z3.And(n >= 0, z >= 0, z <= n, k >= 0, k <= n)
    return z3.Implies(hyp, z3.And(nonzeros_after == stated, stated >= 0)), {"n": n, "z": z, "k": k}


def _prune_monotone(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
    s1, s2 = z3.Reals("s1 s2")
    n, z, k1, k2 = z3.Ints("n z k1 k2")

    def count(s: Expr, k: Expr) -> Expr:
        frac = (1 - s) if mut == "inverted-knob" else s
        return floor_def(frac * z3.ToReal(n), k)

    def cost(k: Expr) -> Expr:
        return n - z3.If(z > k, z, k)

    hyp = z3.And(s1 >= 0, s1 <= s2, s2 <= 1, n >= 0, z >= 0, z <= n, count(s1, k1), count(s2, k2))
    claim = z3.And(cost(k2) <= cost(k1), z3.Implies(z3.And(z == 0, k2 > k1), cost(k2) < cost(k1)))
    return z3.Implies(hyp, claim), {"s1": s1, "s2": s2, "n": n, "z": z, "k1": k1, "k2": k2}


def code_range(P: Expr, asym: bool) -> tuple[Expr, Expr]:
    """(qmin, qmax) of ``KMR.quant.bits`` with P = 2^(b-1): symmetric -(P-1)..P-1, asymmetric
    0..2P-1 (= 2^b - 1)."""
    if asym:
        return z3.IntVal(0), 2 * P - 1
    return -(P - 1), P - 1


def _quant_setup(mut: str | None, asym: bool) -> tuple[dict[str, Expr], Expr, Expr, Expr, Expr]:
    """One quantizer in *scale units*: u = w / s, q = clamp(round_half_even(u) + zp, qmin, qmax),
    and the dequantized value dq / s = g = q - zp. Returns (vars, hypotheses, g, lo, hi) with
    lo = qmin - zp, hi = qmax - zp the clamp boundaries in scale units. Everything here is
    linear (integers and reals), so Z3 decides it; ``_scaling`` lifts the claims to w and s."""
    u = z3.Real("u")
    r, P, zp = z3.Ints("r P zp")
    rnd: Rounder = round_floor if mut == "floor-rounding" else round_half_even
    qmin, qmax = code_range(P, asym)
    zp_ok = z3.And(zp >= qmin, zp <= qmax) if asym else zp == 0
    # range-off-by-one: qmax = 2^(b-1) (symmetric) or 2^b (asymmetric) in the clamp
    clamp_hi = (2 * P if asym else P) if mut == "range-off-by-one" else qmax
    v = r + zp
    q = z3.If(v < qmin, qmin, z3.If(v > clamp_hi, clamp_hi, v))
    if mut == "no-clamp":
        q = v
    g = z3.ToReal(q) if mut == "dequant-ignores-zp" else z3.ToReal(q - zp)
    hyp = z3.And(P >= 1, zp_ok, rnd(u, r))
    lo, hi = z3.ToReal(qmin - zp), z3.ToReal(qmax - zp)
    vars_ = {"w/scale": u, "P=2^(b-1)": P, "zero_point": zp, "round(w/scale)": r, "dq/scale": g}
    return vars_, hyp, g, lo, hi


def _abs(e: Expr) -> Expr:
    return z3.If(e >= 0, e, -e)


def _quant_error(asym: bool) -> Callable[[str | None], tuple[Expr, dict[str, Expr]]]:
    def build(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
        vars_, hyp, g, lo, hi = _quant_setup(mut, asym)
        u, half, r = vars_["w/scale"], z3.RealVal("1/2"), z3.ToReal(vars_["round(w/scale)"])
        # the clause's form: qmin <= rne(w/s) + zp <= qmax, i.e. lo <= r <= hi in scale units
        unclamped = z3.And(lo <= r, r <= hi)
        inside = z3.And(u >= lo - half, u <= hi + half)  # stronger: the clamp range widened by s/2
        return z3.And(_scaling(), z3.Implies(hyp, z3.And(
            z3.Implies(unclamped, _abs(u - g) <= half),
            z3.Implies(inside, _abs(u - g) <= half)))), vars_
    return build


def _quant_clamp(asym: bool) -> Callable[[str | None], tuple[Expr, dict[str, Expr]]]:
    def build(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
        vars_, hyp, g, lo, hi = _quant_setup(mut, asym)
        u, r = vars_["w/scale"], z3.ToReal(vars_["round(w/scale)"])
        claim = z3.And(
            # the clause's form: rne(w/s) + zp > qmax (< qmin) => dq is the end value
            z3.Implies(r > hi, z3.And(g == hi, _abs(u - g) == _abs(u - hi))),
            z3.Implies(r < lo, z3.And(g == lo, _abs(u - g) == _abs(u - lo))),
            # in terms of w: beyond an end value the error is the distance to it
            z3.Implies(u > hi, z3.And(g == hi, _abs(u - g) == u - hi)),
            z3.Implies(u < lo, z3.And(g == lo, _abs(u - g) == lo - u)))
        return z3.And(_scaling(), z3.Implies(hyp, claim)), vars_
    return build


def _scaling() -> Expr:
    """The lift from scale units to weights, over the reals: for s > 0, w = u*s, dq = g*s and
    boundaries a*s: |w - dq| = s*|u - g|, and every comparison the lemmas make (w against a
    boundary, |w - dq| against s/2, dq against a boundary) is the same in both units."""
    s, u, g, a = z3.Reals("s_ u_ g_ a_")
    w, dq, A = u * s, g * s, a * s
    half = z3.RealVal("1/2")
    return z3.ForAll([s, u, g, a], z3.Implies(s > 0, z3.And(
        _abs(w - dq) == s * _abs(u - g),
        (w > A) == (u > a), (w < A) == (u < a), (dq == A) == (g == a),
        (w >= A - s * half) == (u >= a - half), (w <= A + s * half) == (u <= a + half),
        (_abs(w - dq) <= s * half) == (_abs(u - g) <= half),
        (_abs(w - dq) == w - A) == (_abs(u - g) == u - a),
        (_abs(w - dq) == A - w) == (_abs(u - g) == a - u))))


def _storage(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
    n, G, b1, b2 = z3.Ints("n G b1 b2")
    asym = z3.Bool("asymmetric")

    def bits(b: Expr) -> Expr:  # KMR.quant.storage-monotone: n*b + G*32 (+ G*b asymmetric)
        return n * b + G * 32 + z3.If(asym, G * b, 0)

    n_ok = n >= 0 if mut == "empty-tensor" else n >= 1
    hyp = z3.And(n_ok, G >= 0, b1 >= 1, b1 < b2)
    return z3.Implies(hyp, bits(b1) < bits(b2)), {"n": n, "G": G, "b1": b1, "b2": b2, "asymmetric": asym}


def _lowrank(mut: str | None) -> tuple[Expr, dict[str, Expr]]:
    m, n, r, r2 = z3.Ints("m n r r2")
    dense = m * n
    factored = r * z3.If(m > n, m, n) if mut == "one-factor" else r * m + r * n  # U: m x r, V: r x n

    def applicable(rr: Expr) -> Expr:  # KMR.lowrank.applicable
        return rr * (m + n) <= m * n if mut == "le-for-lt" else rr * (m + n) < m * n

    hyp = z3.And(m >= 1, n >= 1, r >= 1, r2 >= 1, r2 <= r)
    claim = z3.And(applicable(r) == (factored < dense),
                   z3.Implies(applicable(r), applicable(r2)),  # downward closed in r
                   z3.Implies(applicable(r), z3.And(r < m, r < n)))  # full rank never saves
    return z3.Implies(hyp, claim), {"m": m, "n": n, "r": r, "r2": r2}


LEMMAS: tuple[Lemma, ...] = (
    Lemma("prune-count", "KMR.prune.count", "prune-count",
          "k = floor(s*n): 0 <= k <= n, k <= s*n < k+1, k = n at s = 1, k = 0 when s*n < 1",
          _prune_count, {"round-nearest": "wrong rounding: k = round-half-even(s*n)",
                         "ceil": "wrong rounding: k = ceil(s*n)"}),
    Lemma("prune-cost", "KMR.prune.cost", "prune-cost",
          "zeros come first in the order, so n - max(z, k) nonzeros remain",
          _prune_cost, {"ignore-zeros": "cost stated as n - k", "zeros-last": "zeros ordered after nonzeros"}),
    Lemma("prune-monotone", "KMR.prune.monotone", "prune-monotone",
          "cost after pruning is non-increasing in s; strictly decreasing where floor(s*n) grows (z = 0)",
          _prune_monotone, {"inverted-knob": "k = floor((1 - s) * n)"}),
    Lemma("quant-error-bound-sym", "KMR.quant.error-bound", "quant-error",
          "symmetric: |w - dq| <= scale/2 inside the clamp range (widened by scale/2)",
          _quant_error(False), {"floor-rounding": "wrong rounding: floor(w/s)"}),
    Lemma("quant-error-bound-asym", "KMR.quant.error-bound", "quant-error",
          "asymmetric (zero point in [qmin, qmax]): |w - dq| <= scale/2 inside the clamp range",
          _quant_error(True), {"floor-rounding": "wrong rounding: floor(w/s)",
                               "dequant-ignores-zp": "dq = q * s (zero point forgotten)"}),
    Lemma("quant-clamp-error-sym", "KMR.quant.clamp-error", "quant-clamp",
          "symmetric: outside the range dq is the boundary value; error = distance to it",
          _quant_clamp(False), {"no-clamp": "q not clamped", "range-off-by-one": "qmax = 2^(b-1)"}),
    Lemma("quant-clamp-error-asym", "KMR.quant.clamp-error", "quant-clamp",
          "asymmetric: outside the range dq is the boundary value; error = distance to it",
          _quant_clamp(True), {"no-clamp": "q not clamped", "range-off-by-one": "qmax = 2^b"}),
    Lemma("quant-storage-monotone", "KMR.quant.storage-monotone", "quant-storage",
          "n*b + 32G (+ G*b asymmetric) is strictly increasing in b for n >= 1",
          _storage, {"empty-tensor": "n >= 0 allowed (an empty tensor)"}),
    Lemma("lowrank-applicable", "KMR.lowrank.applicable", "lowrank",
          "r(m+n) < mn iff the factorization lowers the parameter count; downward closed in r; "
          "never at full rank",
          _lowrank, {"le-for-lt": "applicable when r(m+n) <= mn", "one-factor": "factored = r*max(m,n)"}),
)


def show_model(m: z3.ModelRef, vars_: dict[str, Expr]) -> str:
    return ", ".join(f"{k}={m.eval(v, model_completion=True)}" for k, v in vars_.items())


def prove_lemma(lem: Lemma) -> tuple[str, str]:
    claim, vars_ = lem.build(None)
    r, m = check_valid(claim)
    if m is not None:
        return r, f"counterexample: {show_model(m, vars_)}"
    return r, (lem.summary if r == "proved" else "Z3 returned unknown (timeout)")


def refute_lemma(lem: Lemma, mut: str) -> tuple[bool, str]:
    claim, vars_ = lem.build(mut)
    r, m = check_valid(claim)
    if r == "failed" and m is not None:
        return True, show_model(m, vars_)
    return False, f"mutant not refuted ({r})"


def rounding_checks() -> tuple[str, str]:
    """The rounding encodings define total functions, and half-even agrees with Python."""
    checks = rounding_is_function(round_half_even, _rhe_witness)
    checks += [(f"floor-{n}", r) for n, r in
               rounding_is_function(floor_def, lambda x: z3.ToInt(x))]
    ok, info = python_round_agrees()
    bad = [f"{n}: {r}" for n, r in checks if r != "proved"]
    if not ok:
        bad.append(info)
    return ("proved" if not bad else "failed"), ("; ".join(bad) if bad else
                                                 f"half-even and floor are total and unique; {info}")
