"""Factory, quality and example input for ``compress_digits.toml`` (``kmr compress``).

The digits CNN of :mod:`kmr_ref.examples.digits`, trained once per process (seeded, ~2 s on a
CPU) and cached, so that the quality function, called at every step, never retrains.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from kmr_ref.examples import digits

SEED = 0
EPOCHS = 30


@functools.cache
def _data() -> digits.Digits:
    return digits.load(SEED)


@functools.cache
def _trained() -> nn.Sequential:
    torch.use_deterministic_algorithms(True)
    return digits.train(_data(), epochs=EPOCHS, seed=SEED)


def trained_cnn() -> nn.Module:
    """The trained CNN (a fresh copy of the per-process cached one)."""
    return copy.deepcopy(_trained())


def cnn() -> nn.Module:
    """The untrained architecture, for a TOML that loads ``weights = "....safetensors"``."""
    return digits.make_cnn()


def val_accuracy(model: nn.Module) -> float:
    """Validation accuracy (the split the policies see; the test split stays unseen)."""
    return digits.accuracy(model, _data().val)


def test_accuracy(model: nn.Module) -> float:
    """Test accuracy, for reporting after the run."""
    return digits.accuracy(model, _data().test)


def example_input() -> torch.Tensor:
    """One 8x8 image, for the ``macs`` meter."""
    return torch.zeros(1, 1, 8, 8)
