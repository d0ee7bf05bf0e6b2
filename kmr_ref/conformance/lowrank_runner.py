"""Runner and adapters for ``kind: lowrank-factors`` and ``kind: lowrank-svd`` (``spec/methods/lowrank.md``).

The vector's layers become an ``nn.Sequential`` (each layer at the index its ``name`` gives, a
``ReLU`` between consecutive layers): ``Linear``, ``Conv1d`` (with its ``conv`` geometry) or a
``LowRankFactors`` of two layers. An adapter is a function ``input -> output`` shaped like
``expected`` (as the ``alg1`` and ``prune-structured`` adapters); through ``--exec`` the input is
sent as is.

- ``lowrank-factors`` (exact): each layer carries the factors an SVD backend returned for its
  binary64 matrix (``svd``); the implementation uses them instead of its own SVD and everything
  after it is compared bit for bit. :func:`reference_factors` runs the reference rule
  ``LowRank`` with ``torch.linalg.svd`` answering the given factors for the matrices the rule asks
  about (the backend substituted, nothing else), so the sign convention, energy, applicability,
  split and cast exercised are the reference's own lines.
- ``lowrank-svd`` (tolerance): the implementation's own SVD; float tensors are compared entry by
  entry within the vector's tolerance (``vectors.compare_kind``), everything else exactly; with
  ``input.x`` the output also holds ``y``, the factorized model's output on x
  (``KMR.lowrank.equivalence``).

The runner calls the adapter twice (``KMR.rule.deterministic``) and checks that it left the input
unchanged (``KMR.rule.no-mutation``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kmr_ref.conformance.adapters import decode_spelling
from kmr_ref.conformance.lowrank_diagnose import diagnose
from kmr_ref.conformance.method_runner import call_encoded
from kmr_ref.conformance.vectors import TOLERANT_TENSORS, VectorRunner, compare_kind
from kmr_ref.core import KMRError
from kmr_ref.methods.lowrank import LowRank, LowRankFactors

Json = Any
LowRankAdapter = Callable[[Mapping[str, Json]], dict[str, Json]]
_DTYPES = {"float32": (torch.float32, ">f4"), "float64": (torch.float64, ">f8"), "int32": (torch.int32, ">i4")}


# --- decoding / encoding --------------------------------------------------------------------------

def tensor_of(t: Mapping[str, Json], shape: list[int] | None = None) -> torch.Tensor:
    """A ``{"shape", "dtype", "values"}`` tensor (bit patterns for floats, integers for int32)."""
    tdt, _ = _DTYPES[t["dtype"]]
    shp = tuple(t["shape"] if shape is None else shape)
    if t["dtype"] == "int32":
        return torch.tensor([int(v) for v in t["values"]], dtype=tdt).reshape(shp)
    width = 16 if t["dtype"] == "float64" else 8
    assert all(len(b) == width for b in t["values"]), "bit patterns of the wrong width"
    raw = bytes.fromhex("".join(t["values"]))
    arr = np.frombuffer(raw, dtype=_DTYPES[t["dtype"]][1]).astype(t["dtype"])
    return torch.from_numpy(arr.copy()).reshape(shp)


def bits_of(t: torch.Tensor) -> list[Json]:
    x = t.detach().cpu().contiguous()
    if x.dtype == torch.int32:
        return [int(v) for v in x.reshape(-1).tolist()]
    big = ">f8" if x.dtype == torch.float64 else ">f4"
    raw = x.numpy().astype(big).tobytes()
    w = 4 if big == ">f4" else 8
    return [raw[i:i + w].hex() for i in range(0, len(raw), w)]


def dtype_name(t: torch.Tensor) -> str:
    return {torch.float32: "float32", torch.float64: "float64", torch.int32: "int32"}[t.dtype]


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def build_layer(lay: Mapping[str, Json]) -> nn.Module:
    if lay["type"] == "LowRankFactors":
        return LowRankFactors(build_layer(lay["first"]), build_layer(lay["second"]))
    w = tensor_of(lay["weight"])
    bias = None if lay["bias"] is None else tensor_of({"dtype": lay["weight"]["dtype"], "values": lay["bias"],
                                                       "shape": [len(lay["bias"])]})
    mod: nn.Module
    if lay["type"] == "Linear":
        mod = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=bias is not None)
    elif lay["type"] == "Conv1d":
        g = lay["conv"]
        mod = nn.Conv1d(int(w.shape[1]), int(w.shape[0]), int(w.shape[2]), stride=tuple(g["stride"]),
                        padding=tuple(g["padding"]), dilation=tuple(g["dilation"]), bias=bias is not None)
    else:
        raise ValueError(f"unknown layer type {lay['type']!r}")
    mod.weight = _param(w)
    if bias is not None:
        mod.bias = _param(bias)
    return mod


def build_model(layers: list[Mapping[str, Json]]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, lay in enumerate(layers):
        if str(len(mods)) != lay["name"]:
            raise ValueError(f"layer {lay['name']!r} would sit at index {len(mods)} of the Sequential")
        mods.append(build_layer(lay))
        if i + 1 < len(layers):
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def encode_layer(mod: nn.Module, name: str | None = None) -> dict[str, Json]:
    head: dict[str, Json] = {} if name is None else {"name": name}
    if isinstance(mod, LowRankFactors):
        return {**head, "type": "LowRankFactors", "first": encode_layer(mod[0]), "second": encode_layer(mod[1])}
    assert isinstance(mod, (nn.Linear, nn.Conv1d))
    w = mod.weight
    d: dict[str, Json] = {**head, "type": type(mod).__name__,
                          "weight": {"shape": list(w.shape), "dtype": dtype_name(w), "values": bits_of(w)},
                          "bias": None if mod.bias is None else bits_of(mod.bias)}
    if isinstance(mod, nn.Conv1d):
        d["conv"] = {"stride": list(mod.stride), "padding": list(mod.padding),
                     "dilation": list(mod.dilation)}
    return d


def encode_model(out: nn.Module, layers: list[Mapping[str, Json]]) -> dict[str, Json]:
    res = [encode_layer(out.get_submodule(lay["name"]), lay["name"]) for lay in layers]
    params = sum(p.numel() for p in out.parameters())  # KMR.meter.params
    return {"layers": res, "params": int(params)}


# --- the reference, with the SVD backend substituted by the vector's factors ----------------------

def _weight(m: nn.Module) -> torch.Tensor:
    assert isinstance(m, (nn.Linear, nn.Conv1d))
    return m.weight.detach()


def _given(lay: Mapping[str, Json]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    svd = lay.get("svd")
    if svd is None:
        return None
    mat = build_layer(lay)
    with torch.no_grad():
        if isinstance(mat, LowRankFactors):
            a = _weight(mat[0]).to(torch.float64)
            b = _weight(mat[1]).to(torch.float64)
            w = b @ a
        else:
            wt = _weight(mat)
            w = wt.reshape(wt.shape[0], -1).to(torch.float64)
    m, n = int(w.shape[0]), int(w.shape[1])
    k = min(m, n)
    u = tensor_of({"dtype": "float64", "values": svd["u"]}, [m, k])
    s = tensor_of({"dtype": "float64", "values": svd["s"]}, [k])
    vh = tensor_of({"dtype": "float64", "values": svd["vh"]}, [k, n])
    return w, (u, s, vh)


@contextlib.contextmanager
def backend_factors(layers: list[Mapping[str, Json]], fallback: bool = False) -> Iterator[None]:
    """``torch.linalg.svd`` answers the vector's factors for each layer's matrix (the matrix it is
    asked about, in binary64: equal to the layer's reshaped weight, or close to a LowRankFactors'
    product B A), in the dtype it is asked in. Any other matrix is an error of the vector, or, with
    ``fallback`` (an audited third-party adapter), goes to torch's own SVD."""
    table = [g for lay in layers if (g := _given(lay)) is not None]
    real = torch.linalg.svd

    def svd(a: torch.Tensor, full_matrices: bool = True, **kw: Any) -> Any:
        best = None
        a64 = a.detach().to(torch.float64)
        for w, f in table:
            if w.shape == a64.shape and w.numel() and a.dtype in (torch.float32, torch.float64):
                err = float((w - a64).abs().max())
                if err <= 1e-6 * (1.0 + float(w.abs().max())) and (best is None or err < best[0]):
                    best = (err, f)
        if best is None:
            if fallback:
                return real(a, full_matrices=full_matrices, **kw)
            raise RuntimeError(f"the vector gives no factors for a {tuple(a.shape)} matrix")
        return tuple(x.clone().to(a.dtype) for x in best[1])

    torch.linalg.svd = svd
    try:
        yield
    finally:
        torch.linalg.svd = real


