"""Storage meters and the packed file (spec/methods/quantization.md), checked against formulas
written here from the spec and against a by-hand parser of the safetensors bytes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core.exact import is_exact
from kmr_ref.methods.quantization import Granularity, Scheme, UniformQuantization, kept_codes
from kmr_ref.methods.storage import (
    composed_storage_bits,
    composed_storage_meter,
    header_bytes,
    load_packed,
    pack_bits,
    packed_data_bytes,
    save_packed,
    storage_bits,
    storage_entries,
    storage_meter,
    unpack_bits,
)

SCHEMES: list[Scheme] = ["symmetric", "asymmetric"]
GRANS: list[Granularity] = ["tensor", "channel", "group"]
WIDTH = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16, torch.float64: 64, torch.int64: 64,
         torch.int32: 32, torch.bool: 8, torch.uint8: 8}


def model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 6),
                         nn.Linear(6, 6, bias=False))


def groups_of(shape: tuple[int, ...], gran: Granularity, g: int) -> int:
    n = int(np.prod(shape))
    return {"tensor": 1, "channel": shape[0], "group": n // g}[gran]


def expected_bits(m: nn.Module, q: nn.Module, bits: int, scheme: Scheme, gran: Granularity, g: int) -> int:
    """From the spec: quantized weights n*b + G*32 (+ G*b asymmetric), the rest numel * width."""
    total = 0
    for name, t in m.state_dict().items():
        if name.endswith("weight") and t.dim() >= 2:  # the Linear/Conv weights are the selected ones
            n, groups = t.numel(), groups_of(tuple(t.shape), gran, g)
            total += n * bits + groups * 32 + (groups * bits if scheme == "asymmetric" else 0)
        else:
            total += t.numel() * WIDTH[t.dtype]
    return total


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("gran", GRANS)
def test_storage_bits_formula_and_monotone(scheme: Scheme, gran: Granularity) -> None:
    """KMR.quant.storage-bits KMR.quant.storage-monotone: exact integer bits by the spec's formula
    (bookkeeping buffers not counted, BatchNorm buffers counted), strictly increasing in b."""
    m = model()
    assert storage_bits(m) == sum(t.numel() * WIDTH[t.dtype] for t in m.state_dict().values())
    rule = UniformQuantization(scheme, gran, group_size=2)
    costs = []
    for b in range(2, 17):
        q = rule.apply(m, "bits", b)
        c = storage_bits(q)
        assert isinstance(c, int) and c == expected_bits(m, q, b, scheme, gran, 2)
        assert storage_meter()(q) == c and is_exact(c)
        costs.append(c)
    assert all(a < b for a, b in itertools.pairwise(costs))


def test_stale_quantized_weight_counts_as_float() -> None:
    """KMR.quant.codes-kept KMR.quant.storage-bits: a weight changed after quantization is metered
    at its dtype width (its codes no longer describe it)."""
    m = model()
    q = UniformQuantization("symmetric", "tensor").apply(m, "bits", 4)
    before = storage_bits(q)
    w = q.get_parameter("5.weight")
    with torch.no_grad():
        w[0, 0] = 1234.5
    assert storage_bits(q) == before - (36 * 4 + 32) + 36 * 32


def test_tied_weight_counted_once() -> None:
    """KMR.quant.storage-bits: a tensor under two state-dict names is stored and counted once."""
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    q = UniformQuantization("symmetric", "tensor").apply(nn.Sequential(a, b), "bits", 3)
    assert storage_bits(q) == 16 * 3 + 32


# ---------------------------------------------------------------- packing
def py_pack(values: list[int], bits: int) -> bytes:
    """The spec's LSB-first stream as one Python integer: value i at bit offset i*b."""
    stream = 0
    for i, v in enumerate(values):
        stream |= v << (i * bits)
    return stream.to_bytes(-(-len(values) * bits // 8), "little")


@given(st.integers(2, 16).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2**b - 1), max_size=40))))
def test_pack_bits_is_the_lsb_first_stream(case: tuple[int, list[int]]) -> None:
    """KMR.quant.packed-format: pack_bits equals the LSB-first stream; unpack inverts it."""
    bits, values = case
    packed = pack_bits(torch.tensor(values, dtype=torch.int64), bits)
    assert packed.dtype == torch.uint8 and bytes(packed.tolist()) == py_pack(values, bits)
    assert unpack_bits(packed, bits, len(values)).tolist() == values


def test_pack_layout_examples() -> None:
    """KMR.quant.packed-format: b=8 one code per byte; b=4 low nibble first; b=2 four per byte,
    first code in bits 0-1; b=16 little-endian 16-bit words."""
    assert pack_bits(torch.tensor([7, 200, 0]), 8).tolist() == [7, 200, 0]
    assert pack_bits(torch.tensor([0x1, 0x2, 0xF]), 4).tolist() == [0x21, 0x0F]
    assert pack_bits(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b00000011]
    assert pack_bits(torch.tensor([0x1234]), 16).tolist() == [0x34, 0x12]


