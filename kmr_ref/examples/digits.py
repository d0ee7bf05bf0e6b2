"""A small CNN on scikit-learn's 8x8 digits: data split, model, seeded training, accuracy meters.

Everything is seeded (``torch.manual_seed``, a fixed split permutation, deterministic algorithms),
so the same machine and torch build give the same weights byte for byte. Training is *not*
bit-reproducible across CPU models (BLAS kernels differ in summation order: the same recipe gave
test accuracy 0.9917 on one x86_64 machine and 0.9889 on another), so the figures in the README
start from :func:`pretrained`, the weights this recipe gave once, shipped with the package and
checked by SHA-256; ``kmr demo --train`` retrains instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from kmr_ref.core.meters import QualityMeter


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, 1, 8, 8) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64


@dataclass(frozen=True)
class Digits:
    train: Split
    val: Split
    test: Split


def load(seed: int = 0, device: str = "cpu") -> Digits:
    """1797 images: 60% train, 20% validation (the policies' quality meter), 20% test (reported)."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.tensor(np.random.default_rng(seed).permutation(len(y)))
    x, y = x[perm].to(device), y[perm].to(device)
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    return Digits(Split(x[:a], y[:a]), Split(x[a:b], y[a:b]), Split(x[b:], y[b:]))


def make_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(data: Digits, epochs: int = 30, seed: int = 0, device: str = "cpu") -> nn.Sequential:
    torch.manual_seed(seed)
    model = make_cnn().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = len(data.train.y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


PRETRAINED_FILE = "digits_cnn.safetensors"
PRETRAINED_SEED = 0  # the split and training seed of the shipped weights
# sha256 of the shipped file: train(load(seed=0), epochs=30, seed=0), torch 2.13.0 CPU, AMD EPYC
PRETRAINED_SHA256 = "43aeb6b4f7534d619b0595e92778a86cbd1564395d5658f157f1b505b36bff4c"


def pretrained() -> nn.Sequential:
    """The CNN with the shipped weights (``PRETRAINED_FILE``), verified by SHA-256, in eval mode
    and without gradients, like the output of :func:`train`."""
    from safetensors.torch import load

    blob = resources.files("kmr_ref.examples").joinpath(PRETRAINED_FILE).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != PRETRAINED_SHA256:
        raise RuntimeError(f"{PRETRAINED_FILE}: sha256 {digest} != {PRETRAINED_SHA256} (a damaged install?)")
    model = make_cnn()
    model.load_state_dict(load(blob), strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    pred = model(split.x).argmax(dim=1)
    return float((pred == split.y).float().mean().item())


def accuracy_meter(split: Split, name: str = "val_accuracy") -> QualityMeter[nn.Module]:
    return QualityMeter(name, lambda m: accuracy(m, split))
