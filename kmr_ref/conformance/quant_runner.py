"""Runner and adapters for ``kind: quant-uniform`` vectors (Algorithm Q, ``spec/methods/quantization.md``).

- :class:`ReferenceQuant`: the reference rule ``kmr_ref.methods.quantization.UniformQuantization``
  (granularity ``channel``) on a Linear whose weight is the vector's (G, L) matrix, so each row is a
  group; codes, scale and zero point are the rule's kept buffers (``KMR.quant.codes-kept``, read by
  ``kept_codes``) and the dequantized weight is the new parameter. The rule checks its input.
- :class:`KernelQuant`: the fused kernel ``kmr_ref.kernels.quant_fused.quantize_groups``; it assumes
  validated input, so error vectors are skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kmr_ref.conformance.adapters import (
    F32Array,
    NotSupported,
    QuantOutput,
    QuantUniformAdapter,
    Scheme,
    bit_patterns,
    f32_array,
    int_list,
)
from kmr_ref.conformance.method_runner import again, run_checked
from kmr_ref.conformance.vectors import VectorRunner
from kmr_ref.methods.quantization import BITS, UniformQuantization, kept_codes

Json = Any


class ReferenceQuant:
    """The reference rule on ``Linear(weight = w)``, granularity ``channel``."""

    checks_input = True

    def quantize(self, w: F32Array, bits: Any, scheme: Scheme) -> QuantOutput:
        model = nn.Module()
        fc = nn.Linear(1, 1, bias=False)
        fc._parameters["weight"] = nn.Parameter(torch.from_numpy(w), requires_grad=False)
        model.add_module("fc", fc)
        # the vector's w is Algorithm Q's input, selected by the caller: a zero-size w is quantized (and
        # refused, KMR.quant.empty) rather than left out as the model-level selection would (KMR.select.zero-size)
        out = UniformQuantization(scheme=scheme, granularity="channel", empty="refuse").apply(model, BITS, bits)
        qfc = out.get_submodule("fc")
        kc = kept_codes(qfc, "weight")
        if kc is None:
            raise AssertionError("the rule kept no valid codes (KMR.quant.codes-kept)")
        dq = qfc.get_parameter("weight").detach()
        return QuantOutput(kc.codes.numpy(), kc.scale.numpy(), kc.zp.numpy(), dq.numpy())


class KernelQuant:
    """``kmr_ref.kernels.quant_fused.quantize_groups``; ``NotSupported`` if absent."""

    checks_input = False

    def quantize(self, w: F32Array, bits: Any, scheme: Scheme) -> QuantOutput:
        try:
            fused: Callable[..., Any] = importlib.import_module("kmr_ref.kernels.quant_fused").quantize_groups
        except (ImportError, AttributeError) as e:
            raise NotSupported(f"kmr_ref.kernels.quant_fused.quantize_groups is not available: {e}") from e
        fq = fused(torch.from_numpy(w), bits, scheme)
        if fq.dequant is None:
            raise AssertionError("quant_fused.quantize_groups returned no dequantized weight")
        return QuantOutput(fq.codes.numpy(), fq.scale.numpy(), fq.zp.numpy(), fq.dequant.numpy())


def run_quant_vector(vec: Mapping[str, Json], adapter: QuantUniformAdapter) -> tuple[bool, str]:
    """Run one ``quant-uniform`` vector through ``adapter``."""
    inp = vec["input"]
    rows = inp["w"]
    w = f32_array([b for r in rows for b in r], (len(rows), len(rows[0]) if rows else 0))

    def call() -> Json:
        res = adapter.quantize(w, inp["bits"], inp["scheme"])
        codes, dq = np.asarray(res.codes), np.asarray(res.dequantized)
        for what, a in (("codes", codes), ("dequantized", dq)):
            if a.shape != w.shape:
                return {what: f"<shape {a.shape} returned for {w.shape}>"}
        return {"codes": int_list(codes), "scale": bit_patterns(res.scale), "zp": int_list(res.zp),
                "dequantized": [bit_patterns(r) for r in dq]}

    ok, diff = run_checked(vec, [w], getattr(adapter, "checks_input", True), call)
    if not ok:
        lines = diagnose(inp, vec["expected"], again(call))
        diff = "\n".join([*lines, f"adapter call: quantize(w=float32{w.shape} = input.w, bits={inp['bits']!r}, "
                                   f"scheme={inp['scheme']!r})", diff])
    return ok, diff


def diagnose(inp: Json, expected: Json, got: Json) -> list[str]:
    """Pin a failure to the first line of Algorithm Q it shows in (runner-level, whatever the
    vector): the scale (``KMR.quant.scale-floor`` if the expected scale is the floor 2^-23, else
    ``KMR.quant.scale``), then the zero point, then codes out of [qmin, qmax] (``KMR.quant.clamp``)
    or in range (``KMR.quant.rounding``), then the dequantized values (``KMR.quant.dequant``)."""
    if "error" in expected or not isinstance(got, dict) or "error" in got:
        return []
    keys = ("scale", "zp", "codes", "dequantized")
    if any(not isinstance(got.get(k), list) or len(got[k]) != len(expected[k]) for k in keys):
        return []
    for i, (se, sg) in enumerate(zip(expected["scale"], got["scale"], strict=True)):
        if se != sg:
            clause = "KMR.quant.scale-floor" if se == "34000000" or sg == "00000000" else "KMR.quant.scale"
            return [f"{clause}: group {i} has scale {sg}, expected {se}"]
    for i, (ze, zg) in enumerate(zip(expected["zp"], got["zp"], strict=True)):
        if ze != zg:
            return [f"KMR.quant.zero-point: group {i} has zero point {zg!r}, expected {ze}"]
    b, sym = inp["bits"], inp["scheme"] == "symmetric"
    qmin, qmax = (-(2 ** (b - 1) - 1), 2 ** (b - 1) - 1) if sym else (0, 2**b - 1)
    for i, (ce, cg) in enumerate(zip(expected["codes"], got["codes"], strict=True)):
        if ce != cg:
            bad = [c for c in cg if isinstance(c, int) and not qmin <= c <= qmax]
            if bad:
                return [f"KMR.quant.clamp: group {i} has codes {bad[:3]} outside [{qmin}, {qmax}]"]
            return [f"KMR.quant.rounding: group {i} has codes {cg}, expected {ce} (same scale and zero point)"]
    if expected["dequantized"] != got["dequantized"]:
        return ["KMR.quant.dequant: equal codes, scale and zero point, different dequantized values"]
    return []


def make_runner(adapter: QuantUniformAdapter) -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_quant_vector(vec, adapter)

    return run


reference_runner = make_runner(ReferenceQuant())
kernels_runner = make_runner(KernelQuant())
