"""LoRA, low-rank adaptation (paper §5, parameter-efficient architectures), as
``spec/methods/lora.md`` states it.

T(M, ``rank``, r) freezes M's weights, wraps each target ``nn.Linear`` as :class:`LoRALinear`
(y = W x + b + B A x, A seeded, B = 0) and trains A and B on the rule's task split.
:func:`merge` folds B A back into dense weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from kmr_ref.core.errors import RuleInputError
from kmr_ref.core.knobs import IntRange, Knob, KnobValue, find_knob
from kmr_ref.core.meters import CostMeter
from kmr_ref.methods.meters import parameter_count
from kmr_ref.methods.modules import clone_tree, set_submodule
from kmr_ref.methods.training import (
    check_model,
    check_seed,
    check_steps,
    deterministic,
    fit,
    freeze,
    frozen_copy,
)

RANK = "rank"
MAX_RANK = 64


class LoRALinear(nn.Module):
    """``KMR.lora.adapter``: ``base(x) + F.linear(F.linear(x, A), B)``, A of shape (r, in),
    B of shape (out, r); the base layer's parameters are frozen."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B)
        return y


_frozen_copy = frozen_copy


def strip_adapters(model: nn.Module) -> nn.Module:
    """``KMR.lora.readapt``: a clone with every :class:`LoRALinear` replaced by its base layer."""
    out = clone_tree(model)
    if isinstance(out, LoRALinear):
        return out.base
    for name, mod in list(out.named_modules()):
        if isinstance(mod, LoRALinear) and name:
            set_submodule(out, name, mod.base)
    return out


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """``KMR.lora.targets``: every module of exact type ``nn.Linear``, in ``named_modules`` order."""
    return tuple(n for n, m in model.named_modules() if type(m) is nn.Linear and n)


@dataclass(frozen=True, eq=False)
class LoRA:
    """The LoRA rule (``KMR.lora.*``) on the task split ``(x, y)``; knob ``rank`` in 1..max_rank;
    ``targets`` are module names (None: :func:`default_targets` of the model)."""

    x: torch.Tensor
    y: torch.Tensor
    targets: Sequence[str] | None = None
    steps: int = 300
    seed: int = 0
    max_rank: int = MAX_RANK

    def __post_init__(self) -> None:
        check_steps(self.steps, "KMR.lora.settings")
        check_seed(self.seed, "KMR.lora.settings")
        if isinstance(self.max_rank, bool) or not isinstance(self.max_rank, int) or self.max_rank < 1:
            raise RuleInputError("KMR.lora.settings", f"max_rank must be an integer >= 1, got {self.max_rank!r}")
        if self.targets is not None:
            if isinstance(self.targets, str) or not all(isinstance(t, str) for t in self.targets):
                raise RuleInputError("KMR.lora.targets", f"targets must be a sequence of module names, "
                                     f"got {self.targets!r}")
            object.__setattr__(self, "targets", tuple(self.targets))
        if len(self.x) != len(self.y) or len(self.y) == 0 or self.y.dtype != torch.int64:
            raise RuleInputError("KMR.lora.settings", "x and y must be non-empty, of one length, y int64 labels")

    def knobs(self) -> Sequence[Knob]:
        # KMR.lora.rank: r >= 1; a smaller rank trains fewer parameters (more aggressive)
        return [Knob(RANK, IntRange(1, self.max_rank), "decreasing")]

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        r = find_knob(self.knobs(), knob).check(value)  # KMR.knob.domain (KMR.knob.domain-int for r <= 0)
        assert isinstance(r, int)
        check_model(model, "KMR.lora.input")
        base = _frozen_copy(strip_adapters(model))  # KMR.lora.readapt, KMR.lora.freeze
        names = default_targets(base) if self.targets is None else tuple(self.targets)
        mods = dict(base.named_modules())
        for n in names:  # KMR.lora.targets: every name must be an nn.Linear of the model
            if n not in mods or type(mods[n]) is not nn.Linear:
                kinds = {k: type(m).__name__ for k, m in mods.items() if k}
                raise RuleInputError("KMR.lora.targets", f"target {n!r} is not an nn.Linear of the model "
                                     f"(modules: {kinds})")
        if not names:
            raise RuleInputError("KMR.lora.targets", "the model has no nn.Linear module to adapt")
        with deterministic(self.seed):
            adapters: list[nn.Parameter] = []
            for n in names:  # KMR.lora.init: A ~ U(-1/sqrt(in), 1/sqrt(in)) in target order, B = 0
                lin = mods[n]
                assert isinstance(lin, nn.Linear)
                bound = 1.0 / math.sqrt(lin.in_features)
                a = torch.empty(r, lin.in_features, dtype=lin.weight.dtype).uniform_(-bound, bound)
                b = torch.zeros(lin.out_features, r, dtype=lin.weight.dtype)
                wrapped = LoRALinear(lin, a, b)
                if n:
                    set_submodule(base, n, wrapped)
                adapters += [wrapped.lora_A, wrapped.lora_B]
            base.train()
            x, y = self.x, self.y

            def loss_of(idx: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(base(x[idx]), y[idx], reduction="mean")  # KMR.lora.loss

            fit(adapters, loss_of, len(y), self.steps, self.seed)  # KMR.train.order
        return freeze(base)


def adapters(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def trained_parameters(model: nn.Module) -> int:
    """``KMR.lora.cost-meter``: the parameters fine-tuning trains: Σ r·(in + out) over the adapters
    of an adapted model; every parameter (``KMR.meter.params``) of a model without adapters (full
    fine-tuning)."""
    ads = adapters(model)
    if not ads:
        return parameter_count(model)
    return sum(int(m.lora_A.numel() + m.lora_B.numel()) for _, m in ads)


def trained_parameter_meter() -> CostMeter[nn.Module]:
    return CostMeter("trained_params", trained_parameters, "parameters")


def adapter_storage_bits(model: nn.Module) -> int:
    """``KMR.lora.storage``: the bits of the adapter file: Σ numel · dtype bits over A and B."""
    return sum(int(p.numel()) * p.dtype.itemsize * 8 for _, m in adapters(model) for p in (m.lora_A, m.lora_B))


def merge(model: nn.Module) -> nn.Module:
    """``KMR.lora.merge``: every :class:`LoRALinear` becomes an ``nn.Linear`` with weight
    W + B @ A (computed in the weight's dtype) and the base bias; nothing else changes."""
    out = clone_tree(model)
    for n, m in adapters(out):
        lin = nn.Linear(m.base.in_features, m.base.out_features, bias=m.base.bias is not None,
                        dtype=m.base.weight.dtype, device=m.base.weight.device)
        with torch.no_grad():
            lin.weight = nn.Parameter(m.base.weight.detach() + m.lora_B.detach() @ m.lora_A.detach(),
                                      requires_grad=False)  # KMR.lora.merge
            if m.base.bias is not None:
                lin.bias = nn.Parameter(m.base.bias.detach(), requires_grad=False)
        lin.train(m.training)
        if n:
            set_submodule(out, n, lin)
        else:
            return lin
    return out
