"""The shifted-digits task (``KMR.lora.task``): scikit-learn's 8x8 digits, split as
:func:`kmr_ref.examples.digits.load` splits them, every image rotated by 90 degrees
counter-clockwise (``torch.rot90(x, 1, dims=(2, 3))``: exact, no random numbers). The digits CNN
trained on upright digits does poorly on them; a LoRA adapter brings it back.

Also the data sources of ``distill_prune_quantize.toml`` (the upright digits' training split).
"""

from __future__ import annotations

import functools

import torch

from kmr_ref.examples import digits


def rotate(x: torch.Tensor) -> torch.Tensor:
    """``KMR.lora.task``: a quarter turn counter-clockwise of each (…, 8, 8) image."""
    return torch.rot90(x, 1, dims=(2, 3)).contiguous()


@functools.cache
def load(seed: int = 0) -> digits.Digits:
    """The rotated digits, with the same train / validation / test split as ``digits.load(seed)``."""
    d = digits.load(seed)
    return digits.Digits(*(digits.Split(rotate(s.x), s.y) for s in (d.train, d.val, d.test)))


def val_accuracy(model: torch.nn.Module) -> float:
    """Accuracy on the rotated validation split."""
    return digits.accuracy(model, load(0).val)


@functools.cache
def _upright() -> digits.Digits:
    return digits.load(0)


def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    """The upright digits' training split ``(x, y)`` (``digits.load(0).train``), for distillation."""
    s = _upright().train
    return s.x, s.y


def rotated_train() -> tuple[torch.Tensor, torch.Tensor]:
    """The rotated digits' training split ``(x, y)`` (``KMR.lora.task``), for a LoRA phase."""
    s = load(0).train
    return s.x, s.y


def digits_val_inputs() -> torch.Tensor:
    """The upright digits' validation images: the evaluation set of the ``expected_macs`` meter
    (``KMR.exit.cost-meter``) of an early-exit phase."""
    return _upright().val.x
