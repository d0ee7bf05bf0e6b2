#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/pruning.json``: language-neutral vectors for magnitude pruning.

The expected values are computed by :func:`oracle`, a small interpreter written from the text of
``spec/methods/pruning.md`` in plain Python (``struct`` for IEEE binary32 bit patterns, ``Fraction``
for k = floor(s * n)). The oracle imports nothing from ``kmr_ref`` (the code under test).

After the document is built, :func:`cross_check` (skipped with ``--no-cross-check``) loads the
reference ``kmr_ref.methods.pruning`` and asserts that it agrees with every non-error vector; on a
disagreement the generator stops and writes nothing. The cross-check never feeds a value into the
file: ``tests/test_method_vectors.py`` regenerates with ``--no-cross-check`` while ``kmr_ref`` and
``torch`` are unimportable and compares bytes.

Usage: ``python spec/vectors/generate_pruning.py [OUT_DIR] [--no-cross-check]``
(default OUT_DIR: ``spec/vectors/0.1.0``). Output is canonical JSON (``sort_keys=True, indent=1``,
UTF-8, one trailing newline), deterministic.

The vector format (``kind: prune-magnitude``, see ``spec/vectors/README.md``):
- ``input.tensors``: ``[{"name", "shape", "dtype": "float32", "values": ["3f800000", ...]}]`` — the
  model's prunable tensors in tensor order (``KMR.prune.tensor-order``), values as 8-hex-digit
  binary32 bit patterns in row-major order;
