"""Unstructured magnitude pruning (paper §5.1), as ``spec/methods/pruning.md`` states it.

Clarity first: the global rule concatenates |w| and sorts it. ``kmr_ref.kernels`` holds the fast
threshold-select kernel, which the tests prove bit-for-bit equal to this reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import torch
from torch import nn

from kmr_ref.core.errors import KnobDomainError
from kmr_ref.core.knobs import Knob, KnobValue, find_knob, real_knob
from kmr_ref.core.meters import CostMeter, record_derivation
from kmr_ref.core.rules import current_scope
from kmr_ref.methods.meters import NonzeroCounter
from kmr_ref.methods.modules import (
    Empty,
    Patterns,
    PrunableFilter,
    TreeIndex,
    as_patterns,
    check_float_finite,
    copy_paths,
    default_prunable,
    ordered_parameters,
    replace_parameter,
    selected_parameters,
    tree_index,
)
from kmr_ref.methods.registry import lookup

Scope = Literal["global", "per-tensor"]
SPARSITY = "sparsity"
GRID_STEP = Fraction(1, 20)


def prune_count(s: Fraction | int, n: int) -> int:
    """``KMR.prune.count``: k = floor(s * n), in exact rational arithmetic."""
    q = Fraction(s)
    return (q.numerator * n) // q.denominator


def magnitude_masks(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """``KMR.prune.tie-break``: keep-masks that prune the k entries that come first in the order
    (|w|, tensor index in ``tensors``, flat row-major index) — ascending, a stable sort.

    |w| is compared exactly: every float dtype converts to float64 without rounding."""
    if not tensors:
        return []
    flat = torch.cat([t.detach().reshape(-1).abs().to(torch.float64) for t in tensors])
    order = torch.sort(flat, stable=True).indices  # KMR.prune.tie-break
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order[:k]] = False  # KMR.prune.count
    return [m.reshape(t.shape) for m, t in zip(torch.split(keep, [t.numel() for t in tensors]), tensors, strict=True)]


def apply_mask(w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``KMR.prune.zero-value``: pruned entries become +0.0; kept entries keep their exact bits."""
    return torch.where(keep, w.detach(), torch.zeros((), dtype=w.dtype, device=w.device))


