"""The benchmark model: Linear-like float32 matrices totalling exactly ``size`` parameters."""

from __future__ import annotations

import math
import re

import torch

SEED = 20250814
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_MULT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str) -> int:
    """``10M``, ``100M``, ``2.5k``, ``12345`` -> a positive int (decimal multipliers)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 100000, 10M, 100M)")
    v = float(m.group(1)) * _MULT[m.group(2).lower()]
    if v < 1 or v != int(v):
        raise ValueError(f"size must be a positive integer, got {text!r}")
    return int(v)


def layer_shapes(size: int) -> list[tuple[int, int]]:
    """Shapes of a transformer-like stack: (d, d), (4d, d), (d, 4d) repeated, then a remainder,
    with d a power of two such that one (d, d) block is about a ninth of the model or less."""
    d = max(8, 2 ** int(math.log2(max(1.0, math.sqrt(size / 9)))))
    shapes: list[tuple[int, int]] = []
    left = size
    cycle = [(d, d), (4 * d, d), (d, 4 * d)]
    i = 0
    while left >= cycle[i % 3][0] * cycle[i % 3][1]:
        r, c = cycle[i % 3]
        shapes.append((r, c))
        left -= r * c
        i += 1
    if left >= d:
        shapes.append((left // d, d))
        left %= d
    if left:
        shapes.append((1, left))
    return shapes


def make_tensors(size: int, device: str = "cpu", seed: int = SEED) -> list[torch.Tensor]:
    """Gaussian weights scaled like a Linear init (std 1/sqrt(fan_in)), generated with a fixed seed."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for r, c in layer_shapes(size):
        t = torch.empty((r, c), dtype=torch.float32)
        t.normal_(0.0, 1.0 / math.sqrt(c), generator=g)
        out.append(t.to(device))
    return out
