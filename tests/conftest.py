"""Hypothesis profiles: ``dev`` (fast, default) and ``ci`` (more examples, derandomized).

Select with ``HYPOTHESIS_PROFILE=ci`` (``.ci/run`` and ``make test`` in CI do).
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.manual_seed(0)