@dataclass(frozen=True)
class MagnitudePruning:
    """The magnitude-pruning rule (``KMR.prune.*``).

    Knobs: ``sparsity`` (all prunable tensors; ``scope`` says whether the count is global or per
    tensor) and, for each prunable tensor name in ``tensor_names``, ``sparsity@<name>``
    (``KMR.prune.per-tensor-knob``). Build with :meth:`for_model` to get the per-tensor knobs.
    ``include`` / ``exclude``: glob patterns on qualified parameter names (``KMR.select.include``,
    ``KMR.select.exclude``); ``include=None`` keeps the ``prunable`` filter's choice.
    """

    scope: Scope = "global"
    tensor_names: tuple[str, ...] = ()
    prunable: PrunableFilter = field(default=default_prunable)
    kernel: bool = False  # True: the radix-select kernel (kmr_ref.kernels), bit-equal, O(chunk) memory
    include: Patterns | None = None
    exclude: Patterns = ()
    empty: Empty = "skip"  # KMR.prune.empty; "refuse": spec 0.1.0 (its frozen vectors)
    _knobs: tuple[Knob, ...] = field(init=False, repr=False, compare=False)
    _knob_table: dict[str, Knob] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", as_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude, "exclude") or ())
        # KMR.prune.knob: s in [0, 1], a fraction of ALL prunable entries; policy grid 1/20. The knob
        # table is built once (it depends on tensor_names only)
        ks = (real_knob(SPARSITY, 0, 1, GRID_STEP), *(real_knob(f"{SPARSITY}@{n}", 0, 1, GRID_STEP)
                                                      for n in self.tensor_names))
        table: dict[str, Knob] = {}
        for k in ks:
            table.setdefault(k.name, k)
        object.__setattr__(self, "_knobs", ks)
        object.__setattr__(self, "_knob_table", table)

    @classmethod
    def for_model(cls, model: nn.Module, scope: Scope = "global",
                  prunable: PrunableFilter = default_prunable, kernel: bool = False, *,
                  include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  empty: Empty = "skip") -> MagnitudePruning:
        inc, exc = as_patterns(include, "include"), as_patterns(exclude, "exclude") or ()
        names = tuple(n for n, _ in selected_parameters(model, prunable, inc, exc, "pruning", empty))
        return cls(scope, names, prunable, kernel, inc, exc, empty)

    def knobs(self) -> Sequence[Knob]:
        return list(self._knobs)

    def targets(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        """``KMR.prune.tensor-order`` and ``KMR.prune.prunable-default``, narrowed by ``include`` /
        ``exclude``; a tensor with zero entries is not in scope (``KMR.prune.empty``)."""
        return selected_parameters(model, self.prunable, self.include, self.exclude, "pruning", self.empty)

    def _analysis(self, model: nn.Module) -> tuple[TreeIndex, list[tuple[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """The model's tree index and targets (in order, and by name): one support check and one
        walk per call, or per model object inside an analysis scope (``KMR.rule.analysis-scope``)."""
        idx = tree_index(model)  # KMR.rule.unsupported-module, KMR.rule.subnormals
        scope = current_scope()
        key = ("prune-targets", id(self))
        if scope is not None:
            hit = scope.get(key, model)
            if isinstance(hit, tuple) and hit[0] is self:
                return idx, hit[1], hit[2]
        targets = selected_parameters(model, self.prunable, self.include, self.exclude, "pruning", self.empty,
                                      checked=True)
        by_name = dict(targets)
        if scope is not None:
            scope.put(key, model, (self, targets, by_name))
        return idx, targets, by_name

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        kn = self._knob_table.get(knob) or find_knob(self._knobs, knob)  # KMR.knob.unknown
        s = Fraction(kn.check(value))  # KMR.knob.domain
        idx, targets, by_name = self._analysis(model)
        if knob != SPARSITY:
            name = knob.split("@", 1)[1]
            if name not in by_name:
                raise KnobDomainError("KMR.knob.unknown", f"the model has no prunable tensor {name!r}")
            targets = [(name, by_name[name])]
        for n, t in targets:
            check_float_finite(n, t, "KMR.prune")  # KMR.prune.nonfinite, KMR.prune.dtype (.empty if "refuse")
        # KMR.prune.global (one group) or KMR.prune.per-tensor (one group per tensor)
        glob = knob == SPARSITY and self.scope == "global"
        groups: list[list[tuple[str, torch.Tensor]]] = [targets] if glob else [[nt] for nt in targets]
        changed: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for g in groups:
            tensors = [t for _, t in g]
            k = prune_count(s, sum(t.numel() for t in tensors))  # KMR.prune.count
            for (n, t), new in zip(g, self._prune(tensors, k), strict=True):
                if new is not t:  # untouched tensors stay shared
                    changed.append((n, t, new))
        # KMR.rule.no-mutation, KMR.rule.path-copy: copy only the modules on the paths to the holders
        out, copies = copy_paths(idx, [mod for _, t, _ in changed for mod, _ in idx.holders[id(t)]])
        for _, t, new in changed:
            replace_parameter(idx, copies, t, new)  # every holder: tied weights stay tied
        record_derivation(out, model, [n for n, _, _ in changed])  # KMR.meter.delta
        return out

    def _prune(self, tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
        """The pruned tensors; an input with nothing pruned is returned as the same object."""
        if self.kernel:  # the fast kernel, found through the registry (methods never import kernels)
            out: list[torch.Tensor] = lookup("prune_global")(tensors, k)
            return out  # == the reference below: tests/test_kernels.py
        return [t if bool(keep.all()) else apply_mask(t, keep)
                for t, keep in zip(tensors, magnitude_masks(tensors, k), strict=True)]


def nonzero_prunable(model: nn.Module, prunable: PrunableFilter = default_prunable) -> int:
    """``KMR.prune.cost-meter``: the number of nonzero prunable entries (-0.0 counts as zero)."""
    return sum(int(torch.count_nonzero(t)) for _, t in ordered_parameters(model, prunable))


def prunable_nonzero_meter(prunable: PrunableFilter = default_prunable) -> CostMeter[nn.Module]:
    """``KMR.prune.cost-meter`` as a cost meter (nonzero *prunable* entries; compare
    ``kmr_ref.methods.meters.nonzero_meter``, which counts every parameter: ``KMR.meter.nonzeros``).
    Incremental inside an analysis scope (``KMR.meter.delta``): equal to :func:`nonzero_prunable`."""
    return CostMeter("prunable_nonzeros", NonzeroCounter(lambda m: ordered_parameters(m, prunable), prunable, True),
                     unit="entries")
