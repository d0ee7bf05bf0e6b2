"""Knowledge distillation (paper §5), as ``spec/methods/distillation.md`` states it.

The rule T(M, ``width``, w) trains a fresh student of width w to match the teacher M (the current
model) on a fixed training split with the loss of ``KMR.distill.loss``; the student is the new
model. Temperature, weight and step count are the rule's settings (``KMR.distill.settings``).
"""

from __future__ import annotations

import copy
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
from kmr_ref.methods.modules import clone_tree, set_submodule
from kmr_ref.methods.training import (
    check_model,
    check_seed,
    check_steps,
    deterministic,
    exact_setting,
    fit,
    freeze,
    frozen_copy,
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


# ---------------------------------------------------------------------------------------------
# Embedding distillation into fewer layers (MiniLM; KMR.distill.layers-knob ff.)

LAYERS = "layers"
LAYERS_PATH = "bert.encoder.layer"  # MiniLMEmbedder's BERT encoder layers
LAYERS_LR = 3e-4  # KMR.distill.layers-settings: Adam's learning rate for a pretrained transformer
CHUNK = 64  # KMR.distill.embedding-teacher: teacher embeddings in chunks of 64 rows


def layer_indices(teacher_layers: int, d: int) -> tuple[int, ...]:
    """``KMR.distill.layers-init``: the teacher layers a d-layer student copies, in order: the
    first and the last, spread between: ``L - 1 - (d - 1 - i) * (L - 1) // (d - 1)`` for
    i = 0 .. d - 1; d = 1 copies the last layer (L = 6: d = 3 -> 0, 3, 5; d = 2 -> 0, 5; d = 4 -> 0, 2, 4, 5)."""
    last = teacher_layers - 1
    if d == 1:
        return (last,)
    return tuple(last - (d - 1 - i) * last // (d - 1) for i in range(d))


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """``KMR.distill.embedding-loss``: mean over the batch of 1 - cos(e_s, e_t), the cosine of
    ``torch.nn.functional.cosine_similarity(dim=1, eps=1e-8)``."""
    return (1.0 - F.cosine_similarity(student_emb, teacher_emb, dim=1, eps=1e-8)).mean()


def _trimmed(ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``KMR.distill.embedding-batches``: the rows, cut to the longest of them (the right padding
    beyond it dropped)."""
    m = mask[rows]
    w = max(int(m.sum(dim=1).max()), 1)
    return ids[rows, :w], m[:, :w]


@dataclass(frozen=True, eq=False)
class EmbeddingDistillation:
    """Distillation of a sentence embedder into fewer layers (``KMR.distill.layers-knob ff.``): knob
    ``layers`` d (``KMR.distill.layers-knob``); the training sentences as ``(ids, mask)``
    (``KMR.distill.layers-data``); settings ``steps``, ``seed``, ``layers_path`` (the
    ``nn.ModuleList`` of the model's layers) and ``max_layers`` (``KMR.distill.layers-settings``)."""

    ids: torch.Tensor
    mask: torch.Tensor
    steps: int = 40
    seed: int = 0
    layers_path: str = LAYERS_PATH
    max_layers: int = 6
    lr: float = LAYERS_LR

    def __post_init__(self) -> None:
        check_steps(self.steps, "KMR.distill.layers-settings")
        check_seed(self.seed, "KMR.distill.layers-settings")
        if isinstance(self.max_layers, bool) or not isinstance(self.max_layers, int) or self.max_layers < 1:
            raise KnobDomainError("KMR.distill.layers-settings",
                                  f"max_layers must be an integer >= 1, got {self.max_layers!r}")
        if not isinstance(self.layers_path, str):
            raise KnobDomainError("KMR.distill.layers-settings",
                                  f"layers_path must be a string, got {self.layers_path!r}")
        ok = (isinstance(self.ids, torch.Tensor) and isinstance(self.mask, torch.Tensor) and self.ids.dim() == 2
              and self.ids.shape == self.mask.shape and len(self.ids) > 0 and self.ids.dtype == torch.int64
              and self.mask.dtype == torch.int64)
        if not ok:
            raise RuleInputError("KMR.distill.layers-data", "ids and mask must be non-empty int64 tensors of one "
                                                            "shape (N, T)")

    def knobs(self) -> Sequence[Knob]:
        # KMR.distill.layers-knob: fewer layers are more aggressive
        return [Knob(LAYERS, FiniteDomain(tuple(range(1, self.max_layers + 1))), "decreasing")]

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        d = find_knob(self.knobs(), knob).check(value)  # KMR.knob.domain, KMR.knob.unknown
        assert isinstance(d, int)
        check_model(model, "KMR.distill.embedding-teacher")
        teacher = clone_tree(model).eval()  # KMR.rule.no-mutation: the caller's mode flags stay
        try:
            layers = teacher.get_submodule(self.layers_path)
        except AttributeError:
            layers = None
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise RuleInputError("KMR.distill.embedding-teacher", f"the model has no non-empty nn.ModuleList "
                                                                   f"{self.layers_path!r} of layers")
        if d > len(layers):  # KMR.distill.student-size: a student never has more layers than its teacher
            raise RuleInputError("KMR.distill.student-size", f"a {d}-layer student of a {len(layers)}-layer "
                                                              "teacher would be larger than the teacher")
        n = len(self.ids)
        with deterministic(self.seed):
            with torch.no_grad():  # KMR.distill.embedding-teacher: once, eval mode, chunks of 64 rows
                parts = [teacher(*_trimmed(self.ids, self.mask, torch.arange(s, min(s + CHUNK, n))))
                         for s in range(0, n, CHUNK)]
            t_emb = torch.cat(parts)
            if t_emb.dim() != 2 or t_emb.shape[0] != n:
                raise RuleInputError("KMR.distill.embedding-teacher", f"the model maps the sentences to shape "
                                                                       f"{tuple(t_emb.shape)}; (N, D) is required")
            # KMR.distill.layers-init: copies of the chosen teacher layers; everything else frozen, shared
            picked = nn.ModuleList([copy.deepcopy(layers[j]) for j in layer_indices(len(layers), d)])
            for p in picked.parameters():
                p.requires_grad_(True)
            student = frozen_copy(teacher)
            set_submodule(student, self.layers_path, picked)
            student.eval()  # KMR.distill.embedding-loss: dropout off while training
            ids, mask = self.ids, self.mask

            def loss_of(idx: torch.Tensor) -> torch.Tensor:
                return embedding_loss(student(*_trimmed(ids, mask, idx)), t_emb[idx])  # KMR.distill.embedding-loss

            fit(list(picked.parameters()), loss_of, n, self.steps, self.seed, lr=self.lr)  # KMR.train.order
        return freeze(student)  # KMR.distill.output
