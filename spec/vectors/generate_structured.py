#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/structured.json``: vectors for structured pruning (Linear chains).

The expected values come from :func:`oracle`, written from ``spec/methods/structured.md`` in plain
Python (``struct`` for binary32 bit patterns, ``math.fsum`` for the scores, ``Fraction`` for counts
and the global order); it imports nothing from ``kmr_ref``.

The world of a vector (``kind: prune-structured``): ``input.layers`` is a Sequential of Linear
layers, each ``{"name", "weight": {"shape": [out, in], "values"}, "bias": [bits] | null,
"bn": null | {"weight", "bias", "running_mean", "running_var"}}`` (a ``BatchNorm1d`` right after the
layer), with a ``ReLU`` between consecutive layers; ``knob`` (``fraction`` / ``fraction@<name>``),
``scope`` (``per-layer`` / ``global``), ``p`` (1 or 2), ``fraction`` (as a caller spells it).
``expected``: ``{"layers": [same shape as the input, after removal], "params": <KMR.meter.params>}``
or ``{"error": "<clause ID>"}``.

Usage: ``python spec/vectors/generate_structured.py [OUT_DIR]`` (default: ``spec/vectors/0.1.0``).
"""

from __future__ import annotations

import fnmatch
import itertools
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


class VectorError(Exception):
    def __init__(self, clause: str) -> None:
        super().__init__(clause)
        self.clause = clause


def f32(bits: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(bits))[0])


def bits_of(x: float | str) -> str:
    if isinstance(x, str):
        return x
    b = struct.pack(">f", x).hex()
    assert f32(b) == x, f"{x!r} is not a binary32 value"
    return b


def exact_fraction(x: Json) -> Fraction:
    """KMR.structured.knob: f in [0, 1) (KMR.exact.binary64); else KMR.knob.domain-real."""
    if isinstance(x, bool):
        raise VectorError("KMR.knob.domain-real")
    if isinstance(x, int):
        f = Fraction(x)
    elif isinstance(x, float):
        f = Fraction(repr(x))
    elif isinstance(x, str) and RATIONAL.match(x):
        f = Fraction(x)
    else:
        raise VectorError("KMR.knob.domain-real")
    if not 0 <= f < 1:
        raise VectorError("KMR.knob.domain-real")
    return f


def score(row: list[float], p: int) -> float:
    """KMR.structured.score: fsum of fl64(|w|^p)."""
    return math.fsum(abs(w) if p == 1 else abs(w) * abs(w) for w in row)


def kind_of(lay: Json) -> str:
    return str(lay.get("type", "Linear"))


def check_graph(layers: list[Json]) -> None:
    """KMR.structured.supported-graph / next-layer on the vector's Sequential: between layer l and
    l+1 sit an optional BatchNorm1d (num_features = C_out(l)), a ReLU and, after a Conv only, at most
    one Flatten(1, -1); layer l+1 is a Conv with in_channels = C_out(l), or after the Flatten a
    Linear whose in_features is a multiple of C_out(l); after a Linear, a Linear with in_features =
    C_out(l). Else KMR.structured.unsupported-graph."""
    flattens = sum(1 for lay in layers[:-1] if lay.get("flatten"))
    if flattens > 1:
        raise VectorError("KMR.structured.unsupported-graph")
    for a, b in itertools.pairwise(layers):
        c_out, c_in = a["weight"]["shape"][0], b["weight"]["shape"][1]
        if a.get("flatten"):
            ok = kind_of(a) == "Conv1d" and kind_of(b) == "Linear" and c_out > 0 and c_in % c_out == 0
        elif kind_of(a) == "Conv1d":
            ok = kind_of(b) == "Conv1d" and c_in == c_out
        else:
            ok = kind_of(b) == "Linear" and c_in == c_out
        if not ok:
            raise VectorError("KMR.structured.unsupported-graph")


def oracle(inp: Json) -> Json:
    layers = inp["layers"]
    names = [lay["name"] for lay in layers]
    check_graph(layers)  # the graph check runs first
    prunable = list(range(len(layers) - 1))  # KMR.structured.output-layer-kept
    inc, exc = inp.get("include"), inp.get("exclude", [])
    if inc is not None or exc:  # KMR.structured.select: patterns on the prunable layers' parameter names
        if isinstance(inc, str) or isinstance(exc, str):
            raise VectorError("KMR.select.include")
        pn = {i: [f"{names[i]}.weight"] + ([f"{names[i]}.bias"] if layers[i]["bias"] is not None else [])
              for i in prunable}
        every = [q for i in prunable for q in pn[i]]
        for pat in [*(inc or []), *exc]:
            if not any(fnmatch.fnmatchcase(q, pat) for q in every):
                raise VectorError("KMR.select.no-match")
        prunable = [i for i in prunable if (inc is None or any(fnmatch.fnmatchcase(q, t) for q in pn[i] for t in inc))
                    and not any(fnmatch.fnmatchcase(q, t) for q in pn[i] for t in exc)]
    knob = inp["knob"]
    if knob != "fraction" and not (knob.startswith("fraction@") and knob[9:] in [names[i] for i in prunable]):
        raise VectorError("KMR.knob.unknown")
    f = exact_fraction(inp["fraction"])
    for lay in layers:  # KMR.structured.empty, KMR.structured.nonfinite
        params = [lay["weight"]["values"], lay["bias"] or []]
        if lay["bias"] is not None and not lay["bias"]:
            raise VectorError("KMR.structured.empty")
        if lay["bn"]:
            params += [lay["bn"][k] for k in ("weight", "bias")]
        if any(not p for p in params[:1]):
            raise VectorError("KMR.structured.empty")
        if any(not math.isfinite(f32(b)) for vals in params for b in vals):
            raise VectorError("KMR.structured.nonfinite")
    rows = []
    for lay in layers:
        out = lay["weight"]["shape"][0]
        fan = math.prod(lay["weight"]["shape"][1:])
        v = [f32(b) for b in lay["weight"]["values"]]
        rows.append([v[c * fan:(c + 1) * fan] for c in range(out)])
    scores = {i: [score(r, inp["p"]) for r in rows[i]] for i in prunable}
    removed: list[set[int]] = [set() for _ in layers]
    if knob == "fraction" and inp["scope"] == "global":  # KMR.structured.global-order
        total = sum(len(rows[i]) for i in prunable)
        K = math.floor(f * total)
        order = sorted((Fraction(scores[i][c]) / len(rows[i][c]), i, c) for i in prunable for c in range(len(rows[i])))
        for _, i, c in order:
            if sum(len(s) for s in removed) >= K:
                break
            if len(rows[i]) - len(removed[i]) > 1:
                removed[i].add(c)
    else:
        targets = prunable if knob == "fraction" else [names.index(knob[9:])]
        for i in targets:  # KMR.structured.count, KMR.structured.tie-break
            C = len(rows[i])
            k = min(math.floor(f * C), C - 1)
            removed[i] = {c for _, c in sorted((scores[i][c], c) for c in range(C))[:k]}
    out_layers = []
    for i, lay in enumerate(layers):
        shape = lay["weight"]["shape"]
        out, inn = shape[0], shape[1]
        kk = math.prod(shape[2:])  # kernel entries per input channel (1 for a Linear)
        keep_out = [c for c in range(out) if c not in removed[i]]  # KMR.structured.removal
        # KMR.structured.next-layer-inputs / KMR.structured.flatten: input j of layer i belongs to
        # channel j // s of layer i - 1 (s = in / C_out(i - 1) after a Flatten, else 1)
        s_blk = inn // layers[i - 1]["weight"]["shape"][0] if i and layers[i - 1].get("flatten") else 1
        keep_in = [j for j in range(inn) if i == 0 or (j // s_blk) not in removed[i - 1]]
        w = lay["weight"]["values"]
        vals = [w[(c * inn + j) * kk + t] for c in keep_out for j in keep_in for t in range(kk)]
        new = {k: v for k, v in lay.items() if k not in ("weight", "bias", "bn")}
        new.update({"weight": {"shape": [len(keep_out), len(keep_in), *shape[2:]], "values": vals},
                    "bias": None if lay["bias"] is None else [lay["bias"][c] for c in keep_out],
                    "bn": None if lay["bn"] is None else {k: [lay["bn"][k][c] for c in keep_out] for k in lay["bn"]}})
        out_layers.append(new)
    params = sum(len(x["weight"]["values"]) + len(x["bias"] or []) + (2 * len(x["bn"]["weight"]) if x["bn"] else 0)
                 for x in out_layers)  # KMR.meter.params: BatchNorm running stats are buffers
    return {"layers": out_layers, "params": params}


def run_oracle(inp: Json) -> Json:
    try:
        return oracle(inp)
    except VectorError as e:
        return {"error": e.clause}


def conv(name: str, out: int, inn: int, k: int, vals: list[float | str], bias: list[float | str] | None = None,
         flatten: bool = False, bn: dict[str, list[float | str]] | None = None) -> Json:
    """A Conv1d(inn, out, k) layer (stride 1, no padding); ``flatten``: a Flatten(1, -1) after its ReLU."""
    assert len(vals) == out * inn * k
    layer: Json = {"name": name, "type": "Conv1d",
                   "weight": {"shape": [out, inn, k], "values": [bits_of(x) for x in vals]},
                   "bias": None if bias is None else [bits_of(x) for x in bias],
                   "bn": None if bn is None else {kk: [bits_of(x) for x in v] for kk, v in bn.items()}}
    if flatten:
        layer["flatten"] = True
    return layer


def lin(name: str, out: int, inn: int, vals: list[float | str], bias: list[float | str] | None = None,
        bn: dict[str, list[float | str]] | None = None) -> Json:
    assert len(vals) == out * inn
    return {"name": name, "weight": {"shape": [out, inn], "values": [bits_of(x) for x in vals]},
            "bias": None if bias is None else [bits_of(x) for x in bias],
            "bn": None if bn is None else {k: [bits_of(x) for x in v] for k, v in bn.items()}}


BASE = ["KMR.structured.knob", "KMR.structured.score", "KMR.structured.count", "KMR.structured.tie-break",
        "KMR.structured.removal", "KMR.structured.next-layer-inputs", "KMR.structured.output-layer-kept",
        "KMR.structured.supported-graph", "KMR.structured.next-layer", "KMR.meter.params",
        "KMR.rule.deterministic", "KMR.rule.no-mutation"]


def vec(vid: str, primary: str, clauses: list[str], description: str, layers: list[Json], fraction: Json,
        knob: str = "fraction", scope: str = "per-layer", p: int = 2, include: Json = None,
        exclude: Json = None) -> Json:
    inp: Json = {"layers": layers, "knob": knob, "scope": scope, "p": p, "fraction": fraction}
    if include is not None:
        inp["include"] = include
    if exclude is not None:
        inp["exclude"] = exclude
    exp = run_oracle(inp)
    extra = ["KMR.error.names-clause", "KMR.rule.no-mutation"] if "error" in exp else BASE
    feats = set({"input-checks"} if "error" in exp else ({"global-scope"} if scope == "global" else set())
                | ({"batchnorm"} if any(x["bn"] for x in layers) else set()))
    if any(kind_of(x) == "Conv1d" for x in layers):
        feats.add("conv")
    if any(x.get("flatten") for x in layers):
        feats.add("flatten")
    if include is not None or exclude is not None:
        feats.add("select")
    feats = sorted(feats)
    return {"id": vid, "primary": primary, "clauses": sorted({primary, *extra, *clauses}), "features": feats,
            "description": description, "input": inp, "expected": exp, "tolerance": None}


def vectors() -> list[Json]:
    v: list[Json] = []
    # layer 0: 4 channels of 3 inputs; layer 1: 2 x 4 (the output layer)
    w0 = [3.0, 0.0, 0.0,   1.0, 1.0, 0.0,   0.5, -0.5, 0.5,   -2.0, 2.0, 0.0]
    w1 = [1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]
    two = [lin("0", 4, 3, w0, [0.125, 0.25, 0.375, -0.5]), lin("2", 2, 4, w1, [0.0, 1.0])]
    v.append(vec("structured-per-layer-half", "KMR.structured.count", [],
                 "f = 1/2 of 4 channels: k = 2; L2 scores 9, 2, 0.75, 8 remove channels 2 and 1; the next "
                 "layer loses input columns 1 and 2; the output layer keeps its channels.", two, "1/2"))
    v.append(vec("structured-score-p1", "KMR.structured.score", [],
                 "p = 1: L1 scores 3, 2, 1.5, 4; f = 1/4 (k = 1) removes channel 2 (L2 scores would be "
                 "9, 2, 0.75, 8).", two, "1/4", p=1))
    pn = [lin("0", 2, 2, [2.5, 0.0, 1.5, -1.5]), lin("2", 1, 2, [1.0, 1.0])]
    v.append(vec("structured-score-p-decides-p1", "KMR.structured.score", [],
                 "Channel 0 = [2.5, 0], channel 1 = [1.5, -1.5]: p = 1 scores 2.5 < 3, f = 1/2 removes channel 0.",
                 pn, "1/2", p=1))
    v.append(vec("structured-score-p-decides-p2", "KMR.structured.score", [],
                 "The same layer with p = 2 scores 6.25 > 4.5: channel 1 is removed.", pn, "1/2", p=2))
    tie = [lin("0", 3, 2, [1.0, 0.0, 0.0, -1.0, 2.0, 0.0]), lin("2", 1, 3, [1.0, 1.0, 1.0])]
    v.append(vec("structured-tie-lower-index", "KMR.structured.tie-break", [],
                 "Channels 0 and 1 tie on score 1: f = 1/3 (k = 1) removes channel 0, the lower index.", tie, "1/3"))
    rnd = [lin("0", 2, 3, [1.0, 2.0 ** -53, 2.0 ** -80, 1.0, 0.0, 0.0]), lin("2", 1, 2, [1.0, 1.0])]
    v.append(vec("structured-score-exactly-rounded", "KMR.structured.score", [],
                 "p = 1, channel 0 = [1, 2^-53, 2^-80], channel 1 = [1, 0, 0]: the exactly rounded sum of "
                 "channel 0 is 1 + 2^-52 > 1, so f = 1/2 removes channel 1. A left-to-right binary64 sum (or a "
                 "truncated one) gives 1, a tie, and would remove channel 0.", rnd, "1/2", p=1))
    v.append(vec("structured-keeps-one-channel", "KMR.structured.count", [],
                 "f = 19/20 of 3 channels: floor(57/20) = 2 = C - 1: one channel is kept.", tie, "19/20"))
    v.append(vec("structured-zero-removes-nothing", "KMR.structured.sharing", ["KMR.structured.sharing"],
                 "f = 0: nothing is removed; every bit pattern is unchanged.", two, 0))
    v.append(vec("structured-binary64-spelling", "KMR.exact.binary64", ["KMR.exact.binary64"],
                 "The JSON number 0.5 denotes 1/2.", two, 0.5))
    three = [lin("0", 4, 2, [1.0, 1.0, 0.25, 0.0, 2.0, 2.0, 0.5, 0.5]),
             lin("2", 2, 4, [8.0, 0.0, 0.0, 0.0, 0.125, 0.125, 0.125, 0.125]),
             lin("4", 1, 2, [1.0, -1.0])]
    v.append(vec("structured-global-mean-score", "KMR.structured.global-order", ["KMR.structured.scope"],
                 "scope global, f = 1/2 of 6 prunable channels: K = 3, ranked by score / fan-in across "
                 "layers (layer 0 fan-in 2, layer 2 fan-in 4).", three, "1/2", scope="global"))
    v.append(vec("structured-global-keeps-one", "KMR.structured.global-order", ["KMR.structured.scope"],
                 "scope global, f = 5/6: K = 5, but each layer keeps one channel: 4 are removed.",
                 three, "5/6", scope="global"))
    v.append(vec("structured-per-layer-knob", "KMR.structured.per-layer-knob", [],
                 "fraction@2 prunes layer 2 alone (k = 1 of 2); layer 0 keeps all channels.", three, "1/2",
                 knob="fraction@2"))
    bn = {"weight": [1.0, 0.5, 2.0, 1.5], "bias": [0.0, 0.25, -0.25, 0.5],
          "running_mean": [0.125, 0.25, 0.375, 0.5], "running_var": [1.0, 2.0, 3.0, 4.0]}
    v.append(vec("structured-batchnorm", "KMR.structured.bn", [],
                 "A BatchNorm1d after layer 0 loses the entries of the removed channels (weight, bias, "
                 "running mean and variance); params count its weight and bias, not the buffers.",
                 [lin("0", 4, 3, w0, None, bn), lin("3", 2, 4, w1)], "1/2"))
    v.append(vec("structured-error-nan", "KMR.structured.nonfinite", ["KMR.rule.domain-error"],
                 "A NaN in a layer's weight: RuleInputError.",
                 [lin("0", 2, 2, [1.0, "7fc00000", 0.5, 0.5]), lin("2", 1, 2, [1.0, 1.0])], "1/2"))
    v.append(vec("structured-error-inf-bn", "KMR.structured.nonfinite", ["KMR.rule.domain-error", "KMR.structured.bn"],
                 "+inf in the BatchNorm between layers: RuleInputError.",
                 [lin("0", 2, 2, [1.0, 0.0, 0.5, 0.5], None,
                      {"weight": [1.0, "7f800000"], "bias": [0.0, 0.0], "running_mean": [0.0, 0.0],
                       "running_var": [1.0, 1.0]}), lin("3", 1, 2, [1.0, 1.0])], "1/2"))
    v.append(vec("structured-error-fraction-one", "KMR.knob.domain", ["KMR.structured.knob", "KMR.knob.domain-real"],
                 "f = 1 is outside [0, 1): KnobDomainError.", two, 1))
    v.append(vec("structured-error-unknown-layer", "KMR.knob.unknown", ["KMR.structured.per-layer-knob"],
                 "fraction@2 of a model whose prunable layer is 0 only (2 is the output layer): KnobDomainError.",
                 two, "1/2", knob="fraction@2"))
    # Conv1d layers, Flatten, selection, empty and unsupported graphs
    c0 = [1.0, 0.0, -1.0, 0.5, 0.5, 0.0,   0.25, 0.0, 0.0, 0.0, 0.0, 0.25,   2.0, -2.0, 1.0, 1.0, 0.0, 0.0]
    c1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    convs = [conv("0", 3, 2, 3, c0, [0.5, -0.5, 0.25]), conv("2", 2, 3, 2, c1)]
    v.append(vec("structured-conv1d-chain", "KMR.structured.next-layer-inputs", ["KMR.structured.removal"],
                 "Conv1d(2, 3, 3) then Conv1d(3, 2, 2): L2 scores 3.5, 0.125, 10 over in * k = 6 entries; f = 1/3 "
                 "removes channel 1 and input channel 1 of the next Conv (its 2 kernel entries per output).",
                 convs, "1/3"))
    flat = [conv("0", 3, 2, 3, c0, None, flatten=True),
            lin("3", 2, 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])]
    v.append(vec("structured-flatten-blocks", "KMR.structured.flatten", ["KMR.structured.next-layer-inputs"],
                 "Conv1d(2, 3, 3), ReLU, Flatten(1, -1), Linear(6, 2): s = 6 / 3 = 2 inputs per channel; f = 1/3 "
                 "removes channel 1 and the input block [2, 4) of the Linear.", flat, "1/3"))
    v.append(vec("structured-select-include", "KMR.structured.select", ["KMR.select.include"],
                 "include = [\"2.*\"] on a 3-layer chain: only layer 2 is pruned (k = 1 of 2); layer 0 keeps "
                 "every channel.", three, "1/2", include=["2.*"]))
    v.append(vec("structured-select-global-counts-selected", "KMR.structured.select", ["KMR.structured.global-order",
                                                                                       "KMR.select.exclude"],
                 "scope global with exclude = [\"0.weight\"]: K = floor(1/2 * 2) = 1 over layer 2's channels only.",
                 three, "1/2", scope="global", exclude=["0.weight"]))
    v.append(vec("structured-error-select-no-match", "KMR.select.no-match", ["KMR.structured.select"],
                 "include = [\"4.*\"]: the output layer 4 is not prunable, so the pattern matches nothing the "
                 "rule can cover: RuleInputError.", three, "1/2", include=["4.*"]))
    v.append(vec("structured-error-flatten-after-linear", "KMR.structured.unsupported-graph",
                 ["KMR.structured.next-layer"],
                 "A Flatten after a Linear (only a Conv may precede it): RuleInputError, the rule never guesses.",
                 [dict(lin("0", 2, 2, [1.0, 0.0, 0.5, 0.5]), flatten=True), lin("3", 1, 2, [1.0, 1.0])], "1/2"))
    v.append(vec("structured-error-width-mismatch", "KMR.structured.unsupported-graph", ["KMR.structured.next-layer"],
                 "Linear(2, 4) then Linear(3, 1): in_features 3 is not C_out = 4: RuleInputError.",
                 [lin("0", 4, 2, [1.0] * 8), lin("2", 1, 3, [1.0, 1.0, 1.0])], "1/2"))
    v.append(vec("structured-error-conv-after-linear", "KMR.structured.unsupported-graph",
                 ["KMR.structured.next-layer"],
                 "A Conv1d after a Linear: RuleInputError.",
                 [lin("0", 2, 2, [1.0, 0.0, 0.5, 0.5]), conv("2", 1, 2, 1, [1.0, 1.0])], "1/2"))
    v.append(vec("structured-error-empty-bias", "KMR.structured.empty", [],
                 "A layer of zero output channels (a 0 x 2 weight and an empty bias) feeding a Linear(0, 1): "
                 "RuleInputError.", [lin("0", 0, 2, [], []), lin("2", 1, 0, [])], "1/2"))
    return v


def document() -> Json:
    return {"kind": "prune-structured", "spec_version": SPEC_VERSION,
            "generator": "spec/vectors/generate_structured.py",
            "description": "Structured pruning with physical removal (spec/methods/structured.md) on Linear and "
                           "Conv1d chains (ReLU between layers, optional BatchNorm1d, a Flatten after a Conv), "
                           "weights as binary32 bit patterns. "
                           "See spec/vectors/README.md.",
            "vectors": vectors()}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / SPEC_VERSION
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(document(), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    (out / "structured.json").write_bytes(data.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