- ``input.knob``: ``"sparsity"`` or ``"sparsity@<name>"``; ``input.scope``: ``"global"`` or
  ``"per-tensor"`` (the rule's setting; it only matters for ``sparsity``); ``input.sparsity``: the
  value as the caller spells it (a ``"p/q"`` string, or a JSON number: ``KMR.exact.binary64``);
- ``expected``: ``{"tensors": [{"name", "values"}], "cost"}`` (every input tensor, pruned or not;
  the cost meter ``KMR.prune.cost-meter`` over all of them), or ``{"error": "<clause ID>"}``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import struct
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

SPEC_VERSION = "0.1.0"
RATIONAL = re.compile(r"^-?(0|[1-9][0-9]*)(/[1-9][0-9]*)?$")
Json = Any


class VectorError(Exception):
    """The rule must raise; ``clause`` is the clause ID the error names."""

    def __init__(self, clause: str) -> None:
        super().__init__(clause)
        self.clause = clause


# --- binary32 bit patterns -----------------------------------------------------------------------

def f32(bits: str) -> float:
    """The exact value of a binary32 bit pattern (a Python float holds every binary32 exactly)."""
    return float(struct.unpack(">f", bytes.fromhex(bits))[0])


def bits_of(x: float | str) -> str:
    """8 hex digits; a float must be exactly representable in binary32 (checked), a string passes."""
    if isinstance(x, str):
        assert re.fullmatch(r"[0-9a-f]{8}", x), x
        return x
    b = struct.pack(">f", x).hex()
    assert f32(b) == x or (math.isnan(x) and math.isnan(f32(b))), f"{x!r} is not a binary32 value"
    if x == 0.0:  # keep the sign of zero
        b = "80000000" if math.copysign(1.0, x) < 0 else "00000000"
    return b


# --- the oracle (spec/methods/pruning.md, clause by clause) --------------------------------------

def exact_sparsity(x: Json) -> Fraction:
    """KMR.prune.knob / KMR.exact.binary64 / KMR.knob.domain-real: an exact s in [0, 1]."""
    if isinstance(x, bool):
        raise VectorError("KMR.knob.domain-real")
    if isinstance(x, int):
        s = Fraction(x)
    elif isinstance(x, float):
        if not math.isfinite(x):
            raise VectorError("KMR.knob.domain-real")
        s = Fraction(repr(x))  # the shortest round-trip decimal
    elif isinstance(x, str) and RATIONAL.match(x):
        s = Fraction(x)
    else:
        raise VectorError("KMR.knob.domain-real")
    if not 0 <= s <= 1:
        raise VectorError("KMR.knob.domain-real")
    return s


def tree_order(tree: Json, prefix: str = "") -> list[str]:
    """KMR.prune.tensor-order: ``named_modules()`` is depth-first in registration order; each
    leaf module (Linear, Conv*) holds one prunable ``<path>.weight``."""
    out: list[str] = []
    for node in tree:
        path = prefix + node["name"]
        if "children" in node:
            out += tree_order(node["children"], path + ".")
        else:
            out.append(path + ".weight")
    return out


def oracle(inp: Json) -> Json:
    tensors = inp["tensors"]
    names = [t["name"] for t in tensors]
    # the tie-break's tensor index: the position in tensor order (from the module tree when the
    # vector gives one; the tensors are then listed in another order on purpose)
    order = tree_order(inp["tree"]) if "tree" in inp else names
    assert sorted(order) == sorted(names), (order, names)
    tindex = [order.index(nm) for nm in names]
    knob = inp["knob"]
    # KMR.prune.per-tensor-knob: sparsity@<name> exists for each prunable tensor; KMR.knob.unknown
    if knob == "sparsity":
        scope = [list(range(len(tensors)))] if inp["scope"] == "global" else [[i] for i in range(len(tensors))]
    elif knob.startswith("sparsity@") and knob[len("sparsity@"):] in names:
        scope = [[names.index(knob[len("sparsity@"):])]]
    else:
        raise VectorError("KMR.knob.unknown")
    s = exact_sparsity(inp["sparsity"])  # KMR.knob.domain (checked before the model is looked at)
    vals = [[f32(b) for b in t["values"]] for t in tensors]
    for group in scope:
        for i in group:  # KMR.prune.empty: a zero-size tensor is out of scope (nothing to check or count)
            if any(not math.isfinite(x) for x in vals[i]):
                raise VectorError("KMR.prune.nonfinite")
    out = [list(t["values"]) for t in tensors]
    for group in scope:
        n = sum(len(vals[i]) for i in group)
        k = math.floor(s * n)  # KMR.prune.count, exact
        # KMR.prune.tie-break: (|w|, tensor index, flat index)
        key = sorted((abs(vals[i][j]), tindex[i], j, i) for i in group for j in range(len(vals[i])))
        for _, _, j, i in key[:k]:
            out[i][j] = "00000000"  # KMR.prune.zero-value: +0.0
    cost = sum(1 for t in out for b in t if f32(b) != 0.0)  # KMR.prune.cost-meter: -0.0 is zero
    return {"tensors": [{"name": nm, "values": v} for nm, v in zip(names, out, strict=True)], "cost": cost}


def run_oracle(inp: Json) -> Json:
    try:
        return oracle(inp)
    except VectorError as e:
        return {"error": e.clause}


# --- the vectors ---------------------------------------------------------------------------------

def tensor(name: str, shape: list[int], values: list[float | str]) -> Json:
    n = 1
    for d in shape:
        n *= d
    assert len(values) == n, (name, shape, len(values))
    return {"name": name, "shape": shape, "dtype": "float32", "values": [bits_of(v) for v in values]}


BASE = ["KMR.prune.knob", "KMR.prune.count", "KMR.prune.tie-break", "KMR.prune.zero-value",
        "KMR.prune.cost-meter", "KMR.prune.cost", "KMR.rule.deterministic", "KMR.rule.no-mutation"]
GLOBAL = [*BASE, "KMR.prune.global", "KMR.prune.tensor-order"]
NAN, INF = "7fc00000", "7f800000"
TWO = [1.0, -2.0, 0.25, 3.0, -0.5, 8.0]  # 2 x 3
FOUR = [0.75, -4.0, 0.125, 6.0]  # 2 x 2


def features_of(inp: Json, exp: Json) -> list[str]:
    """test262-style tags: an implementation that lacks one declares it and gets not-supported."""
    f = set()
    if "error" in exp:
        f.add("input-checks")
    if isinstance(inp["sparsity"], float):
        f.add("binary64-spelling")
    if inp["knob"] != "sparsity":
        f.add("per-tensor-knob")
    elif inp["scope"] == "per-tensor":
        f.add("per-tensor-scope")
    if "tree" in inp:
        f.add("module-tree")
    if any(int(b, 16) & 0x7F800000 == 0 and int(b, 16) & 0x007FFFFF for t in inp["tensors"] for b in t["values"]):
        f.add("subnormals")
    return sorted(f)


def vec(vid: str, primary: str, clauses: list[str], description: str, tensors: list[Json], sparsity: Json,
        knob: str = "sparsity", scope: str = "global", tree: Json = None) -> Json:
    """One vector; ``primary`` is the clause it is built to test (the report blames only it)."""
    inp: Json = {"tensors": tensors, "knob": knob, "scope": scope, "sparsity": sparsity}
    if tree is not None:
        inp["tree"] = tree
    exp = run_oracle(inp)
    if "error" in exp:
        clauses = [*clauses, "KMR.error.names-clause", "KMR.rule.no-mutation"]
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *clauses}), "features": features_of(inp, exp),
            "description": description, "input": inp, "expected": exp, "tolerance": None}