def parse_safetensors(raw: bytes) -> tuple[int, dict[str, dict[str, object]], bytes]:
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 13, 16])
def test_packed_file_size_layout_and_roundtrip(tmp_path: Path, scheme: Scheme, gran: Granularity,
                                               bits: int) -> None:
    """KMR.quant.packed-format: file size = 8 + N + sum ceil(bits_e / 8) over the meter's
    entries; the codes decode by the stated layout (parsed by hand here) to the kept codes; and
    load_packed reproduces every state-dict tensor of the rule's model bit for bit."""
    m = model()
    q = UniformQuantization(scheme, gran, group_size=2).apply(m, "bits", bits)
    path = tmp_path / "q.safetensors"
    size = save_packed(q, path)
    raw = path.read_bytes()
    n, header, data = parse_safetensors(raw)
    entries = storage_entries(q)
    assert size == len(raw) == 8 + n + sum(-(-e.bits // 8) for e in entries)
    assert header_bytes(path) == 8 + n and packed_data_bytes(q) == len(data)
    assert sum(e.bits for e in entries) == storage_bits(q)
    assert {e.key for e in entries} == set(header) - {"__metadata__"}
    qmin = -(2 ** (bits - 1) - 1) if scheme == "symmetric" else 0
    for idx in (0, 4, 5):
        name = f"{idx}.weight"
        kc = kept_codes(q.get_submodule(str(idx)), "weight")
        assert kc is not None
        h = header[name + ":codes"]
        assert h["dtype"] == "U8"
        offsets = h["data_offsets"]
        assert isinstance(offsets, list)
        lo_, hi_ = int(offsets[0]), int(offsets[1])
        stream = int.from_bytes(data[lo_:hi_], "little")
        count = kc.codes.numel()
        codes = [((stream >> (i * bits)) & (2**bits - 1)) + qmin for i in range(count)]
        assert codes == kc.codes.reshape(-1).tolist()
        assert stream >> (count * bits) == 0  # padding bits are zero
        assert (name + ":zero_points" in header) == (scheme == "asymmetric")
    loaded = load_packed(path)
    sd = q.state_dict()
    assert list(loaded) == list(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(loaded[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def test_packed_file_is_deterministic_and_tied(tmp_path: Path) -> None:
    """KMR.quant.packed-format KMR.rule.deterministic: equal models give equal file bytes; a tied
    weight is stored once and loads under both names."""
    a, b = nn.Linear(4, 4), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    q = UniformQuantization("asymmetric", "channel").apply(nn.Sequential(a, b), "bits", 5)
    save_packed(q, tmp_path / "a")
    save_packed(UniformQuantization("asymmetric", "channel").apply(nn.Sequential(a, b), "bits", 5), tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    loaded = load_packed(tmp_path / "a")
    assert torch.equal(loaded["1.weight"], q.get_parameter("0.weight").detach())
    assert set(loaded) == {"0.weight", "0.bias", "1.weight"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_packed_other_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    """KMR.quant.packed-format KMR.quant.dtype: the loaded weight is the fp32 dequantization cast
    to the parameter's dtype, equal to the rule's weight."""
    q = UniformQuantization("symmetric", "tensor").apply(model().to(dtype), "bits", 4)
    save_packed(q, tmp_path / "f")
    loaded = load_packed(tmp_path / "f")
    w = q.get_parameter("4.weight").detach()
    assert loaded["4.weight"].dtype == dtype
    assert torch.equal(loaded["4.weight"].view(torch.uint8), w.view(torch.uint8))


# ---------------------------------------------------------------- composed meter
def composed_expected(q: nn.Module, quant: tuple[int, Scheme, Granularity, int] | None) -> int:
    total = 0
    for name, t in q.state_dict(keep_vars=True).items():
        n = t.numel()
        if not isinstance(t, nn.Parameter):
            total += n * WIDTH[t.dtype]
            continue
        nnz = int(np.count_nonzero(t.detach().numpy()))  # for a quantized weight: dq != 0 iff q != zp
        if quant is not None and name.endswith("weight") and t.dim() >= 2:
            bits, scheme, gran, g = quant
            groups = groups_of(tuple(t.shape), gran, g)
            side = groups * 32 + (groups * bits if scheme == "asymmetric" else 0)
            total += min(n * bits + side, n + nnz * bits + side)
        else:
            w = WIDTH[t.dtype]
            total += min(n * w, n + nnz * w)
    return total


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_composed_storage(scheme: Scheme, gran: Granularity, sparsity: float) -> None:
    """KMR.quant.composed-storage: per parameter min(dense, n-bit bitmap + nnz*b + scales/zps);
    never above storage_bits; pruning the float model lowers it once the bitmap pays off."""
    m = model()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name in ("0.weight", "4.weight", "5.weight"):
            w = m.get_parameter(name)
            w[torch.from_numpy(rng.random(tuple(w.shape)) < sparsity)] = 0.0
    float_cost = composed_storage_bits(m)
    assert float_cost == composed_expected(m, None) and composed_storage_meter()(m) == float_cost
    if sparsity >= 0.5:
        assert float_cost < storage_bits(m)
    for b in (2, 4, 8, 16):
        q = UniformQuantization(scheme, gran, group_size=2).apply(m, "bits", b)
        c = composed_storage_bits(q)
        assert c == composed_expected(q, (b, scheme, gran, 2))
        assert c <= storage_bits(q)
