"""Knowledge distillation (paper §5), as ``spec/methods/distillation.md`` states it.

The rule T(M, ``width``, w) trains a fresh student of width w to match the teacher M (the current
model) on a fixed training split with the loss of ``KMR.distill.loss``; the student is the new
model. Temperature, weight and step count are the rule's settings (``KMR.distill.settings``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.knobs import FiniteDomain, Knob, KnobValue, find_knob
from kmr_ref.core.meters import CostMeter
from kmr_ref.methods.meters import parameter_count
from kmr_ref.methods.modules import clone_tree
from kmr_ref.methods.training import (
    check_model,
    check_seed,
    check_steps,
    deterministic,
    exact_setting,
    fit,
    freeze,
)

WIDTH = "width"
WIDTHS = tuple(range(1, 9))  # KMR.distill.knob: width w = w/8 of the digits CNN's channels


def digits_student(width: int) -> nn.Sequential:
    """``KMR.distill.student``: the digits CNN's architecture at width w: channels 2w and 4w,
    hidden units 8w (w = 8 is the teacher's shape, 38 282 parameters)."""
    c1, c2, h = 2 * width, 4 * width, 8 * width
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, h), nn.ReLU(),
        nn.Linear(h, 10),
    )


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``KMR.distill.loss``: α·τ²·KL(p_t^τ ‖ p_s^τ) + (1 − α)·CE(z_s, y), KL with reduction
    ``batchmean`` (summed over classes, averaged over the batch), CE averaged over the batch."""
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits, y, reduction="mean")
    return alpha * temperature * temperature * kl + (1.0 - alpha) * ce


@dataclass(frozen=True, eq=False)
class Distillation:
    """The distillation rule (``KMR.distill.*``) on a fixed training split ``(x, y)``.

    Knob ``width`` (``KMR.distill.knob``); settings ``temperature`` τ > 0, ``alpha`` α ∈ [0, 1],
    ``steps`` ≥ 1, ``seed`` (``KMR.distill.settings``); ``student(w)`` builds the untrained student
    of width w (default: :func:`digits_student`).
    """

    x: torch.Tensor
    y: torch.Tensor
    temperature: object = 4
    alpha: object = Fraction(1, 2)
    steps: int = 300
    seed: int = 0
    widths: Sequence[int] = WIDTHS
    student: Callable[[int], nn.Module] = field(default=digits_student)

    def __post_init__(self) -> None:
        # KMR.distill.settings: checked when the rule is built, before any model is seen
        tau = exact_setting(self.temperature, "KMR.distill.settings", "temperature")
        if tau <= 0:
            raise KnobDomainError("KMR.distill.settings", f"temperature must be > 0, got {tau}")
        a = exact_setting(self.alpha, "KMR.distill.settings", "alpha")
        if not 0 <= a <= 1:
            raise KnobDomainError("KMR.distill.settings", f"alpha must lie in [0, 1], got {a}")
        object.__setattr__(self, "temperature", tau)
        object.__setattr__(self, "alpha", a)
        check_steps(self.steps, "KMR.distill.settings")
        check_seed(self.seed, "KMR.distill.settings")
        object.__setattr__(self, "widths", tuple(self.widths))
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor) or len(self.x) != len(self.y):
            raise RuleInputError("KMR.distill.data", "x and y must be tensors of the same length")
        if len(self.y) == 0 or self.y.dtype != torch.int64:
            raise RuleInputError("KMR.distill.data", "y must be a non-empty int64 tensor of class labels")

    def knobs(self) -> Sequence[Knob]:
        # KMR.distill.knob: smaller students are more aggressive (cost falls with w)
        return [Knob(WIDTH, FiniteDomain(tuple(self.widths)), "decreasing")]

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        w = find_knob(self.knobs(), knob).check(value)  # KMR.knob.domain, KMR.knob.unknown
        assert isinstance(w, int)
        check_model(model, "KMR.distill.teacher")
        tau, a = float(Fraction(str(self.temperature))), float(Fraction(str(self.alpha)))
        teacher = clone_tree(model).eval()  # KMR.rule.no-mutation: the caller's mode flags stay
        with deterministic(self.seed):
            with torch.no_grad():
                t_logits = teacher(self.x)  # KMR.distill.teacher: once, in eval mode, before training
            n_classes = int(self.y.max()) + 1
            if t_logits.dim() != 2 or t_logits.shape[0] != len(self.y) or t_logits.shape[1] < n_classes:
                raise RuleInputError("KMR.distill.teacher", f"the teacher maps the training inputs to shape "
                                     f"{tuple(t_logits.shape)}; (N, classes >= {n_classes}) logits are required")
            student = self.student(w)  # KMR.distill.init: default init, seeded generator
            if parameter_count(student) > parameter_count(model):  # KMR.distill.student-size
                raise RuleInputError("KMR.distill.student-size",
                                     f"a width-{w} student has {parameter_count(student)} parameters, more than "
                                     f"the teacher's {parameter_count(model)}")
            with torch.no_grad():
                s_shape = tuple(student(self.x[:1]).shape)
            if s_shape != (1, t_logits.shape[1]):
                raise RuleInputError("KMR.distill.teacher", f"student output shape {s_shape} != teacher's "
                                     f"{(1, t_logits.shape[1])}")
            student.train()
            x, y = self.x, self.y

            def loss_of(idx: torch.Tensor) -> torch.Tensor:
                return distillation_loss(student(x[idx]), t_logits[idx], y[idx], tau, a)  # KMR.distill.loss

            fit(list(student.parameters()), loss_of, len(y), self.steps, self.seed)  # KMR.train.order
        return freeze(student)  # KMR.distill.output


def student_parameter_meter() -> CostMeter[nn.Module]:
    """``KMR.distill.cost-meter``: the parameter count of the model (``KMR.meter.params``)."""
    return CostMeter("params", parameter_count, "parameters")
