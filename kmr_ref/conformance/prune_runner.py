"""Runner and adapters for ``kind: prune-magnitude`` vectors (``spec/methods/pruning.md``).

- :class:`ReferencePrune`: the reference rule ``kmr_ref.methods.pruning.MagnitudePruning`` applied to
  an ``nn.Module`` built from the vector's named tensors (``<path>.weight`` of a Linear for 2-D
  shapes, Conv1d/2d/3d for 3-/4-/5-D, registered in the vector's order), cost by ``nonzero_prunable``.
- :class:`KernelPrune`: the fast kernel ``kmr_ref.kernels.prune_select.prune_global`` on the bare
  tensors (k = floor(s * n) per group); it assumes validated input, so error vectors are skipped.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

from kmr_ref.conformance.adapters import (
    F32Array,
    NotSupported,
    PruneMagnitudeAdapter,
    PruneOutput,
    Scope,
    bit_patterns,
    decode_spelling,
    f32_array,
)
from kmr_ref.conformance.method_runner import run_checked
from kmr_ref.conformance.vectors import VectorRunner
from kmr_ref.methods.modules import default_prunable, ordered_parameters
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable

Json = Any
_MODULE_OF_NDIM: dict[int, type[nn.Module]] = {2: nn.Linear, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


def build_model(tensors: Sequence[tuple[str, F32Array]]) -> nn.Module:
    """A module tree whose prunable tensors (``KMR.prune.prunable-default``) are exactly ``tensors``,
    in that order (``KMR.prune.tensor-order``), sharing their memory (so a mutation would show)."""
    root = nn.Module()
    for name, arr in tensors:
        *path, leaf = name.split(".")
        if leaf != "weight" or not path:
            raise ValueError(f"tensor names must be '<module path>.weight', got {name!r}")
        if arr.ndim not in _MODULE_OF_NDIM:
            raise ValueError(f"{name}: a prunable weight has 2 to 5 dimensions, got shape {arr.shape}")
        parent = root
        for part in path[:-1]:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            child = parent._modules[part]
            assert child is not None
            parent = child
        cls = _MODULE_OF_NDIM[arr.ndim]
        mod = cls(1, 1, bias=False) if cls is nn.Linear else cls(1, 1, 1, bias=False)
        mod._parameters["weight"] = nn.Parameter(torch.from_numpy(arr), requires_grad=False)
        parent.add_module(path[-1], mod)
    order = [n for n, _ in ordered_parameters(root, default_prunable)]
    if order != [n for n, _ in tensors]:
        raise ValueError(f"the tensor order {[n for n, _ in tensors]} is not a module registration order: {order}")
    return root


class ReferencePrune:
    """The reference rule (``kmr_ref.methods.pruning``) on a module built from the tensors."""

    checks_input = True

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope,
              sparsity: Any) -> PruneOutput:
        model = build_model(tensors)
        rule = MagnitudePruning.for_model(model, scope)
        out = rule.apply(model, knob, sparsity)
        params = dict(ordered_parameters(out, rule.prunable))
        return PruneOutput([params[n].detach().numpy() for n, _ in tensors], nonzero_prunable(out, rule.prunable))


class KernelPrune:
    """``kmr_ref.kernels.prune_select.prune_global`` on the bare tensors; ``NotSupported`` if absent."""

    checks_input = False

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope,
              sparsity: Any) -> PruneOutput:
        try:
            prune_global = importlib.import_module("kmr_ref.kernels.prune_select").prune_global
        except (ImportError, AttributeError) as e:
            raise NotSupported(f"kmr_ref.kernels.prune_select.prune_global is not available: {e}") from e
        s = Fraction(repr(sparsity)) if isinstance(sparsity, float) else Fraction(sparsity)
        names = [n for n, _ in tensors]
        ts = [torch.from_numpy(a) for _, a in tensors]
        if knob != "sparsity":
            groups = [[names.index(knob.split("@", 1)[1])]]
        elif scope == "global":
            groups = [list(range(len(ts)))]
        else:
            groups = [[i] for i in range(len(ts))]
        out = list(ts)
        for g in groups:
            k = math.floor(s * sum(ts[i].numel() for i in g))
            for i, t in zip(g, prune_global([ts[i] for i in g], k), strict=True):
                out[i] = t
        return PruneOutput([t.numpy() for t in out], sum(int(torch.count_nonzero(t)) for t in out))


def run_prune_vector(vec: Mapping[str, Json], adapter: PruneMagnitudeAdapter) -> tuple[bool, str]:
    """Run one ``prune-magnitude`` vector through ``adapter``."""
    inp = vec["input"]
    tensors = [(t["name"], f32_array(t["values"], t["shape"])) for t in inp["tensors"]]

    def call() -> Json:
        res = adapter.prune(tensors, inp["knob"], inp["scope"], decode_spelling(inp["sparsity"]))
        if len(res.tensors) != len(tensors):
            return {"tensors": f"<{len(res.tensors)} tensors returned for {len(tensors)}>", "cost": res.cost}
        enc = []
        for (name, a), o in zip(tensors, res.tensors, strict=True):
            arr = np.asarray(o)
            if arr.shape != a.shape:
                return {"tensors": f"<{name}: shape {arr.shape} returned for {a.shape}>", "cost": res.cost}
            enc.append({"name": name, "values": bit_patterns(arr)})
        return {"tensors": enc, "cost": res.cost}

    return run_checked(vec, [a for _, a in tensors], getattr(adapter, "checks_input", True), call)


def make_runner(adapter: PruneMagnitudeAdapter) -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_prune_vector(vec, adapter)

    return run


reference_runner = make_runner(ReferencePrune())
kernels_runner = make_runner(KernelPrune())
