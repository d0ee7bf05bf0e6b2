"""KMR.compress.artifacts KMR.compress.packed KMR.compress.load KMR.compress.eval: a run folder
rebuilds the compressed model bit for bit, its model file is as small as the composed storage
meter says, and `kmr eval` re-measures exactly the report's final cost and quality."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import kmr_ref
from kmr_ref.compress import (
    CompressConfig,
    LoadError,
    LowRankMethod,
    PhaseConfig,
    PruneMethod,
    QuantizeMethod,
    ScheduledConfig,
    StructuredMethod,
    compress,
)
from kmr_ref.examples import digits
from kmr_ref.methods.lowrank import LowRankFactors
from kmr_ref.methods.quantization import kept_codes
from kmr_ref.methods.storage import composed_storage_bits, header_bytes, storage_bits
from tests.test_compress import mlp, state_bytes

ROOT = Path(__file__).resolve().parent.parent


def cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return digits.make_cnn()


def expected_data_bytes(model: nn.Module) -> int:
    """KMR.compress.packed, recomputed with numpy from the spec's text: per distinct state
    tensor the bytes of its arrays (dense, or bitmap + nonzeros when fewer bits)."""
    total = 0
    seen: set[int] = set()
    params = {id(p) for p in model.parameters()}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        a = t.detach().numpy()
        n, w = a.size, a.itemsize * 8
        mpath, _, leaf = name.rpartition(".")
        kc = kept_codes(model.get_submodule(mpath), leaf) if id(t) in params else None
        if kc is not None:
            codes, zp, b = kc.codes.numpy(), kc.zp.numpy(), kc.record.bits
            nnz = int(np.count_nonzero(codes != zp[:, None]))
            arrays = [math.ceil(n / 8), math.ceil(nnz * b / 8)] if n + nnz * b < n * b else [math.ceil(n * b / 8)]
            arrays.append(4 * kc.record.num_groups)
            if kc.record.scheme == "asymmetric":
                arrays.append(math.ceil(kc.record.num_groups * b / 8))
            total += sum(arrays)
        elif id(t) in params:
            nnz = int(np.count_nonzero(a))
            total += math.ceil(n / 8) + nnz * w // 8 if n + nnz * w < n * w else n * w // 8
        else:
            total += n * w // 8
    return total


def test_quantized_file_bytes_by_hand(tmp_path: Path) -> None:
    """KMR.compress.packed: a 6-8-4 MLP at 8 bits per channel stores 48 + 8x4 (layer 0 codes,
    scales) + 32 (bias) + 32 + 4x4 + 16 = 176 data bytes, against 368 fp32 bytes."""
    cfg = CompressConfig(phases=(PhaseConfig(QuantizeMethod(), ScheduledConfig((8,))),), meter="storage_bits",
                         budget_fraction="1/2")
    compress(mlp(), cfg, out_dir=tmp_path / "q")
    f = tmp_path / "q" / "model.safetensors"
    assert f.stat().st_size - header_bytes(f) == 176


@pytest.mark.parametrize("case", ["prune", "quantize-asym", "structured", "lowrank", "prune+quantize"])
def test_load_is_bit_equal_and_packed(case: str, tmp_path: Path) -> None:
    """KMR.compress.load KMR.compress.artifacts KMR.compress.packed: for every method on the digits
    CNN, load(run_dir, model=base) has the returned model's state bytes, architecture, kept codes
    and outputs (bit for bit); the file is the composed meter's bytes plus < 1 byte per array
    plus its header."""
    phases = {
        "prune": ((PruneMethod(), ScheduledConfig(("1/2", "9/10"))),),
        "quantize-asym": ((QuantizeMethod(scheme="asymmetric", granularity="tensor"), ScheduledConfig((6, 3))),),
        "structured": ((StructuredMethod(), ScheduledConfig(("1/4", "1/2"))),),
        "lowrank": ((LowRankMethod(), ScheduledConfig((4,), knob="rank")),),
        "prune+quantize": ((PruneMethod(), ScheduledConfig(("1/2", "7/10"))),
                           (QuantizeMethod(), ScheduledConfig((8, 4)))),
    }[case]
    meter = {"prune": "nonzeros", "quantize-asym": "storage_bits", "structured": "params",
             "lowrank": "composed_storage_bits", "prune+quantize": "composed_storage_bits"}[case]
    cfg = CompressConfig(phases=tuple(PhaseConfig(m, p) for m, p in phases), meter=meter, budget=0)
    base = cnn()
    base.eval()
    before = state_bytes(base)
    rep = compress(base, cfg, out_dir=tmp_path / "out")
    assert rep.accepted_steps >= 1
    back = kmr_ref.load(tmp_path / "out", model=base)
    assert isinstance(back, nn.Module)
    assert state_bytes(base) == before  # the base is not touched
    assert state_bytes(back) == state_bytes(rep.model)
    assert [type(m) for m in back.modules()] == [type(m) for m in rep.model.modules()]
    assert composed_storage_bits(back) == composed_storage_bits(rep.model)
    assert storage_bits(back) == storage_bits(rep.model)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(x).view(torch.int32), rep.model(x).view(torch.int32))
    if case == "lowrank":
        assert any(isinstance(m, LowRankFactors) for m in back.modules())
    if case == "structured":
        assert sum(p.numel() for p in back.parameters()) == rep.cost_final < sum(p.numel() for p in base.parameters())
    f = tmp_path / "out" / "model.safetensors"
    data = f.stat().st_size - header_bytes(f)
    assert data == expected_data_bytes(rep.model)
    with safe_open(str(f), framework="pt") as fh:
        n_arrays = len(list(fh.keys()))
    bits = composed_storage_bits(rep.model)
    assert bits / 8 <= data < bits / 8 + n_arrays
    assert f.stat().st_size <= 1.05 * bits / 8 + 64 * 1024


def test_dense_export_json_and_safetensors_only(tmp_path: Path) -> None:
    """KMR.compress.artifacts: save_dense writes the dense state_dict too; the folder holds JSON and
    safetensors files only (no pickle)."""
    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/2",))),), meter="nonzeros",
                         budget=0)
    rep = compress(mlp(), cfg, out_dir=tmp_path / "out", save_dense=True)
    from safetensors.torch import load_file

    dense = load_file(str(tmp_path / "out" / "model.dense.safetensors"))
    assert {k: v.numpy().tobytes() for k, v in dense.items()} == state_bytes(rep.model)
    for p in (tmp_path / "out").iterdir():
        raw = p.read_bytes()
        assert not raw.startswith(b"\x80"), p  # a pickle stream starts with PROTO
        if p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt"):
                pass
        elif p.suffix == ".jsonl":
            [json.loads(s) for s in raw.decode().splitlines()]
        else:
            assert p.suffix == ".json", p
            json.loads(raw)
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["factory"] is None and man["files"]["dense"] == "model.dense.safetensors"


def test_load_errors(tmp_path: Path) -> None:
    """KMR.compress.load: no manifest, no factory without a base, a base of another shape."""
    with pytest.raises(LoadError) as e:
        kmr_ref.load(tmp_path)
    assert e.value.clause == "KMR.compress.load"
    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/2",))),), meter="nonzeros",
                         budget=0)
    compress(mlp(), cfg, out_dir=tmp_path / "out")
    with pytest.raises(LoadError) as e:
        kmr_ref.load(tmp_path / "out")
    assert e.value.clause == "KMR.compress.load" and "model=base" in e.value.message
    with pytest.raises(LoadError) as e:
        kmr_ref.load(tmp_path / "out", model=mlp((6, 5, 4)))
    assert e.value.clause == "KMR.compress.load" and "does not match" in e.value.message


def test_eval_digits_example(tmp_path: Path) -> None:
    """KMR.compress.eval KMR.compress.load: `kmr compress` on the shipped digits example, then
    `kmr eval RUN_DIR --json` in a fresh process: the reloaded model (factory from the config)
    measures exactly report.json's final; a report that says otherwise exits 1."""
    out = tmp_path / "digits"
    toml = ROOT / "kmr_ref" / "examples" / "compress_digits.toml"
    r = subprocess.run([sys.executable, "-m", "kmr_ref", "compress", str(toml), "--out", str(out), "--json"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    e = subprocess.run([sys.executable, "-m", "kmr_ref", "eval", str(out), "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    assert e.returncode == 0, e.stderr
    got: dict[str, Any] = json.loads(e.stdout)
    assert got == report["final"] and set(got) == {"cost", "quality"}
    f = out / "model.safetensors"
    assert f.stat().st_size <= 1.05 * report["final"]["cost"] / 8 + 64 * 1024
    (out / "report.json").write_text(json.dumps({**report, "final": {**report["final"],
                                                                     "cost": report["final"]["cost"] + 1}}))
    import argparse

    from kmr_ref.cli import eval_cmd

    assert eval_cmd.run(argparse.Namespace(run_dir=out, json=True)) == 1


def test_structured_batchnorm_reloads(tmp_path: Path) -> None:
    """KMR.compress.artifacts KMR.compress.load: structured pruning through a BatchNorm (its
    running statistics and num_features resized) is recorded as `resize` changes and reloads to
    the same bytes and outputs; the manifest names the changed sizes."""
    torch.manual_seed(3)
    base = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        base[1].running_mean.normal_()
        base[1].running_var.uniform_(0.5, 2.0)
    base.eval()
    cfg = CompressConfig(phases=(PhaseConfig(StructuredMethod(), ScheduledConfig(("1/2",))),), meter="params",
                         budget=0)
    rep = compress(base, cfg, out_dir=tmp_path / "out")
    back = kmr_ref.load(tmp_path / "out", model=base)
    assert back[1].num_features == 4 and back[0].out_channels == 4 and back[4].in_features == 256
    assert state_bytes(back) == state_bytes(rep.model)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), rep.model(x))
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {(c["path"], c["kind"]) for c in man["modules"]} == {("0", "resize"), ("1", "resize"), ("4", "resize")}
    assert man["modules"][1]["attrs"] == {"num_features": 4}


def test_eval_refuses_what_it_cannot_rebuild(tmp_path: Path) -> None:
    """KMR.compress.eval KMR.compress.load: a folder without a report, or a Python-API run with no
    factory to rebuild from, exits 2 naming the clause."""
    import argparse
    import contextlib
    import io

    from kmr_ref.cli import eval_cmd

    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/2",))),), meter="nonzeros",
                         budget=0)
    compress(mlp(), cfg, out_dir=tmp_path / "py")
    for d, clause in ((tmp_path / "empty", "KMR.compress.eval"), (tmp_path / "py", "KMR.compress.load")):
        d.mkdir(exist_ok=True)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert eval_cmd.run(argparse.Namespace(run_dir=d, json=True)) == 2
        assert clause in err.getvalue()
