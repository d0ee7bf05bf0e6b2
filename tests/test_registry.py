"""The implementation registry: methods/ reaches the kernels only through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kmr_ref.methods.registry import lookup, register

ROOT = Path(__file__).resolve().parent.parent


def test_methods_load_no_kernel_until_a_kernel_is_asked_for() -> None:
    code = ("import sys, torch; from kmr_ref.methods.pruning import MagnitudePruning\n"
            "assert 'kmr_ref.kernels' not in sys.modules\n"
            "m = torch.nn.Linear(4, 4); r = MagnitudePruning.for_model(m, kernel=True)\n"
            "out = r.apply(m, 'sparsity', '1/2'); assert 'kmr_ref.kernels' in sys.modules\n"
            "assert int((out.weight == 0).sum()) == 8\n")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_lookup_of_an_unknown_name_fails_and_registration_wins() -> None:
    with pytest.raises(LookupError):
        lookup("no-such-implementation")
    register("test-double", len)
    assert lookup("test-double") is len
