"""``KMR.policy.random``: a seeded uniform choice among the candidates that lower cost."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kmr_ref.core.errors import PolicyError
from kmr_ref.core.knobs import find_knob
from kmr_ref.core.policy import PolicyState, Proposal, Stop

M = TypeVar("M")


def uniform_index(seed: int, t: int, n: int) -> int:
    """``KMR.policy.random-draw``: an index in [0, n), exactly uniform and language-neutral.

    For j = 0, 1, ...: u = the first 8 bytes (big-endian) of SHA-256 of the ASCII text
    ``"kmr-random:{seed}:{t}:{j}"``; the first u < 2^64 - (2^64 mod n) gives u mod n.
    """
    if n < 1:
        raise PolicyError("KMR.policy.random-draw", f"cannot draw from {n} candidates")
    limit = 2**64 - (2**64 % n)
    j = 0
    while True:
        u = int.from_bytes(hashlib.sha256(f"kmr-random:{seed}:{t}:{j}".encode("ascii")).digest()[:8], "big")
        if u < limit:
            return u % n
        j += 1


@dataclass(frozen=True)
class RandomPolicy(Generic[M]):
    """``KMR.policy.random``: at iteration t, apply every candidate of ``candidates(state)`` (in
    list order), keep those whose cost is strictly below the current cost, and propose the one at
    ``uniform_index(seed, t, len(kept))``; ``Stop`` when none lowers cost. Quality is never
    measured. The choice depends only on (seed, t, the kept list): a run is reproducible."""

    candidates: Callable[[PolicyState[M]], Sequence[Proposal]]
    seed: int = 0

    def __call__(self, state: PolicyState[M]) -> Proposal | Stop:
        tri = state.triple
        kept: list[Proposal] = []
        for p in self.candidates(state):
            v = find_knob(tri.knobs, p.knob).check(p.value)  # KMR.knob.domain, as Algorithm 1 line 6
            if tri.cost(tri.rule.apply(state.model, p.knob, v)) < state.cost:
                kept.append(p)
        if not kept:
            return Stop("no candidate lowers cost")
        return kept[uniform_index(self.seed, state.t, len(kept))]  # KMR.policy.random
