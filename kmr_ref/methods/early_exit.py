"""Early exit (conditional computation), as ``spec/methods/early_exit.md`` states it.

T(M, ``threshold``, θ) attaches exit heads after the rule's ``positions`` of a Sequential backbone
M (trained with the backbone frozen), or, on a model that already has those heads, only sets the
threshold. A sample leaves at the first head whose softmax confidence is > θ. The cost meter is
the expected MACs per sample over an evaluation set, an exact rational.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.knobs import Knob, KnobValue, find_knob, real_knob
from kmr_ref.core.meters import CostMeter
from kmr_ref.methods.modules import clone_tree
from kmr_ref.methods.training import check_model, check_seed, check_steps, deterministic, fit, freeze

THRESHOLD = "threshold"
_COUNTED = (nn.Conv2d, nn.Linear)


def exceeds(conf: torch.Tensor, theta: Fraction) -> torch.Tensor:
    """``KMR.exit.rule``: ``conf > θ`` decided exactly for every entry (float32 confidences read as
    their exact binary value, θ an exact rational): with t the binary64 nearest θ, no binary64
    lies strictly between θ and t, so conf > θ ⟺ conf ≥ t when t > θ, else conf > t."""
    c = conf.to(torch.float64)
    t = float(theta)
    return c >= t if Fraction(t) > theta else c > t


class EarlyExit(nn.Module):
    """``KMR.exit.model``: a Sequential ``backbone``, exit ``heads`` (``heads[str(p)]`` reads the
    output of backbone layer p), ``positions`` ascending, and the threshold θ (an exact rational)."""

    def __init__(self, backbone: nn.Sequential, heads: nn.ModuleDict, positions: tuple[int, ...],
                 threshold: Fraction) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.positions = positions
        self.threshold = threshold

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every exit in order, the backbone's own output last."""
        outs: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.backbone):
            h = layer(h)
            if i in self.positions:
                outs.append(self.heads[str(i)](h))
        return [*outs, h]

    def exits(self, x: torch.Tensor) -> torch.Tensor:
        """``KMR.exit.rule``: per sample, the index of the exit it leaves at (len(positions): the end)."""
        outs = self.stages(x)
        n = x.shape[0]
        chosen = torch.full((n,), len(outs) - 1, dtype=torch.int64)
        for j in reversed(range(len(outs) - 1)):  # the first confident head wins
            conf = F.softmax(outs[j].detach().float(), dim=1).max(dim=1).values
            chosen = torch.where(exceeds(conf, self.threshold), torch.tensor(j), chosen)
        return chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # KMR.exit.forward: every stage runs for the whole batch; each sample takes its exit's logits
        outs = self.stages(x)
        chosen = self.exits(x)
        stacked = torch.stack(outs, dim=0)  # (exits, N, classes)
        return stacked[chosen, torch.arange(x.shape[0])]


def _check_backbone(model: nn.Module) -> nn.Sequential:
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        raise RuleInputError("KMR.exit.backbone", f"early exit needs an nn.Sequential backbone of >= 2 layers, "
                             f"got {type(model).__name__}")
    for i, layer in enumerate(model):
        own = list(layer.parameters())
        if own and not isinstance(layer, _COUNTED):
            raise RuleInputError("KMR.exit.backbone", f"layer {i} ({type(layer).__name__}) has parameters but is "
                                 "neither Conv2d nor Linear (its MACs have no stated formula)")
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise RuleInputError("KMR.exit.backbone", f"layer {i}: grouped convolutions are not supported")
    return model


def check_exit_positions(model: nn.Module, positions: Sequence[int]) -> nn.Sequential:
    """``KMR.exit.backbone`` and ``KMR.exit.positions`` for ``model`` (or an ``EarlyExit``'s
    backbone): the backbone, when every position p has a layer after it (0 <= p <= L - 2)."""
    backbone = _check_backbone(model.backbone if isinstance(model, EarlyExit) else model)
    check_model(backbone, "KMR.exit.backbone")
    for p in positions:  # KMR.exit.positions: a position after which a layer still follows
        if not 0 <= p < len(backbone) - 1:
            last = len(backbone) - 1
            raise KnobDomainError("KMR.exit.positions", f"exit position {p} does not exist: the backbone has "
                                  f"layers 0..{last}, and a head goes after layer 0..{last - 1}")
    return backbone


