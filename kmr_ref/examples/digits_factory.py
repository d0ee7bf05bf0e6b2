"""Factory, quality and example input for ``compress_digits.toml`` (``kmr compress``).

The digits CNN of :mod:`kmr_ref.examples.digits` with its shipped weights
(:func:`~kmr_ref.examples.digits.pretrained`: the same bytes on every machine, where training
itself is not bit-reproducible across CPU models), loaded once per process and cached.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from kmr_ref.examples import digits

SEED = 0


@functools.cache
def _data() -> digits.Digits:
    return digits.load(SEED)


@functools.cache
def _trained() -> nn.Sequential:
    return digits.pretrained()


def trained_cnn() -> nn.Module:
    """The trained CNN, shipped weights (a fresh copy of the per-process cached one)."""
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
