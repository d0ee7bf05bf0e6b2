"""The audit of torch's own pruning and quantization (``kmr_ref/conformance/torch_impl.py``,
``docs/results/torch-audit.md``): the deviations found are pinned here, each on its clause
(KMR.prune.zero-value, KMR.prune.count, KMR.prune.tie-break, KMR.prune.tensor-order,
KMR.prune.nonfinite, KMR.quant.nonfinite), and what torch gets right (Algorithm Q on every valid
quantization vector: KMR.quant.scale, KMR.quant.rounding) stays right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.report import build_report, run_all
from kmr_ref.conformance.torch_audit import MD, audit
from kmr_ref.conformance.torch_impl import TorchPrune, TorchQuant
from kmr_ref.conformance.vectors import ADAPTER_RUNNERS

ROOT = Path(__file__).resolve().parent.parent
VDIR = ROOT / "spec" / "vectors" / SPEC_VERSION


def _blame(kind: str, adapter: Any, path: Path) -> dict[str, str]:
    rep = build_report(run_all([path], "t", {kind: ADAPTER_RUNNERS[kind](adapter)}), "t")
    return {f["id"]: f["clause"] for f in rep["failures"]}


@pytest.fixture(scope="module")
def prune_as_is() -> dict[str, str]:
    return _blame("prune-magnitude", TorchPrune(), VDIR / "pruning.json")


@pytest.fixture(scope="module")
def prune_plus_zero() -> dict[str, str]:
    return _blame("prune-magnitude", TorchPrune(plus_zero=True), VDIR / "pruning.json")


def test_torch_prune_deviations(prune_as_is: dict[str, str], prune_plus_zero: dict[str, str]) -> None:
    """-0.0 from orig * mask; round() instead of floor; topk tie order; no NaN / inf check."""
    assert prune_as_is["prune-negative-zero-pruned"] == "KMR.prune.zero-value"
    assert prune_as_is["prune-global-two-tensors"] == "KMR.prune.zero-value"
    assert prune_as_is["prune-per-tensor-floor"] == "KMR.prune.count"  # round(1/2 * 3) = 2, floor = 1
    assert prune_as_is["prune-error-nan"] == "KMR.prune.nonfinite"
    assert prune_plus_zero["prune-tie-across-tensors"] == "KMR.prune.tie-break"
    assert prune_plus_zero["prune-tie-within-tensor"] == "KMR.prune.tie-break"
    assert prune_plus_zero["prune-tensor-order-tree-registration"] == "KMR.prune.tensor-order"
    # what torch gets right once -0.0 is set aside: the count at n = 100 (round(28.999...) = 29)
    assert "prune-count-n100-29-100" not in prune_plus_zero and "prune-count-7-of-10" not in prune_plus_zero


def test_torch_quant_matches_algorithm_q_on_valid_input() -> None:
    """torch's observer + fake-quant is Algorithm Q (two-rounding scale at every b included); it
    misses the input checks only."""
    blame = _blame("quant-uniform", TorchQuant(), VDIR / "quantization.json")
    assert set(blame) == {"quant-error-bits-17", "quant-error-nan", "quant-error-inf", "quant-error-magnitude",
                          "quant-error-magnitude-next-up", "quant-error-empty-group"}
    assert blame["quant-error-nan"] == "KMR.quant.nonfinite"


def test_impl_torch_passes_with_its_xfail_file() -> None:
    """``kmr conform --impl torch`` exits 0 with the committed torch.xfail (strict: no XPASS)."""
    proc = subprocess.run([sys.executable, "-m", "kmr_ref.conformance", "--impl", "torch"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "xfail" in proc.stdout and "FAIL " not in proc.stdout


@pytest.mark.skipif(f"torch {torch.__version__.split('+')[0]}," not in MD.read_text(encoding="utf-8"),
                    reason="the committed audit is for another torch version")
def test_audit_files_up_to_date() -> None:
    """docs/results/torch-audit.md and torch.xfail are what the audit command writes now."""
    md, xf = audit()
    assert MD.read_text(encoding="utf-8") == md, "rerun: python -m kmr_ref.conformance.torch_audit"
    assert (ROOT / "kmr_ref" / "conformance" / "torch.xfail").read_text(encoding="utf-8") == xf


def test_torch_lowrank_deviations() -> None:
    """torch.linalg.svd as a user writes the truncation: no sign convention (KMR.lowrank.sign), the
    split rounded in binary32 (KMR.lowrank.split, seen once the signs are fixed), no applicability
    test (KMR.lowrank.applicable), no input checks (KMR.lowrank.nonfinite); with the spec's signs its
    own SVD lands within the tolerance of every lowrank-svd vector."""
    from kmr_ref.conformance.torch_impl import TorchLowRank

    as_is = _blame("lowrank-factors", TorchLowRank(), VDIR / "lowrank.json")
    signed = _blame("lowrank-factors", TorchLowRank(spec_signs=True), VDIR / "lowrank.json")
    assert as_is["lowrank-sign-tie-first-index"] == "KMR.lowrank.sign"
    assert as_is["lowrank-not-applicable"] == "KMR.lowrank.applicable"
    assert as_is["lowrank-error-nan-weight"] == "KMR.lowrank.nonfinite"
    assert as_is["lowrank-refactor-lower"] == "KMR.lowrank.refactor"
    assert signed["lowrank-rank1-linear"] == "KMR.lowrank.split"
    assert "lowrank-sign-tie-first-index" not in signed  # torch's argmax takes the first index too
    own = _blame("lowrank-svd", TorchLowRank(given_factors=False), VDIR / "lowrank_svd.json")
    assert own and set(own.values()) == {"KMR.lowrank.sign"}
    assert not _blame("lowrank-svd", TorchLowRank(given_factors=False, spec_signs=True), VDIR / "lowrank_svd.json")
