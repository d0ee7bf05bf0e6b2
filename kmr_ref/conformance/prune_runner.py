"""Runner and adapters for ``kind: prune-magnitude`` vectors (``spec/methods/pruning.md``).

- :class:`ReferencePrune`: the reference rule ``kmr_ref.methods.pruning.MagnitudePruning`` applied to
  an ``nn.Module`` built from the vector's named tensors (``<path>.weight`` of a Linear for 2-D
  shapes, Conv1d/2d/3d for 3-/4-/5-D, registered in the vector's order), cost by ``nonzero_prunable``.
- :class:`KernelPrune`: the fast kernel ``kmr_ref.kernels.prune_select.prune_global`` on the bare
  tensors (k = floor(s * n) per group); it assumes validated input, so error vectors are skipped.
"""

from __future__ import annotations

import importlib
import json
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
    exact_cost,
    f32_array,
    tree_of,
    tree_order,
)
from kmr_ref.conformance.method_runner import again, run_checked
from kmr_ref.conformance.vectors import VectorRunner
from kmr_ref.methods.modules import default_prunable, ordered_parameters
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable

Json = Any
_MODULE_OF_NDIM: dict[int, type[nn.Module]] = {2: nn.Linear, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


def build_model(tensors: Sequence[tuple[str, F32Array]], tree: Sequence[Mapping[str, Any]] | None = None) -> nn.Module:
    """A module tree whose prunable tensors (``KMR.prune.prunable-default``) are exactly ``tensors``,
    registered as ``tree`` says (default: in the order of ``tensors``), sharing their memory (so a
    mutation would show)."""
    arrays = dict(tensors)
    if tree is None:
        tree = tree_of([n for n, _ in tensors], [a.ndim for _, a in tensors])

    def build(nodes: Sequence[Mapping[str, Any]], prefix: str) -> nn.Module:
        mod = nn.Module()
        for node in nodes:
            path = prefix + str(node["name"])
            if "children" in node:
                mod.add_module(str(node["name"]), build(node["children"], path + "."))
                continue
            arr = arrays[path + ".weight"]
            cls = _MODULE_OF_NDIM.get(arr.ndim)
            if cls is None or cls.__name__ != node["type"]:
                raise ValueError(f"{path}: a {node['type']} cannot hold a weight of shape {arr.shape}")
            leaf = cls(1, 1, bias=False) if cls is nn.Linear else cls(1, 1, 1, bias=False)
            leaf._parameters["weight"] = nn.Parameter(torch.from_numpy(arr), requires_grad=False)
            mod.add_module(str(node["name"]), leaf)
        return mod

    root = build(tree, "")
    order = [n for n, _ in ordered_parameters(root, default_prunable)]
    if sorted(order) != sorted(arrays):
        raise ValueError(f"the module tree holds {order}, the vector lists {sorted(arrays)}")
    return root


class ReferencePrune:
    """The reference rule (``kmr_ref.methods.pruning``) on a module built from the tensors."""

    checks_input = True

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope,
              sparsity: Any, tree: Sequence[Mapping[str, Any]]) -> PruneOutput:
        model = build_model(tensors, tree)
        rule = MagnitudePruning.for_model(model, scope)
        out = rule.apply(model, knob, sparsity)
        params = dict(ordered_parameters(out, rule.prunable))
        return PruneOutput([params[n].detach().numpy() for n, _ in tensors], nonzero_prunable(out, rule.prunable))


class KernelPrune:
    """``kmr_ref.kernels.prune_select.prune_global`` on the bare tensors; ``NotSupported`` if absent."""

    checks_input = False

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope,
              sparsity: Any, tree: Sequence[Mapping[str, Any]]) -> PruneOutput:
        try:
            prune_global = importlib.import_module("kmr_ref.kernels.prune_select").prune_global
        except (ImportError, AttributeError) as e:
            raise NotSupported(f"kmr_ref.kernels.prune_select.prune_global is not available: {e}") from e
        s = Fraction(repr(sparsity)) if isinstance(sparsity, float) else Fraction(sparsity)
        given = [n for n, _ in tensors]
        names = tree_order(tree)  # KMR.prune.tensor-order: the kernel takes tensors in that order
        arrays = dict(tensors)
        ts = [torch.from_numpy(arrays[n]) for n in names]
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
        res = dict(zip(names, out, strict=True))
        return PruneOutput([res[n].numpy() for n in given], sum(int(torch.count_nonzero(t)) for t in out))


