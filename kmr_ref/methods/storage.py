"""Storage meters in exact bits and the packed file format (``spec/methods/quantization.md``).

``storage_bits`` is the cost meter of the quantization triple (``KMR.quant.storage-bits``);
``composed_storage_bits`` is the meter of prune-then-quantize (``KMR.quant.composed-storage``);
``save_packed`` / ``load_packed`` are a real file whose data section has exactly
``sum(ceil(bits_e / 8))`` bytes over the meter's entries (``KMR.quant.packed-format``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from kmr_ref.core.meters import CostMeter
from kmr_ref.methods.quantization import KeptCodes, code_range, dequantize_groups, kept_codes

EntryKind = Literal["float", "codes", "scales", "zero-points"]
FORMAT = "kmr-packed/1"
META_KEY = "kmr"
CODES_KEY, SCALES_KEY, ZP_KEY = ":codes", ":scales", ":zero_points"


@dataclass(frozen=True)
class StorageEntry:
    """One stored array: its key in the packed file, what it holds, and its exact size in bits."""

    key: str
    kind: EntryKind
    bits: int


@dataclass(frozen=True)
class StateTensor:
    """One distinct tensor of ``state_dict()``: its first name, owner module and leaf name."""

    name: str
    tensor: torch.Tensor
    owner: nn.Module
    leaf: str
    is_param: bool


def dtype_bits(dtype: torch.dtype) -> int:
    """``KMR.quant.storage-bits``: the width of one element of ``dtype`` (bool = 8)."""
    return torch.empty(0, dtype=dtype).element_size() * 8


def state_tensors(model: nn.Module) -> tuple[list[StateTensor], dict[str, str]]:
    """``KMR.quant.storage-bits``: the distinct tensors of ``model.state_dict()`` (parameters and
    persistent buffers) in state-dict order, each at its first name; plus {alias: first name} for
    names that repeat an earlier tensor (tied weights)."""
    first: dict[int, str] = {}
    out: list[StateTensor] = []
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
            continue
        first[id(t)] = name
        mpath, _, leaf = name.rpartition(".")
        owner = model.get_submodule(mpath) if mpath else model
        out.append(StateTensor(name, t, owner, leaf, owner._parameters.get(leaf) is t))
    return out, aliases


def _kept(st: StateTensor) -> KeptCodes | None:
    return kept_codes(st.owner, st.leaf) if st.is_param else None


def storage_entries(model: nn.Module) -> list[StorageEntry]:
    """``KMR.quant.storage-bits``: per quantized parameter ``codes`` (n·b), ``scales`` (G·32) and,
    asymmetric only, ``zero-points`` (G·b); every other state tensor numel · dtype bits."""
    entries: list[StorageEntry] = []
    for st in state_tensors(model)[0]:
        kc = _kept(st)
        if kc is None:
            entries.append(StorageEntry(st.name, "float", st.tensor.numel() * dtype_bits(st.tensor.dtype)))
            continue
        r = kc.record
        entries.append(StorageEntry(st.name + CODES_KEY, "codes", r.numel * r.bits))
        entries.append(StorageEntry(st.name + SCALES_KEY, "scales", r.num_groups * 32))
        if r.scheme == "asymmetric":
            entries.append(StorageEntry(st.name + ZP_KEY, "zero-points", r.num_groups * r.bits))
    return entries


def storage_bits(model: nn.Module) -> int:
    """``KMR.quant.storage-bits``: the exact storage of ``model`` in bits."""
    return sum(e.bits for e in storage_entries(model))


def storage_meter() -> CostMeter[nn.Module]:
    return CostMeter("storage_bits", storage_bits, unit="bit")


def packed_data_bytes(model: nn.Module) -> int:
    """``KMR.quant.packed-format``: the data section of :func:`save_packed`, sum of ceil(bits/8)."""
    return sum(-(-e.bits // 8) for e in storage_entries(model))


def composed_storage_bits(model: nn.Module) -> int:
    """``KMR.quant.composed-storage``: per parameter the cheaper of dense and bitmap-sparse
    storage; persistent buffers dense."""
    total = 0
    for st in state_tensors(model)[0]:
        n = st.tensor.numel()
        if not st.is_param:
            total += n * dtype_bits(st.tensor.dtype)
            continue
        kc = _kept(st)
        if kc is None:
            width, side = dtype_bits(st.tensor.dtype), 0
            nnz = int(torch.count_nonzero(st.tensor.detach()))  # -0.0 counts as zero
        else:
            r = kc.record
            width = r.bits
            side = r.num_groups * 32 + (r.num_groups * r.bits if r.scheme == "asymmetric" else 0)
            nnz = int(torch.count_nonzero(kc.codes != kc.zp[:, None]))  # q != zp <=> dq != 0
        dense = n * width + side
        sparse = n + nnz * width + side  # n-bit bitmap + the nonzero codes
        total += min(dense, sparse)
    return total


def composed_storage_meter() -> CostMeter[nn.Module]:
    return CostMeter("composed_storage_bits", composed_storage_bits, unit="bit")


# ---------------------------------------------------------------------------------------------
# Packed format


def pack_bits(u: torch.Tensor, bits: int) -> torch.Tensor:
    """``KMR.quant.packed-format``: unsigned values < 2^bits as an LSB-first bitstream: value i
    occupies stream bits [i·b, (i+1)·b), its least significant bit first; stream bit j is bit
    (j mod 8) of byte floor(j / 8); the unused high bits of the last byte are 0."""
    a = u.detach().reshape(-1).to(torch.int64).cpu().numpy()
    if a.size and (a.min() < 0 or a.max() >= 2**bits):
        raise ValueError(f"values out of [0, 2^{bits})")
    bitarr = ((a[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(bitarr, bitorder="little").copy())


def unpack_bits(buf: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` unsigned values as int64."""
    raw = np.unpackbits(buf.detach().cpu().numpy().astype(np.uint8), bitorder="little")
    bitarr = raw[: count * bits].reshape(count, bits).astype(np.int64)
    return torch.from_numpy(bitarr @ (np.int64(1) << np.arange(bits, dtype=np.int64)))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def packed_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The arrays and the metadata that :func:`save_packed` writes."""
    states, aliases = state_tensors(model)
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for st in states:
        kc = _kept(st)
        if kc is None:
            tensors[st.name] = st.tensor.detach().cpu().contiguous().clone()
            entries.append({"name": st.name, "kind": "float"})
            continue
        r = kc.record
        qmin, _ = code_range(r.bits, r.scheme)
        tensors[st.name + CODES_KEY] = pack_bits(kc.codes.to(torch.int64) - qmin, r.bits)
        tensors[st.name + SCALES_KEY] = kc.scale.detach().cpu().to(torch.float32).contiguous().clone()
        if r.scheme == "asymmetric":
            tensors[st.name + ZP_KEY] = pack_bits(kc.zp.to(torch.int64) - qmin, r.bits)
        entries.append({"name": st.name, "kind": "quantized", "bits": r.bits, "scheme": r.scheme,
                        "granularity": r.granularity, "groups": r.num_groups, "group_size": r.group_size,
                        "shape": list(r.shape), "dtype": _dtype_name(r.dtype)})
    meta = {"format": FORMAT, "entries": entries, "aliases": aliases}
    return tensors, {META_KEY: json.dumps(meta, sort_keys=True, separators=(",", ":"))}


def save_packed(model: nn.Module, path: str | Path) -> int:
    """``KMR.quant.packed-format``: write ``model`` as a safetensors file; returns its size in bytes."""
    tensors, metadata = packed_tensors(model)
    data = st_save(tensors, metadata=metadata)
    dest = Path(path)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)  # atomic: an interrupted save never leaves a half-written file at `path`
    return len(data)


def header_bytes(path: str | Path) -> int:
    """8 + N, where N is the little-endian u64 the file starts with (the JSON header's length)."""
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def load_packed(path: str | Path) -> dict[str, torch.Tensor]:
    """``KMR.quant.packed-format``: {state-dict name: tensor}, quantized parameters dequantized
    (``KMR.quant.dequant``) and cast to their dtype; tied names map to the same tensor."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        out: dict[str, torch.Tensor] = {}
        for e in meta["entries"]:
            name = e["name"]
            if e["kind"] == "float":
                out[name] = f.get_tensor(name)
                continue
            bits, g, length = int(e["bits"]), int(e["groups"]), int(e["group_size"])
            qmin, _ = code_range(bits, e["scheme"])
            codes = unpack_bits(f.get_tensor(name + CODES_KEY), bits, g * length) + qmin
            scale = f.get_tensor(name + SCALES_KEY)
            if e["scheme"] == "asymmetric":
                zp = unpack_bits(f.get_tensor(name + ZP_KEY), bits, g) + qmin
            else:
                zp = torch.zeros(g, dtype=torch.int64)
            dq = dequantize_groups(codes.reshape(g, length), scale, zp)
            out[name] = dq.reshape(e["shape"]).to(getattr(torch, e["dtype"]))
        for alias, first in meta["aliases"].items():
            out[alias] = out[first]
    return out