def lcg_values(seed: int, n: int, distinct: bool = True) -> list[float]:
    """Deterministic binary32 values (a 32-bit LCG): k/64 for integers k in [-512, 512), distinct
    magnitudes when ``distinct`` (so only the count decides), else with many ties."""
    x, out, seen = seed, [], set()
    while len(out) < n:
        x = (1664525 * x + 1013904223) % 2**32
        k = (x >> 8) % 1024 - 512
        if k == 0 or (distinct and abs(k) in seen):
            continue
        seen.add(abs(k))
        out.append(k / 64)
    return out


def vectors() -> list[Json]:
    v: list[Json] = []
    ten = [0.5, -1.5, 2.5, -3.5, 4.5, -5.5, 6.5, -7.5, 8.5, -9.5]
    # --- counting --------------------------------------------------------------------------------
    v.append(vec("prune-global-two-tensors", "KMR.prune.global", GLOBAL,
                 "Two Linear weights ranked together: s = 1/2 of n = 10 prunes the 5 smallest |w| "
                 "across both (0.125, 0.25, -0.5, 0.75, 1.0).",
                 [tensor("fc1.weight", [2, 3], TWO), tensor("fc2.weight", [2, 2], FOUR)], "1/2"))
    v.append(vec("prune-count-7-of-10", "KMR.prune.count", GLOBAL,
                 "k = floor(7/10 * 10) = 7 exactly (a binary64 7/10 times 10 is 6.999...).",
                 [tensor("fc.weight", [2, 5], ten)], "7/10"))
    v.append(vec("prune-count-1-of-3", "KMR.prune.count", GLOBAL, "k = floor(1/3 * 10) = 3.",
                 [tensor("fc.weight", [2, 5], ten)], "1/3"))
    v.append(vec("prune-count-floor-to-zero", "KMR.prune.count", GLOBAL,
                 "k = floor(1/20 * 10) = 0: nothing is pruned, every bit is kept.",
                 [tensor("fc.weight", [2, 5], ten)], "1/20"))
    v.append(vec("prune-count-binary64-spelling", "KMR.exact.binary64", [*GLOBAL, "KMR.exact.binary64"],
                 "The JSON number 0.7 (a binary64) denotes 7/10 (its shortest decimal), so k = 7; "
                 "its exact binary value 0.69999999999999995559... would give floor(6.99...) = 6.",
                 [tensor("fc.weight", [2, 5], ten)], 0.7))
    v.append(vec("prune-count-binary64-0.3", "KMR.exact.binary64", [*GLOBAL, "KMR.exact.binary64"],
                 "0.3 as a binary64 denotes 3/10: k = floor(3/10 * 10) = 3 (the binary value would give 2).",
                 [tensor("fc.weight", [2, 5], ten)], 0.3))
    # --- ends ------------------------------------------------------------------------------------
    ends = [-0.0, 1.0, 0.0, "80000001", -2.0, "00000003"]
    v.append(vec("prune-s0-identity", "KMR.prune.identity-ends", [*GLOBAL, "KMR.prune.identity-ends"],
                 "s = 0 returns every bit pattern unchanged, -0.0 and denormals included.",
                 [tensor("fc.weight", [2, 3], ends)], "0"))
    v.append(vec("prune-s1-all-plus-zero", "KMR.prune.identity-ends", [*GLOBAL, "KMR.prune.identity-ends"],
                 "s = 1 makes every entry +0.0 (00000000): -0.0 and negative values too.",
                 [tensor("fc.weight", [2, 3], ends), tensor("out.weight", [1, 2], [-0.0, -7.0])], "1"))
    # --- ties ------------------------------------------------------------------------------------
    v.append(vec("prune-tie-across-tensors", "KMR.prune.tie-break", GLOBAL,
                 "|w| = 0.5 appears in both tensors; k = 3 takes 0.25 then the two ties that come "
                 "first by tensor index: both 0.5s of a.weight; b.weight's -0.5 is kept.",
                 [tensor("a.weight", [1, 3], [2.0, 0.5, -0.5]), tensor("b.weight", [1, 3], [-0.5, 0.25, 3.0])], "1/2"))
    v.append(vec("prune-tie-across-tensors-swapped", "KMR.prune.tie-break", GLOBAL,
                 "The same tensors in the other order: now b.weight's -0.5 comes first and one of "
                 "a.weight's ties is kept (its later flat index).",
                 [tensor("b.weight", [1, 3], [-0.5, 0.25, 3.0]), tensor("a.weight", [1, 3], [2.0, 0.5, -0.5])], "1/2"))
    v.append(vec("prune-tie-within-tensor", "KMR.prune.tie-break", GLOBAL,
                 "Six entries with |w| = 1 (both signs): k = 4 prunes the four with the lowest "
                 "row-major flat index.",
                 [tensor("fc.weight", [2, 4], [3.0, -1.0, 1.0, 2.0, -1.0, 1.0, -1.0, 1.0])], "1/2"))
    v.append(vec("prune-tie-within-conv2d", "KMR.prune.tie-break", GLOBAL,
                 "A Conv2d weight (2, 1, 2, 2): ties broken by the row-major flat index over all four axes.",
                 [tensor("conv.weight", [2, 1, 2, 2], [0.5, 2.0, -0.5, 1.0, 0.5, -2.0, 1.0, -0.5])], "1/2"))
    v.append(vec("prune-tensor-order-mixed-modules", "KMR.prune.tensor-order", GLOBAL,
                 "Conv1d (3-D), Conv2d (4-D) and Linear (2-D) weights, all entries |w| = 1: tensor order "
                 "alone decides, k = floor(3/5 * 10) = 6.",
                 [tensor("c1.weight", [1, 1, 3], [1.0, -1.0, 1.0]),
                  tensor("c2.weight", [1, 1, 2, 2], [-1.0, 1.0, 1.0, -1.0]),
                  tensor("fc.weight", [1, 3], [1.0, 1.0, -1.0])], "3/5"))
    # --- zeros and denormals ---------------------------------------------------------------------
    v.append(vec("prune-negative-zero-kept", "KMR.prune.zero-value", GLOBAL,
                 "Zeros (+0 at 0, -0 at 1 and 3) come first; k = 1 prunes the +0 at flat index 0 and "
                 "the kept -0.0s keep their bit pattern 80000000; cost counts -0.0 as zero.",
                 [tensor("fc.weight", [2, 3], [0.0, -0.0, 1.0, -0.0, 2.0, -3.0])], "1/6"))
    v.append(vec("prune-negative-zero-pruned", "KMR.prune.zero-value", GLOBAL,
                 "k = 2 prunes the zeros at flat index 0 and 1: the pruned -0.0 becomes +0.0; the "
                 "-0.0 at index 3 is kept as -0.0.",
                 [tensor("fc.weight", [2, 3], [0.0, -0.0, 1.0, -0.0, 2.0, -3.0])], "1/3"))
    v.append(vec("prune-zeros-count-towards-k", "KMR.prune.zero-value", GLOBAL,
                 "z = 3 zeros, k = floor(1/2 * 8) = 4: the zeros and one more entry are pruned; "
                 "cost = n - max(z, k) = 4.",
                 [tensor("fc.weight", [2, 4], [5.0, 0.0, -0.0, 1.0, 0.0, -2.0, 0.5, 4.0])], "1/2"))
    v.append(vec("prune-zeros-more-than-k", "KMR.prune.zero-value", GLOBAL,
                 "z = 3 zeros, k = 2: only zeros are pruned (cost = n - max(z, k) = 5), the -0.0 "
                 "at the last zero position is kept as 80000000.",
                 [tensor("fc.weight", [2, 4], [5.0, 0.0, 1.0, -0.0, 3.0, -2.0, -0.0, 4.0])], "1/4"))
    v.append(vec("prune-denormals", "KMR.prune.tie-break", GLOBAL,
                 "Denormals rank above zeros and below normals, by exact value: 00000001 < 80000003 "
                 "(|w| 3 ulps) < 007fffff < 00800000 (smallest normal); k = 4 prunes +0 and the three "
                 "smallest denormals; the pruned negative denormal becomes +0.0.",
                 [tensor("fc.weight", [2, 4], ["007fffff", "00000001", "00800000", "80000003",
                                               0.0, 1.0, "807ffffe", -1.0])], "1/2"))
    v.append(vec("prune-extreme-magnitudes", "KMR.prune.tie-break", GLOBAL,
                 "Exact comparison over the whole binary32 range: the largest finite magnitudes "
                 "(7f7fffff, ff7fffff) are kept, 2^-126 and 1 are pruned.",
                 [tensor("fc.weight", [1, 4], ["7f7fffff", "ff7fffff", "00800000", 1.0]),
                  tensor("fc2.weight", [1, 2], ["7f7ffffe", -1.5])], "1/2"))
    # --- scope -----------------------------------------------------------------------------------
    sc = [*BASE, "KMR.prune.per-tensor"]
    v.append(vec("prune-per-tensor-scope", "KMR.prune.per-tensor", sc,
                 "scope per-tensor: k_i = floor(1/2 * n_i) per tensor (3 of 6, 2 of 4); the global "
                 "ranking would instead prune all of fc2.weight and one entry of fc1.weight.",
                 [tensor("fc1.weight", [2, 3], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]),
                  tensor("fc2.weight", [2, 2], [0.125, 0.25, 0.5, 1.0])], "1/2",
                 scope="per-tensor"))
    v.append(vec("prune-per-tensor-floor", "KMR.prune.per-tensor", sc,
                 "scope per-tensor, s = 1/2: k = floor(3/2) = 1 and floor(5/2) = 2, 3 in all (global would "
                 "prune floor(8/2) = 4).",
                 [tensor("a.weight", [1, 3], [1.0, 2.0, 3.0]), tensor("b.weight", [1, 5], [5.0, 4.0, 3.0, 2.0, 1.0])],
                 "1/2", scope="per-tensor"))
    pk = [*BASE, "KMR.prune.per-tensor-knob"]
    v.append(vec("prune-sparsity-at-name", "KMR.prune.per-tensor-knob", pk,
                 "sparsity@fc2.weight prunes fc2 alone (k = floor(1/2 * 4) = 2); fc1's smaller "
                 "magnitudes are untouched; the cost counts all prunable tensors.",
                 [tensor("fc1.weight", [1, 3], [0.001953125, -0.0078125, 0.03125]),
                  tensor("fc2.weight", [2, 2], [4.0, -1.0, 2.0, -3.0])], "1/2", knob="sparsity@fc2.weight"))
    v.append(vec("prune-sparsity-at-name-nan-elsewhere", "KMR.prune.nonfinite", [*pk, "KMR.prune.nonfinite"],
                 "NaN in a tensor outside the knob's scope is not an error (only tensors in scope are "
                 "checked); the NaN's bit pattern is returned unchanged.",
                 [tensor("fc1.weight", [1, 2], [NAN, 1.0]), tensor("fc2.weight", [1, 3], [3.0, -1.0, 2.0])],
                 "2/3", knob="sparsity@fc2.weight"))
    v.append(vec("prune-empty-tensor-skipped", "KMR.prune.empty", [*BASE, "KMR.prune.empty", "KMR.select.zero-size"],
                 "A prunable tensor with zero entries (shape 0 x 3) is skipped, not fatal: n counts only "
                 "fc2.weight (n = 2, k = 1) and the empty tensor is returned as is.",
                 [tensor("fc1.weight", [0, 3], []), tensor("fc2.weight", [1, 2], [1.0, 2.0])], "1/2"))
    v.append(vec("prune-no-prunable-tensors", "KMR.prune.empty", [*BASE, "KMR.prune.empty"],
                 "A model with no prunable tensors: n = 0, k = 0, the identity (not an error); cost 0.",
                 [], "1/2"))
    # --- errors ----------------------------------------------------------------------------------
    err = ["KMR.rule.domain-error"]
    v.append(vec("prune-error-nan", "KMR.prune.nonfinite",
                 [*err, "KMR.prune.nonfinite"], "A NaN in scope: RuleInputError.",
                 [tensor("fc1.weight", [1, 2], [1.0, 2.0]), tensor("fc2.weight", [1, 2], [NAN, 1.0])], "1/2"))
    v.append(vec("prune-error-inf-per-tensor", "KMR.prune.nonfinite",
                 [*err, "KMR.prune.nonfinite", "KMR.prune.per-tensor"],
                 "-inf in scope (scope per-tensor): RuleInputError.",
                 [tensor("fc1.weight", [1, 2], [1.0, 2.0]), tensor("fc2.weight", [1, 2], [-1.0, "ff800000"])],
                 "1/2", scope="per-tensor"))
    v.append(vec("prune-error-inf-at-name", "KMR.prune.nonfinite",
                 [*err, "KMR.prune.nonfinite", "KMR.prune.per-tensor-knob"],
                 "+inf in the tensor the knob names: RuleInputError.",
                 [tensor("fc1.weight", [1, 2], [1.0, 2.0]), tensor("fc2.weight", [1, 2], [INF, 1.0])], "1/2",
                 knob="sparsity@fc2.weight"))
    kd = ["KMR.knob.domain", "KMR.knob.domain-real", "KMR.prune.knob"]
    v.append(vec("prune-error-sparsity-above-one", "KMR.knob.domain",
                 kd, "s = 11/10 is outside [0, 1]: KnobDomainError.",
                 [tensor("fc.weight", [1, 2], [1.0, 2.0])], "11/10"))
    v.append(vec("prune-error-sparsity-negative", "KMR.knob.domain",
                 kd, "s = -1/10 is outside [0, 1]: KnobDomainError.",
                 [tensor("fc.weight", [1, 2], [1.0, 2.0])], "-1/10"))
    v.append(vec("prune-error-sparsity-bool", "KMR.knob.domain", [*kd, "KMR.exact.binary64"],
                 "A boolean is not a knob value: KnobDomainError.",
                 [tensor("fc.weight", [1, 2], [1.0, 2.0])], True))
    v.append(vec("prune-error-unknown-tensor", "KMR.knob.unknown", ["KMR.knob.unknown", "KMR.prune.per-tensor-knob"],
                 "sparsity@<name> for a name that is not a prunable tensor: KnobDomainError.",
                 [tensor("fc.weight", [1, 2], [1.0, 2.0])], "1/2", knob="sparsity@nope.weight"))
    # --- large n with decimal sparsities: k = floor(s * n) in exact arithmetic ---------------------
    # floor(float(s) * n) is wrong here: 0.29 * 100 = 28.999999999999996 in binary64 (likewise 0.57,
    # 0.58 times 100); every earlier vector has n <= 10, where no such case exists.
    hundred = lcg_values(11, 100)
    cnt = [*GLOBAL, "KMR.prune.count"]
    v.append(vec("prune-count-n100-29-100", "KMR.prune.count", cnt,
                 "n = 100 distinct magnitudes, s = 29/100: k = 29 exactly (binary64 0.29 * 100 = "
                 "28.999999999999996 would floor to 28).",
                 [tensor("fc.weight", [10, 10], hundred)], "29/100"))
    v.append(vec("prune-count-n100-binary64-0.29", "KMR.prune.count", [*cnt, "KMR.exact.binary64"],
                 "The JSON number 0.29 denotes 29/100: k = floor(29/100 * 100) = 29.",
                 [tensor("fc.weight", [10, 10], hundred)], 0.29))
    v.append(vec("prune-count-n100-two-tensors-0.57", "KMR.prune.count", [*cnt, "KMR.exact.binary64"],
                 "Two tensors, n = 40 + 60 = 100, s = 0.57: k = 57 (binary64 0.57 * 100 = 56.99999999999999).",
                 [tensor("a.weight", [4, 10], hundred[:40]), tensor("b.weight", [6, 10], hundred[40:])], 0.57))
    v.append(vec("prune-count-n100-per-tensor-58-100", "KMR.prune.count", [*BASE, "KMR.prune.per-tensor"],
                 "scope per-tensor on two 100-entry tensors, s = 58/100: k_i = 58 each (binary64 0.58 * 100 "
                 "= 57.99999999999999).",
                 [tensor("a.weight", [10, 10], hundred), tensor("b.weight", [5, 20], lcg_values(12, 100))],
                 "58/100", scope="per-tensor"))
    v.append(vec("prune-count-n300-41-100", "KMR.prune.count", cnt,
                 "n = 300 entries with many ties, s = 41/100: k = 123 exactly (binary64 0.41 * 300 = "
                 "122.99999999999999 would floor to 122).",
                 [tensor("fc.weight", [10, 30], [x / 8 for x in lcg_values(13, 300, distinct=False)])], "41/100"))
    # --- tensor order observable: tensors listed by name, the module tree gives the order --------
    tor = [*GLOBAL, "KMR.prune.tensor-order"]
    v.append(vec("prune-tensor-order-tree-registration", "KMR.prune.tensor-order", tor,
                 "Modules registered z_out then a_in; tensors listed by name (a_in first). All |w| = 1: "
                 "k = 2 prunes z_out.weight's first two entries (tensor index 0), not a_in's.",
                 [tensor("a_in.weight", [1, 2], [1.0, -1.0]), tensor("z_out.weight", [1, 3], [-1.0, 1.0, 1.0])],
                 "2/5", tree=[{"name": "z_out", "type": "Linear"}, {"name": "a_in", "type": "Linear"}]))
    v.append(vec("prune-tensor-order-tree-numeric", "KMR.prune.tensor-order", tor,
                 "Sequential children 2 then 10 (registration order); by name '10' sorts before '2'. "
                 "Ties at |w| = 0.5: k = 3 takes layers.2's entries first.",
                 [tensor("layers.10.weight", [1, 2], [0.5, -0.5]), tensor("layers.2.weight", [1, 2], [-0.5, 0.5]),
                  tensor("layers.3.weight", [1, 2], [0.5, 4.0])],
                 "1/2", tree=[{"name": "layers", "children": [{"name": "2", "type": "Linear"},
                                                              {"name": "3", "type": "Linear"},
                                                              {"name": "10", "type": "Linear"}]}]))
    v.append(vec("prune-tensor-order-tree-depth-first", "KMR.prune.tensor-order", tor,
                 "Depth-first, not breadth-first: enc (children a, b) is registered before head, so the "
                 "order is enc.a, enc.b, head (breadth-first would put head first). Ties at |w| = 2: "
                 "k = 3 prunes enc.a's and enc.b's 2s, head's are kept.",
                 [tensor("enc.a.weight", [1, 2], [2.0, 9.0]), tensor("enc.b.weight", [1, 2], [-2.0, 9.0]),
                  tensor("head.weight", [1, 2], [2.0, -2.0])],
                 "1/2", tree=[{"name": "enc", "children": [{"name": "a", "type": "Linear"},
                                                           {"name": "b", "type": "Linear"}]},
                              {"name": "head", "type": "Linear"}]))
    ids = [x["id"] for x in v]
    assert len(ids) == len(set(ids)), "duplicate vector id"
    return v