def describe_call(tensors: Sequence[tuple[str, F32Array]], knob: str, scope: str, sparsity: Any,
                  tree: Json) -> str:
    """The adapter call as the runner made it (shown with a failure, so it reproduces outside the kit)."""
    ts = ", ".join(f"({n!r}, float32{tuple(a.shape)} = input.tensors[{i}])" for i, (n, a) in enumerate(tensors))
    return (f"adapter call: prune(tensors=[{ts}], knob={knob!r}, scope={scope!r}, sparsity={sparsity!r}, "
            f"tree={json.dumps(tree)})")


def diagnose(inp: Json, expected: Json, got: Json) -> list[str]:
    """Runner-level checks that pin a failure to a clause whatever vector shows it: every returned
    entry is its input's bit pattern or +0.0 (``KMR.prune.zero-value``); the number of nonzero
    entries left matches the expected output's (``KMR.prune.count``: which entries is the vector's
    own clause, how many is always k)."""
    if not isinstance(got, dict) or not isinstance(got.get("tensors"), list) or "tensors" not in expected:
        return []
    out: list[str] = []
    for t, g in zip(inp["tensors"], got["tensors"], strict=False):
        bad = [(j, b) for j, (a, b) in enumerate(zip(t["values"], g.get("values", []), strict=False))
               if b not in (a, "00000000")]
        if bad:
            j, b = bad[0]
            out.append(f"KMR.prune.zero-value: {t['name']}[{j}] became {b}, neither its input {t['values'][j]} "
                       f"nor +0.0 (00000000); {len(bad)} such entries")
            break
    if not out:
        def nonzeros(ts: Json) -> int:
            return sum(b not in ("00000000", "80000000") for x in ts for b in x.get("values", []))
        ne, ng = nonzeros(expected["tensors"]), nonzeros(got["tensors"])
        if ne != ng:
            out.append(f"KMR.prune.count: {ng} nonzero entries are left, expected {ne} (k = floor(s * n) "
                       "entries are pruned, zeros included)")
    return out


def run_prune_vector(vec: Mapping[str, Json], adapter: PruneMagnitudeAdapter) -> tuple[bool, str]:
    """Run one ``prune-magnitude`` vector through ``adapter``."""
    inp = vec["input"]
    tensors = [(t["name"], f32_array(t["values"], t["shape"])) for t in inp["tensors"]]
    tree = inp.get("tree") or tree_of([n for n, _ in tensors], [a.ndim for _, a in tensors])
    sparsity = decode_spelling(inp["sparsity"])
    problems: list[str] = []

    def call() -> Json:
        res = adapter.prune(tensors, inp["knob"], inp["scope"], sparsity, tree)
        cost, problem = exact_cost(res.cost)
        if problem and problem not in problems:
            problems.append(problem)
        if len(res.tensors) != len(tensors):
            return {"tensors": f"<{len(res.tensors)} tensors returned for {len(tensors)}>", "cost": cost}
        enc = []
        for (name, a), o in zip(tensors, res.tensors, strict=True):
            arr = np.asarray(o)
            if arr.shape != a.shape:
                return {"tensors": f"<{name}: shape {arr.shape} returned for {a.shape}>", "cost": cost}
            enc.append({"name": name, "values": bit_patterns(arr)})
        return {"tensors": enc, "cost": cost}

    ok, diff = run_checked(vec, [a for _, a in tensors], getattr(adapter, "checks_input", True), call)
    if not ok:
        problems += diagnose(inp, vec["expected"], again(call))
    if problems:  # KMR.meter.cost-exact is the runner's own check: blamed on its clause
        diff = "\n".join([*problems, *(x for x in diff.splitlines() if ".cost:" not in x)])
        ok = False
    if not ok:
        diff = describe_call(tensors, inp["knob"], inp["scope"], sparsity, tree) + "\n" + diff
    return ok, diff


def make_runner(adapter: PruneMagnitudeAdapter) -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_prune_vector(vec, adapter)

    return run


reference_runner = make_runner(ReferencePrune())
kernels_runner = make_runner(KernelPrune())