def _apply(inp: Mapping[str, Json]) -> dict[str, Json]:
    model = build_model(inp["layers"])
    try:
        rl = inp.get("rule_layers")
        inc, exc = inp.get("include"), inp.get("exclude", ())
        rule = LowRank(tuple(rl), inc, exc) if rl is not None else LowRank.for_model(model, include=inc, exclude=exc)
        value = decode_spelling(inp["value"])
        out = rule.apply(model, inp["knob"], value)
    except KMRError as e:
        return {"error": e.clause}
    res = encode_model(out, inp["layers"])
    if "x" in inp:  # KMR.lowrank.equivalence: the factorized model on the vector's inputs
        with torch.no_grad():
            y = out(tensor_of(inp["x"]))
            res["y"] = {"shape": list(y.shape), "dtype": "float32", "values": bits_of(y)}
    return res


def reference_factors(inp: Mapping[str, Json]) -> dict[str, Json]:
    """``lowrank-factors``: the reference rule, the backend's factors taken from the vector."""
    with backend_factors(inp["layers"]):
        return _apply(inp)


def reference_svd(inp: Mapping[str, Json]) -> dict[str, Json]:
    """``lowrank-svd``: the reference rule with its own SVD (``torch.linalg.svd`` in binary64)."""
    return _apply(inp)


# --- the runner -----------------------------------------------------------------------------------

def run_lowrank_vector(vec: Mapping[str, Json], adapter: LowRankAdapter, kind: str) -> tuple[bool, str]:
    inp = vec["input"]
    before = copy.deepcopy(inp)

    def call() -> Json:  # an error naming a clause is an answer; any other is a failure
        return call_encoded(lambda: adapter(inp))

    got = call()
    again = call()
    diffs: list[str] = []
    if inp != before:
        diffs.append("KMR.rule.no-mutation: the implementation modified the input it was given")
    if again != got:
        diffs.append("KMR.rule.deterministic: a second call on the same input gave a different result")
    rest = compare_kind(kind, vec["expected"], got, vec.get("tolerance"))
    if rest:
        diffs += diagnose(inp, vec["expected"], got, vec.get("tolerance") if kind in TOLERANT_TENSORS else None)
    return not (diffs or rest), "\n".join(diffs + rest)


def make_runner(adapter: LowRankAdapter, kind: str = "lowrank-factors") -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_lowrank_vector(vec, adapter, kind)

    return run


def make_svd_runner(adapter: LowRankAdapter) -> VectorRunner:
    return make_runner(adapter, "lowrank-svd")


factors_runner = make_runner(reference_factors)
svd_runner = make_svd_runner(reference_svd)
