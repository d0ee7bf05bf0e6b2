"""Runner and reference adapter for ``kind: prune-structured`` (``spec/methods/structured.md``).

The vector's chain becomes an ``nn.Sequential`` (each Linear or Conv1d at the index its ``name``
gives, an optional ``BatchNorm1d`` right after it, a ``ReLU`` before the next layer, and a
``Flatten(1, -1)`` after that where the layer says ``flatten``); the reference
rule ``StructuredPruning.for_model(model, p, scope)`` is applied and the layers are read back in
the vector's shape. An adapter of another implementation is a function of the same shape
(``input -> output``), like the ``alg1`` adapters; through ``--exec`` the input is sent as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from kmr_ref.conformance.adapters import bit_patterns, decode_spelling, f32_array
from kmr_ref.core import KMRError
from kmr_ref.methods.structured import StructuredPruning

Json = Any
StructuredAdapter = Callable[[Mapping[str, Json]], dict[str, Json]]


def _param(bits: list[str], shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(f32_array(bits, shape).copy()), requires_grad=False)


def build_model(layers: list[Mapping[str, Json]]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, lay in enumerate(layers):
        if str(len(mods)) != lay["name"]:
            raise ValueError(f"layer {lay['name']!r} would sit at index {len(mods)} of the Sequential")
        shape = tuple(int(d) for d in lay["weight"]["shape"])
        out, inn = shape[0], shape[1]
        fc: nn.Linear | nn.Conv1d
        if lay.get("type", "Linear") == "Conv1d":
            fc = nn.Conv1d(inn, out, shape[2], bias=lay["bias"] is not None)
        else:
            fc = nn.Linear(inn, out, bias=lay["bias"] is not None)
        fc.weight = _param(lay["weight"]["values"], shape)
        if lay["bias"] is not None:
            fc.bias = _param(lay["bias"], (out,))
        mods.append(fc)
        if lay["bn"] is not None:
            bn = nn.BatchNorm1d(out)
            bn.weight = _param(lay["bn"]["weight"], (out,))
            bn.bias = _param(lay["bn"]["bias"], (out,))
            bn.running_mean = torch.from_numpy(f32_array(lay["bn"]["running_mean"], (out,)).copy())
            bn.running_var = torch.from_numpy(f32_array(lay["bn"]["running_var"], (out,)).copy())
            mods.append(bn)
        if i + 1 < len(layers):
            mods.append(nn.ReLU())
        if lay.get("flatten"):
            mods.append(nn.Flatten(1, -1))
    return nn.Sequential(*mods)


def reference_structured(inp: Mapping[str, Json]) -> dict[str, Json]:
    """The reference rule on the vector's chain; the output has the shape of ``expected``."""
    with warnings.catch_warnings():  # zero-size layers (empty-input vectors): torch warns on init
        warnings.simplefilter("ignore")
        model = build_model(inp["layers"])
    try:
        rule = StructuredPruning.for_model(model, inp["p"], inp["scope"], include=inp.get("include"),
                                           exclude=inp.get("exclude", ()))
        out = rule.apply(model, inp["knob"], decode_spelling(inp["fraction"]))
    except KMRError as e:
        return {"error": e.clause}
    res = []
    for lay in inp["layers"]:
        fc = out.get_submodule(lay["name"])
        assert isinstance(fc, nn.Linear | nn.Conv1d)
        d: dict[str, Json] = {k: v for k, v in lay.items() if k not in ("weight", "bias", "bn")}
        d.update({"weight": {"shape": list(fc.weight.shape), "values": bit_patterns(fc.weight.detach())},
                  "bias": None if fc.bias is None else bit_patterns(fc.bias.detach()), "bn": None})
        if lay["bn"] is not None:
            bn = out.get_submodule(str(int(lay["name"]) + 1))
            assert isinstance(bn, nn.BatchNorm1d)
            d["bn"] = {k: bit_patterns(getattr(bn, k).detach()) for k in ("weight", "bias", "running_mean",
                                                                          "running_var")}
        res.append(d)
    params = sum(p.numel() for p in out.parameters())  # KMR.meter.params
    return {"layers": res, "params": int(params)}


def make_runner(adapter: StructuredAdapter) -> Callable[[Mapping[str, Json]], tuple[bool, str]]:
    from kmr_ref.conformance.vectors import run_alg1_vector  # same call-and-compare

    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_alg1_vector(vec, adapter)

    return run


reference_runner = make_runner(reference_structured)
