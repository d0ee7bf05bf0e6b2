"""The shipped digits weights: the README's figures start from bytes, not from this CPU's BLAS."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kmr_ref.examples import digits

ROOT = Path(__file__).resolve().parent.parent
FILE = ROOT / "kmr_ref" / "examples" / digits.PRETRAINED_FILE


def test_shipped_file_matches_its_digest_and_the_architecture() -> None:
    assert hashlib.sha256(FILE.read_bytes()).hexdigest() == digits.PRETRAINED_SHA256
    m = digits.pretrained()
    ref = digits.make_cnn()
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    assert not m.training and not any(p.requires_grad for p in m.parameters())


def test_pretrained_accuracy_is_the_recorded_one() -> None:
    # 356 of 360 test images: recorded when the weights were trained (an independent count:
    # the argmax of the shipped model compared with the labels, here recounted as integers)
    data = digits.load(digits.PRETRAINED_SEED)
    with torch.no_grad():
        pred = digits.pretrained()(data.test.x).argmax(dim=1)
    assert len(data.test.y) == 360
    assert int((pred == data.test.y).sum()) == 356


def test_a_damaged_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits, "PRETRAINED_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        digits.pretrained()


def test_demo_from_shipped_weights_is_byte_identical_across_processes() -> None:
    cmd = [sys.executable, "-m", "kmr_ref", "demo", "--json", "--policy", "scheduled"]
    outs = []
    for _ in range(2):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
        runs = json.loads(r.stdout)
        for run in runs:
            run.pop("seconds"), run.pop("train_seconds")
        outs.append(runs)
    assert outs[0] == outs[1]
    assert abs(outs[0][0]["initial"]["test_accuracy"] - 356 / 360) < 1e-6  # float32 mean of 356/360
