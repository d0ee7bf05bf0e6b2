"""What a run leaves on disk and how it comes back (``KMR.compress.artifacts``,
``KMR.compress.packed``, ``KMR.compress.load``): ``manifest.json`` (how to rebuild the module
tree from the factory or a base model) and ``model.safetensors`` (every tensor in the packed
encoding the composed storage meter counts). JSON and safetensors only, never pickle."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from kmr_ref.compress.config import SPEC_VERSION
from kmr_ref.core.errors import KMRError
from kmr_ref.methods.early_exit import EarlyExit
from kmr_ref.methods.lora import LoRALinear
from kmr_ref.methods.lowrank import LowRankFactors
from kmr_ref.methods.quantization import (
    CODES_SUFFIX,
    RECORDS_ATTR,
    SCALE_SUFFIX,
    ZP_SUFFIX,
    QuantRecord,
    code_range,
    kept_codes,
)
from kmr_ref.methods.storage import dtype_bits, pack_bits, state_tensors, unpack_bits
from kmr_ref.methods.structured_heads import HeadPrunedAttention

ARTIFACTS = "KMR.compress.artifacts"
PACKED = "KMR.compress.packed"
LOAD = "KMR.compress.load"
MANIFEST_FILE, MODEL_FILE, DENSE_FILE = "manifest.json", "model.safetensors", "model.dense.safetensors"
FORMAT = "kmr-run/1"
CHUNK = 1 << 20  # values packed per call: a multiple of 8, so chunks meet at byte boundaries
_SIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "num_features", "groups",
               "num_attention_heads", "all_head_size", "use_nested_tensor")  # the last three: KMR.heads.*


class LoadError(KMRError, ValueError):
    """A run directory that cannot be rebuilt into a model (``KMR.compress.load``)."""


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise LoadError(LOAD, f"unknown dtype {name!r} in the manifest")
    return dt


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# Bit packing in chunks (the stream of KMR.quant.packed-format; bounded memory)


def pack(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values < 2^bits as one LSB-first bitstream (``KMR.quant.packed-format``)."""
    flat = u.reshape(-1)
    parts = [pack_bits(flat[i:i + CHUNK], bits) for i in range(0, flat.numel(), CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def unpack(buf: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``count`` values as int64."""
    step = CHUNK * bits // 8
    parts = [unpack_bits(buf[j * step:(j + 1) * step], bits, min(CHUNK, count - i))
             for j, i in enumerate(range(0, count, CHUNK))]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# Hashes (KMR.compress.resume)


def model_digest(model: nn.Module) -> str:
    """sha256 over ``state_dict()``: each name, dtype, shape and the raw bytes, in order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{_dtype_name(t.dtype)}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Module changes (the model's architecture relative to M_0)


def _layer_spec(m: nn.Module) -> dict[str, Any]:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    common = {"type": type(m).__name__, "bias": m.bias is not None, "dtype": _dtype_name(w.dtype)}
    if isinstance(m, nn.Linear):
        return {**common, "in_features": m.in_features, "out_features": m.out_features}
    assert isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    return {**common, "in_channels": m.in_channels, "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size), "stride": list(m.stride),
            "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "padding_mode": m.padding_mode}


def _build_layer(spec: dict[str, Any], requires_grad: bool) -> nn.Module:
    kind, dt = spec["type"], _dtype(spec["dtype"])
    m: nn.Module
    if kind == "Linear":
        m = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dt)
    elif kind in ("Conv1d", "Conv2d", "Conv3d"):
        cls = getattr(nn, kind)
        pad = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
        m = cls(spec["in_channels"], spec["out_channels"], tuple(spec["kernel_size"]), stride=tuple(spec["stride"]),
                padding=pad, dilation=tuple(spec["dilation"]), groups=spec["groups"], bias=spec["bias"],
                padding_mode=spec["padding_mode"], dtype=dt)
    else:
        raise LoadError(LOAD, f"unknown layer type {kind!r} in the manifest")
    for p in m.parameters():
        p.requires_grad_(requires_grad)
    return m


def module_changes(new: nn.Module, base: nn.Module) -> tuple[list[dict[str, Any]], str | None]:
    """``KMR.compress.artifacts``: the replacements that turn ``base`` (M_0) into ``new``'s
    architecture: ``lowrank`` (a layer became :class:`LowRankFactors`) and ``resize`` (a module of
    the same type whose size attributes and own tensor shapes changed: structured pruning).
    Returns (changes, None), or ([], reason) when some other change cannot be described."""
    base_mods = dict(base.named_modules(remove_duplicate=False))
    out: list[dict[str, Any]] = []
    replaced: list[str] = []
    truncated: dict[str, int] = {}
    for path, m in new.named_modules(remove_duplicate=False):
        if any(path.startswith(r + ".") for r in replaced):
            continue
        b = base_mods.get(path)
        if isinstance(m, LowRankFactors) and not isinstance(b, LowRankFactors) and path:
            out.append({"path": path, "kind": "lowrank", "layers": [_layer_spec(m[0]), _layer_spec(m[1])]})
            replaced.append(path)
            continue
        if type(m) is HeadPrunedAttention and type(b) is not HeadPrunedAttention and path:  # KMR.heads.mha-module
            out.append({"path": path, "kind": "heads", "spec": m.spec()})
            replaced.append(path)
            continue
        if isinstance(m, LoRALinear) and type(b) is nn.Linear and path:  # KMR.compress.training-artifacts
            out.append({"path": path, "kind": "lora", "rank": m.rank, "layer": _layer_spec(m.base)})
            replaced.append(path)
            continue
        if b is None or type(b) is not type(m):
            return [], f"module {path!r} is a {type(m).__name__}, M_0 has {type(b).__name__}"
        if isinstance(m, nn.ModuleList | nn.Sequential) and len(m) < len(b) \
                and list(m._modules) == [str(i) for i in range(len(m))]:  # KMR.distill.layers-init: fewer layers
            out.append({"path": path, "kind": "truncate", "length": len(m)})
            truncated[path] = len(m)
        attrs = {a: getattr(m, a) for a in _SIZE_ATTRS if hasattr(m, a) and getattr(m, a) != getattr(b, a)}
        shapes: dict[str, list[int]] = {}
        for leaf, t in [*m._parameters.items(), *m._buffers.items()]:
            bt = b._parameters.get(leaf, b._buffers.get(leaf))
            if t is not None and bt is not None and tuple(t.shape) != tuple(bt.shape):
                shapes[leaf] = list(t.shape)
        if attrs or shapes:
            out.append({"path": path, "kind": "resize", "attrs": attrs, "tensors": shapes})
    have = {p for p, _ in new.named_modules(remove_duplicate=False)}
    for path in base_mods:  # KMR.compress.training-artifacts: a module M_0 lost must be a recorded change
        if path in have or any(path.startswith(r + ".") for r in replaced):
            continue
        parent, _, idx = path.rpartition(".")
        for t, length in truncated.items():
            pre = t + "." if t else ""
            child = path[len(pre):].split(".")[0] if path.startswith(pre) else ""
            if child.isdigit() and int(child) >= length:
                break
        else:
            return [], f"module {path!r} of M_0 is missing from the model (parent {parent!r}, {idx!r})"
    return out, None


def _exit_change(model: EarlyExit) -> dict[str, Any]:
    """``KMR.exit.model``: what rebuilds an ``EarlyExit`` around the rebuilt backbone."""
    heads = []
    for p in model.positions:
        head = model.heads[str(p)]
        assert isinstance(head, nn.Sequential) and isinstance(head[1], nn.Linear)
        heads.append(_layer_spec(head[1]))
    return {"path": "", "kind": "early-exit", "positions": list(model.positions),
            "threshold": f"{model.threshold.numerator}/{model.threshold.denominator}", "heads": heads}


def _wrap_exit(model: nn.Module, ch: dict[str, Any]) -> nn.Module:
    if not isinstance(model, nn.Sequential):
        raise LoadError(LOAD, "an early-exit run needs a Sequential base model")
    heads = nn.ModuleDict({str(p): nn.Sequential(nn.Flatten(), _build_layer(spec, False))
                           for p, spec in zip(ch["positions"], ch["heads"], strict=True)})
    return EarlyExit(model, heads, tuple(ch["positions"]), Fraction(ch["threshold"]))


def _apply_changes(model: nn.Module, changes: Sequence[dict[str, Any]]) -> None:
    for ch in changes:
        path = ch["path"]
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            raise LoadError(LOAD, f"the base model has no module {path!r}") from None
        if ch["kind"] == "lowrank":
            w = getattr(mod, "weight", None)
            req = bool(w.requires_grad) if isinstance(w, torch.Tensor) else True
            new = LowRankFactors(*(_build_layer(s, req) for s in ch["layers"]))
            *parent, leaf = path.split(".")
            (model.get_submodule(".".join(parent)) if parent else model)._modules[leaf] = new
        elif ch["kind"] == "heads":
            w = getattr(mod, "in_proj_weight", None)
            req = bool(w.requires_grad) if isinstance(w, torch.Tensor) else True
            hp = HeadPrunedAttention.from_spec(ch["spec"], req)
            hp.train(mod.training)
            *parent, leaf = path.split(".")
            (model.get_submodule(".".join(parent)) if parent else model)._modules[leaf] = hp
        elif ch["kind"] == "resize":
            for a, v in ch["attrs"].items():
                setattr(mod, a, v)
            for leaf, shape in ch["tensors"].items():
                if leaf in mod._parameters and mod._parameters[leaf] is not None:
                    old = mod._parameters[leaf]
                    assert old is not None
                    mod._parameters[leaf] = nn.Parameter(torch.empty(shape, dtype=old.dtype),
                                                         requires_grad=old.requires_grad)
                elif mod._buffers.get(leaf) is not None:
                    oldb = mod._buffers[leaf]
                    assert oldb is not None
                    mod._buffers[leaf] = torch.empty(shape, dtype=oldb.dtype)
                else:
                    raise LoadError(LOAD, f"module {path!r} has no tensor {leaf!r}")
        elif ch["kind"] == "lora":  # KMR.lora.adapter: the trained A and B are read from the file
            lin = _build_layer(ch["layer"], False)
            r = int(ch["rank"])
            assert isinstance(lin, nn.Linear)
            ad = LoRALinear(lin, torch.zeros(r, lin.in_features, dtype=lin.weight.dtype),
                            torch.zeros(lin.out_features, r, dtype=lin.weight.dtype))
            for p in ad.parameters():
                p.requires_grad_(False)
            *parent, leaf = path.split(".")
            (model.get_submodule(".".join(parent)) if parent else model)._modules[leaf] = ad
        elif ch["kind"] == "truncate":
            for k in list(mod._modules)[int(ch["length"]):]:
                del mod._modules[k]
        elif ch["kind"] == "early-exit":
            pass  # applied last, around the rebuilt backbone (load)
        else:
            raise LoadError(LOAD, f"unknown change kind {ch['kind']!r}")


# ---------------------------------------------------------------------------------------------
# The packed tensors (KMR.compress.packed)


def packed_model(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], dict[str, str]]:
    """``KMR.compress.packed``: the arrays of ``model.safetensors``, one manifest entry per
    distinct state tensor, and the aliases (tied names). Per parameter the cheaper of dense and
    bitmap + nonzeros, exactly as ``KMR.quant.composed-storage`` counts it (a tie stays dense);
    a float tensor holding a -0.0 is stored dense (a bitmap would turn it into +0.0)."""
    states, aliases = state_tensors(model)
    arrays: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for st in states:
        t = st.tensor.detach().cpu().contiguous()
        n = t.numel()
        e: dict[str, Any] = {"name": st.name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
        kc = kept_codes(st.owner, st.leaf) if st.is_param else None
        if kc is not None:
            r = kc.record
            qmin, _ = code_range(r.bits, r.scheme)
            codes = kc.codes.detach().cpu().to(torch.int64)
            zp = kc.zp.detach().cpu().to(torch.int64)
            mask = (codes != zp[:, None]).reshape(-1)
            nnz = int(mask.sum())
            sparse = n + nnz * r.bits < n * r.bits  # KMR.compress.packed: the meter's min, ties dense
            e |= {"encoding": "codes-sparse" if sparse else "codes", "bits": r.bits, "scheme": r.scheme,
                  "granularity": r.granularity, "group_size": r.group_size, "groups": r.num_groups}
            if sparse:
                arrays[st.name + ":bitmap"] = pack(mask.to(torch.int64), 1)
                arrays[st.name + ":codes"] = pack(codes.reshape(-1)[mask] - qmin, r.bits)
            else:
                arrays[st.name + ":codes"] = pack(codes - qmin, r.bits)
            arrays[st.name + ":scales"] = kc.scale.detach().cpu().to(torch.float32).contiguous().clone()
            if r.scheme == "asymmetric":
                arrays[st.name + ":zero_points"] = pack(zp - qmin, r.bits)
        else:
            w = dtype_bits(t.dtype)
            flat = t.reshape(-1)
            sparse = False
            if st.is_param and t.is_floating_point() and n:
                mask = flat != 0
                nnz = int(mask.sum())
                negzero = bool(((flat == 0) & torch.signbit(flat)).any())
                sparse = n + nnz * w < n * w and not negzero
            if sparse:
                e["encoding"] = "sparse"
                arrays[st.name + ":bitmap"] = pack(mask.to(torch.int64), 1)
                arrays[st.name + ":values"] = flat[mask].clone()
            else:
                e["encoding"] = "dense"
                arrays[st.name] = t.clone()
        entries.append(e)
    return arrays, entries, aliases


def _decode(f: Any, e: dict[str, Any]) -> tuple[torch.Tensor, tuple[QuantRecord, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor] | None]:
    name, enc = e["name"], e["encoding"]
    shape, dt = tuple(e["shape"]), _dtype(e["dtype"])
    n = 1
    for s in shape:
        n *= s
    if enc == "dense":
        return f.get_tensor(name), None
    if enc == "sparse":
        mask = unpack(f.get_tensor(name + ":bitmap"), 1, n).bool()
        out = torch.zeros(n, dtype=dt)
        out[mask] = f.get_tensor(name + ":values")
        return out.reshape(shape), None
    if enc not in ("codes", "codes-sparse"):
        raise LoadError(LOAD, f"unknown encoding {enc!r} of {name!r}")
    bits, g, length, scheme = int(e["bits"]), int(e["groups"]), int(e["group_size"]), e["scheme"]
    qmin, _ = code_range(bits, scheme)
    if scheme == "asymmetric":
        zp = unpack(f.get_tensor(name + ":zero_points"), bits, g) + qmin
    else:
        zp = torch.zeros(g, dtype=torch.int64)
    if enc == "codes":
        codes = unpack(f.get_tensor(name + ":codes"), bits, g * length) + qmin
    else:
        mask = unpack(f.get_tensor(name + ":bitmap"), 1, g * length).bool()
        codes = zp[:, None].expand(g, length).reshape(-1).clone()
        codes[mask] = unpack(f.get_tensor(name + ":codes"), bits, int(mask.sum())) + qmin
    scale = f.get_tensor(name + ":scales").to(torch.float32)
    rec = QuantRecord(bits, scheme, e["granularity"], length, g, shape, dt)
    from kmr_ref.methods.quantization import KeptCodes

    kc = KeptCodes(rec, codes.reshape(g, length).to(torch.int32), scale, zp.to(torch.int32))
    return kc.dequantized(), (rec, kc.codes, kc.scale, kc.zp)


# ---------------------------------------------------------------------------------------------
# Save and load


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_model(model: nn.Module, path: Path) -> None:
    """The dense export (``KMR.compress.artifacts``, ``--dense``): the model's ``state_dict`` as
    safetensors, written to a temporary file and renamed over ``path``. Entries that share storage
    with an earlier entry are stored as copies (safetensors refuses shared storage)."""
    seen: set[tuple[str, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        t = v.detach().contiguous()
        key = (str(t.device), t.untyped_storage().data_ptr())
        tensors[k] = t.clone() if key in seen and t.numel() > 0 else t
        seen.add(key)
    _write_atomic(Path(path), st_save(tensors))


def save_run(model: nn.Module, base: nn.Module, out: Path, factory: str | None, dense: bool = False) -> dict[str, Any]:
    """``KMR.compress.artifacts``: write ``model.safetensors`` (packed), ``manifest.json`` and,
    with ``dense``, ``model.dense.safetensors``; returns the manifest."""
    if isinstance(model, EarlyExit) and not isinstance(base, EarlyExit):  # KMR.exit.model
        changes, why = module_changes(model.backbone, base)
        changes = [*changes, _exit_change(model)]
    else:
        changes, why = module_changes(model, base)
    arrays, entries, aliases = packed_model(model)
    data = st_save(arrays, metadata={"format": FORMAT})
    manifest: dict[str, Any] = {
        "format": FORMAT, "kmr_spec": SPEC_VERSION, "factory": factory,
        "base": {k: [_dtype_name(v.dtype), list(v.shape)] for k, v in base.state_dict().items()},
        "training": model.training, "modules": changes, "rebuild_refused": why,
        "tensors": entries, "aliases": aliases,
        "files": {"model": MODEL_FILE, "dense": DENSE_FILE if dense else None},
        "model_bytes": len(data),
    }
    _write_atomic(out / MODEL_FILE, data)
    if dense:
        save_model(model, out / DENSE_FILE)
    _write_atomic(out / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def load(run_dir: str | Path, model: nn.Module | None = None) -> nn.Module:
    """``KMR.compress.load``: the compressed model of a run directory, rebuilt from the factory
    the manifest names (or from ``model``, the base model the run started from, which is left
    untouched) with the recorded module changes and every tensor decoded bit for bit; quantized
    parameters carry their codes again (``KMR.quant.codes-kept``)."""
    d = Path(run_dir)
    try:
        man = json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoadError(LOAD, f"{str(d)!r} has no {MANIFEST_FILE}: not a finished run directory") from None
    if man.get("format") != FORMAT:
        raise LoadError(LOAD, f"{d / MANIFEST_FILE}: not a {FORMAT} manifest")
    if man.get("rebuild_refused"):
        raise LoadError(LOAD, f"this run's architecture cannot be rebuilt: {man['rebuild_refused']}")
    if model is None:
        if man.get("factory") is None:
            raise LoadError(LOAD, "the run was not built from a TOML factory: pass the base model, "
                                  "load(run_dir, model=base)")
        from kmr_ref.compress.build import call_factory

        m = call_factory(man["factory"])
    else:
        if not isinstance(model, nn.Module):
            raise LoadError(LOAD, f"model must be a torch.nn.Module, got {type(model).__name__}")
        m = copy.deepcopy(model)  # the caller's model is never touched
    have = {k: [_dtype_name(v.dtype), list(v.shape)] for k, v in m.state_dict().items()}
    if have != man["base"]:
        diff = [k for k in sorted(set(have) | set(man["base"])) if have.get(k) != man["base"].get(k)]
        raise LoadError(LOAD, f"the base model does not match the run's M_0 (names, dtypes or shapes differ: "
                              f"{diff[:6]})")
    _apply_changes(m, man["modules"])
    for ch in man["modules"]:
        if ch["kind"] == "early-exit":  # KMR.exit.model: the heads around the rebuilt backbone
            m = _wrap_exit(m, ch)
    sd = m.state_dict(keep_vars=True)
    with safe_open(str(d / man["files"]["model"]), framework="pt") as f, torch.no_grad():
        for e in man["tensors"]:
            t, quant = _decode(f, e)
            target = sd.get(e["name"])
            if target is None or tuple(target.shape) != tuple(t.shape) or target.dtype != t.dtype:
                raise LoadError(LOAD, f"tensor {e['name']!r} does not fit the rebuilt model")
            target.copy_(t)
            if quant is not None:
                _attach_codes(m, e["name"], *quant)
        for alias, first in man["aliases"].items():
            if sd[alias] is not sd[first]:
                sd[alias].copy_(sd[first])
    m.train(bool(man["training"]))
    return m


def _attach_codes(model: nn.Module, name: str, rec: QuantRecord, codes: torch.Tensor, scale: torch.Tensor,
                  zp: torch.Tensor) -> None:
    """The codes of a quantized parameter, kept on its module as the quantization rule keeps them."""
    *path, leaf = name.split(".")
    owner = model.get_submodule(".".join(path)) if path else model
    owner.register_buffer(leaf + CODES_SUFFIX, codes, persistent=False)
    owner.register_buffer(leaf + SCALE_SUFFIX, scale, persistent=False)
    owner.register_buffer(leaf + ZP_SUFFIX, zp, persistent=False)
    old = owner.__dict__.get(RECORDS_ATTR)
    recs = dict(old) if isinstance(old, dict) else {}
    recs[leaf] = rec
    object.__setattr__(owner, RECORDS_ATTR, recs)
    if kept_codes(owner, leaf) is None:
        raise LoadError(LOAD, f"{name}: the stored codes do not reproduce the stored weight")