def document() -> Json:
    return {
        "kind": "prune-magnitude",
        "spec_version": SPEC_VERSION,
        "generator": "spec/vectors/generate_pruning.py",
        "description": "Unstructured magnitude pruning (spec/methods/pruning.md) on named binary32 tensors "
                       "given as bit patterns. See spec/vectors/README.md.",
        "vectors": vectors(),
    }


def dump(doc: Json) -> bytes:
    """Canonical bytes: sorted keys, indent 1, UTF-8, one trailing newline."""
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


# --- the cross-check against the reference (never a source of expected values) ------------------

def cross_check(doc: Json) -> None:
    """Assert that ``kmr_ref.methods.pruning`` (``prune_count``, ``magnitude_masks``, ``apply_mask``)
    gives the oracle's tensors on every non-error vector. Error vectors are checked against the
    full rule by the conformance runner (``tests/test_method_vectors.py``)."""
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    np = importlib.import_module("numpy")
    torch = importlib.import_module("torch")
    ref = importlib.import_module("kmr_ref.methods.pruning")
    bad: list[str] = []
    for vd in doc["vectors"]:
        inp, exp = vd["input"], vd["expected"]
        if "error" in exp:
            continue
        ts = [torch.from_numpy(np.array([int(b, 16) for b in t["values"]], dtype=np.uint32).view(np.float32)
                               .reshape(t["shape"])) for t in inp["tensors"]]
        s = Fraction(repr(inp["sparsity"])) if isinstance(inp["sparsity"], float) else Fraction(inp["sparsity"])
        names = [t["name"] for t in inp["tensors"]]
        if inp["knob"] != "sparsity":
            groups = [[names.index(inp["knob"].split("@", 1)[1])]]
        elif inp["scope"] == "global":
            groups = [list(range(len(ts)))]
        else:
            groups = [[i] for i in range(len(ts))]
        order = tree_order(inp["tree"]) if "tree" in inp else names
        out = list(ts)
        for g in groups:
            g = sorted(g, key=lambda i: order.index(names[i]))  # tensor order decides ties
            k = ref.prune_count(s, sum(ts[i].numel() for i in g))
            for i, keep in zip(g, ref.magnitude_masks([ts[i] for i in g], k), strict=True):
                out[i] = ref.apply_mask(ts[i], keep)
        got = [[f"{int(x):08x}" for x in o.reshape(-1).view(torch.int32).numpy().view(np.uint32)] for o in out]
        want = [t["values"] for t in exp["tensors"]]
        if got != want:
            bad.append(f"{vd['id']}: reference {got} != oracle {want}")
    if bad:
        raise SystemExit("kmr_ref.methods.pruning disagrees with the spec oracle:\n" + "\n".join(bad))


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    out = Path(args[0]) if args else Path(__file__).resolve().parent / SPEC_VERSION
    doc = document()
    data = dump(doc)
    if "--no-cross-check" not in argv:
        cross_check(json.loads(data))
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning.json").write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