@dataclass(frozen=True, eq=False)
class EarlyExitRule:
    """The early-exit rule (``KMR.exit.*``): knob ``threshold`` θ ∈ [0, 1] (grid 1/20); exit
    ``positions`` (backbone layer indices) and the head-training split ``(x, y)`` are settings."""

    x: torch.Tensor
    y: torch.Tensor
    positions: Sequence[int] = (1, 4)
    steps: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        check_steps(self.steps, "KMR.exit.settings")
        check_seed(self.seed, "KMR.exit.settings")
        pos = tuple(self.positions)
        if not pos or any(isinstance(p, bool) or not isinstance(p, int) for p in pos) or list(pos) != sorted(set(pos)):
            raise KnobDomainError("KMR.exit.positions", f"positions must be distinct ascending ints, got {pos!r}")
        object.__setattr__(self, "positions", pos)
        if len(self.x) != len(self.y) or len(self.y) == 0 or self.y.dtype != torch.int64:
            raise RuleInputError("KMR.exit.settings", "x and y must be non-empty, of one length, y int64 labels")

    def knobs(self) -> Sequence[Knob]:
        # KMR.exit.knob: a lower threshold exits earlier (cost falls): direction decreasing
        return [real_knob(THRESHOLD, 0, 1, Fraction(1, 20), "decreasing")]

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        theta = Fraction(find_knob(self.knobs(), knob).check(value))  # KMR.knob.domain
        if isinstance(model, EarlyExit) and model.positions == self.positions:
            # KMR.exit.reuse: the heads stay (shared), only θ changes
            return EarlyExit(model.backbone, model.heads, model.positions, theta)
        backbone = check_exit_positions(model, self.positions)
        frozen = clone_tree(backbone).eval()  # KMR.rule.no-mutation: the caller's flags stay
        assert isinstance(frozen, nn.Sequential)
        with deterministic(self.seed):
            feats: dict[int, torch.Tensor] = {}
            with torch.no_grad():  # KMR.exit.heads: features of the frozen backbone, eval mode
                h = self.x
                for i, layer in enumerate(frozen):
                    h = layer(h)
                    if i in self.positions:
                        feats[i] = h.flatten(1)
                n_classes = h.shape[1]
            heads = nn.ModuleDict()
            for p in self.positions:  # KMR.exit.heads: Flatten + Linear, default init in position order
                heads[str(p)] = nn.Sequential(nn.Flatten(), nn.Linear(feats[p].shape[1], n_classes))
            heads.train()
            y = self.y

            def loss_of(idx: torch.Tensor) -> torch.Tensor:
                # KMR.exit.heads: the sum over heads of each head's mean cross-entropy
                return sum((F.cross_entropy(heads[str(p)](feats[p][idx]), y[idx], reduction="mean")
                            for p in self.positions), torch.zeros(()))

            fit(list(heads.parameters()), loss_of, len(y), self.steps, self.seed)  # KMR.train.order
        freeze(heads)
        return EarlyExit(clone_tree(backbone), heads, self.positions, theta)  # type: ignore[arg-type]


def layer_macs(layer: nn.Module, out: torch.Tensor) -> int:
    """``KMR.exit.macs``: Conv2d: C_out·C_in·k_h·k_w·H_out·W_out; Linear: in·out (per sample); 0 else."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return layer.out_channels * layer.in_channels * kh * kw * int(out.shape[-2]) * int(out.shape[-1])
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    return 0


def exit_costs(model: nn.Module, example: torch.Tensor) -> list[int]:
    """``KMR.exit.macs``: the MACs of one sample leaving at each exit (the end last):
    exit j costs the backbone up to layer p_j plus heads 1..j; the end costs the whole backbone
    plus every head. A plain Sequential has one exit (the end)."""
    backbone = _check_backbone(model.backbone if isinstance(model, EarlyExit) else model)
    positions = model.positions if isinstance(model, EarlyExit) else ()
    prefix: list[int] = []
    h = example[:1]
    with torch.no_grad():
        for layer in backbone:
            h = layer(h)
            prefix.append((prefix[-1] if prefix else 0) + layer_macs(layer, h))
    costs, heads_so_far = [], 0
    if isinstance(model, EarlyExit):
        for p in positions:
            head = model.heads[str(p)]
            assert isinstance(head, nn.Sequential)
            lin = head[1]
            assert isinstance(lin, nn.Linear)
            heads_so_far += lin.in_features * lin.out_features
            costs.append(prefix[p] + heads_so_far)
    costs.append(prefix[-1] + heads_so_far)
    return costs


def expected_macs(model: nn.Module, x_eval: torch.Tensor) -> Fraction:
    """``KMR.exit.cost-meter``: (1/N) Σ_samples cost(exit of the sample), exact."""
    costs = exit_costs(model, x_eval)
    n = int(x_eval.shape[0])
    if n == 0:
        raise RuleInputError("KMR.exit.cost-meter", "the evaluation set is empty")
    if isinstance(model, EarlyExit):
        m = clone_tree(model).eval()
        with torch.no_grad():
            chosen = m.exits(x_eval)  # type: ignore[operator]
        counts = torch.bincount(chosen, minlength=len(costs)).tolist()
    else:
        counts = [n]
    return Fraction(sum(c * k for c, k in zip(costs, counts, strict=True)), n)


def expected_macs_meter(x_eval: torch.Tensor) -> CostMeter[nn.Module]:
    return CostMeter("expected_macs", lambda m: expected_macs(m, x_eval), "MACs per sample")


__all__ = ["THRESHOLD", "EarlyExit", "EarlyExitRule", "check_exit_positions", "exceeds", "exit_costs", "expected_macs",
           "expected_macs_meter", "layer_macs"]
