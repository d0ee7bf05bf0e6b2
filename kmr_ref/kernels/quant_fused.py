"""Per-channel / per-group affine quantization: observe and quantize fused, one read of the weight.

Equal, bit for bit, to :func:`kmr_ref.methods.quantization.quantize_groups` followed by
``dequantize_groups`` (``KMR.quant.range``, ``KMR.quant.scale``, ``KMR.quant.scale-floor``,
``KMR.quant.zero-point``, ``KMR.quant.rounding``, ``KMR.quant.clamp``, ``KMR.quant.dequant``);
``tests/test_kernels.py`` proves it. The (G, L) weight is cut into blocks of whole rows that fit in
the cache a core can count on; one worker per core takes blocks (:mod:`kmr_ref.kernels.parallel`),
and for each block, while it is in cache:

1. *observe*: the per-row min and max. On CPU ``amin`` then ``amax``: the second reads the cache,
   so the weight is read from memory once; ``torch.aminmax(dim=1)`` is a single op but, on CPU
   with torch 2.13, ~20x slower than the two vectorized reductions on a cache-resident 2 MiB block
   (1245 us vs 30 + 34 us, AMD EPYC, one thread, measured). On other devices one ``aminmax`` (one
   read of device memory). Then the rows' scale, inverse scale and zero point with the reference's
   own fp32 operations on (rows,) vectors;
2. *quantize*: multiply by the inverse scale (the spec's formula has no per-element division),
   round half to even, add the zero point and clamp (asymmetric; symmetric codes never clamp,
   ``KMR.quant.clamp``), store the codes in the narrowest integer dtype, and store the dequantized
   weight from the same block. Eager: five or six ATen ops on the cache-resident block; with
   ``compile=True``: one ``torch.compile``d loop per block (:func:`_fused_block`), which rounds to
   int32 and dequantizes from the integer (int -> float gives +0.0, so no ``-0.0`` fix is needed,
   and no fast-math flag of the generated code can change a bit: each output is one IEEE
   multiply, one round, integer adds and clamps, and one multiply of an exact integer).

The outputs are allocated by :func:`kmr_ref.kernels.parallel.empty_out` (pages pre-faulted in
parallel on CPU: page faults on the fresh output were much of the cost). Rows longer than a block are
observed whole (two reductions over the row) and quantized in column blocks. Every step is one IEEE
binary32 operation on integers or on the values the reference computes, so the results are
identical: the rounded product ``r`` satisfies |r| <= 2^17 and ``r + zp``, ``q - zp`` are exact in
fp32 (the reference computes them in int64). The one trap, ``-0.0``: ``round(-0.3)`` is ``-0.0`` in
fp32 but 0 in int64; the symmetric path adds ``+0.0`` (which maps -0.0 to +0.0 and changes nothing
else) before the dequantization multiply, the asymmetric path's ``- zp`` does the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kmr_ref.core.errors import RuleInputError
from kmr_ref.kernels.parallel import Scratch, chunk_entries, empty_out, map_chunks, one_thread, workers_for
from kmr_ref.methods.quantization import SCALE_FLOOR, Granularity, Scheme, code_range, group_shape

__all__ = ["COMPILE_STATS", "FusedQuant", "codes_dtype", "quantize_groups", "quantize_tensor"]


@dataclass(frozen=True)
class FusedQuant:
    """``codes`` (G, L) in :func:`codes_dtype`, ``scale`` float32 (G,), ``zp`` int32 (G,),
    ``dequant`` float32 (G, L) (None when not asked for)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zp: torch.Tensor
    dequant: torch.Tensor | None


def codes_dtype(bits: int, scheme: Scheme) -> torch.dtype:
    """The narrowest integer dtype holding [qmin, qmax] (``KMR.quant.bits``)."""
    qmin, qmax = code_range(bits, scheme)
    for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return dt
    raise AssertionError("unreachable: bits <= 16")


def _qparams(lo_raw: torch.Tensor, hi_raw: torch.Tensor, qmin: int, qmax: int,
             scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale, inverse scale, zero point (int64) from the per-group min and max, with exactly the
    reference's fp32 operations on (G,) vectors."""
    zero = torch.zeros((), dtype=torch.float32, device=lo_raw.device)
    lo = torch.minimum(lo_raw, zero)  # KMR.quant.range
    hi = torch.maximum(hi_raw, zero)  # KMR.quant.range
    qmax_t = torch.full_like(lo, float(qmax))
    span = torch.maximum(-lo, hi) if scheme == "symmetric" else hi - lo  # KMR.quant.scale: fp32 ops
    scale = span / qmax_t  # KMR.quant.scale: one correctly rounded fp32 division
    scale = torch.maximum(scale, torch.full_like(scale, SCALE_FLOOR))  # KMR.quant.scale-floor
    inv = torch.ones_like(scale) / scale  # KMR.quant.rounding: one division per group
    if scheme == "symmetric":
        zp = torch.zeros_like(scale, dtype=torch.int64)
    else:
        zl = torch.round(lo * inv).to(torch.int64)  # KMR.quant.zero-point
        zp = torch.clamp(qmin - zl, qmin, qmax)  # KMR.quant.zero-point
    return scale, inv, zp


def _fused_block(x: torch.Tensor, inv: torch.Tensor, sc: torch.Tensor, zp: torch.Tensor, codes: torch.Tensor,
                 dq: torch.Tensor, qmin: int, qmax: int) -> None:
    """The quantize pass of one block as one loop (for ``torch.compile``): codes and dequantized
    weight written in place. ``zp`` int32 (rows, 1). Equal bit for bit to the eager ops: the same
    fp32 multiply and half-to-even round; ``r + zp`` and ``q - zp`` in int32 (|r| <= 2^17), the
    int -> float conversion exact and +0.0 for 0 (the reference's int64 ``q - zp``)."""
    q = torch.clamp(torch.round(x * inv).to(torch.int32) + zp, qmin, qmax)  # KMR.quant.rounding, KMR.quant.clamp
    codes.copy_(q)
    dq.copy_((q - zp).to(torch.float32) * sc)  # KMR.quant.dequant: one fp32 multiply


COMPILE_STATS: dict[str, float] = {"compiles": 0, "first_call_s": 0.0}  # this process, all devices
_compiled: dict[str, Callable[..., Any]] = {}
_compile_lock = threading.Lock()


Block = tuple[int, int, int, int]  # rows [r0, r1), columns [c0, c1)


def _row_blocks(g: int, length: int, chunk: int) -> list[list[Block]]:
    """Work items: a list of blocks sharing one observation — several whole rows (L <= chunk), or
    one row in column blocks (L > chunk)."""
    if length <= chunk:
        rows = max(1, chunk // length)
        return [[(r0, min(r0 + rows, g), 0, length)] for r0 in range(0, g, rows)]
    return [[(r, r + 1, c0, min(c0 + chunk, length)) for c0 in range(0, length, chunk)] for r in range(g)]


def _observe(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (min, max): ``amin`` + ``amax`` on CPU (the second from cache: faster there than
    ``aminmax``, see the module docstring), one ``aminmax`` elsewhere (one read of device memory)."""
    if rows.device.type == "cpu":
        return rows.amin(dim=1), rows.amax(dim=1)
    lo, hi = torch.aminmax(rows, dim=1)
    return lo, hi


@one_thread
def quantize_groups(w2d: torch.Tensor, bits: int, scheme: Scheme, *, dequant: bool = True,
                    out_codes_dtype: torch.dtype | None = None, chunk: int | None = None,
                    workers: int | None = None, compile: bool = False) -> FusedQuant:
    """Quantize each row of the float32 tensor ``w2d`` (G, L) as one group; equal to the reference
    ``quantize_groups`` (codes compared as integers) and ``dequantize_groups``. ``chunk``: entries
    per block (default from the cache size); ``workers``: threads (default: torch's thread count,
    at most the cores this process may use); ``compile``: the quantize
    pass of each block as one ``torch.compile``d loop instead of eager ops (opt-in: the first call
    in a process compiles, tens of seconds, timed into :data:`COMPILE_STATS`; the results are the
    same bits).

    The caller guarantees finite values with |w| <= 2^126 (``KMR.quant.nonfinite``,
    ``KMR.quant.magnitude``), as for the reference."""
    if w2d.dtype != torch.float32 or w2d.dim() != 2:
        raise TypeError("quantize_groups takes a 2-D float32 tensor")
    if w2d.numel() == 0:
        raise RuleInputError("KMR.quant.empty", "quantize_groups needs a non-empty tensor")
    qmin, qmax = code_range(bits, scheme)  # KMR.quant.bits
    g, length = w2d.shape
    w = w2d.detach()
    dev = w.device
    asym = scheme == "asymmetric"
    cdt = out_codes_dtype or codes_dtype(bits, scheme)
    nw = workers_for(dev, workers)
    codes = empty_out((g, length), cdt, dev)
    dq = empty_out((g, length), torch.float32, dev) if dequant else None
    scale = torch.empty(g, dtype=torch.float32, device=dev)
    zp = torch.empty(g, dtype=torch.int64, device=dev)
    ch = chunk or chunk_entries(dev, g * length, 4 + 4 + 1, nw)  # weight, dequant (the work buffer), codes
    fused = _compiled.get(dev.type) if compile else None

    def work(blocks: list[Block], s: Scratch) -> None:
        r0, r1 = blocks[0][0], blocks[0][1]
        rows = w[r0:r1]
        sc, inv, z = _qparams(*_observe(rows), qmin, qmax, scheme)  # in cache
        scale[r0:r1] = sc
        zp[r0:r1] = z
        inv_c, sc_c = inv[:, None], sc[:, None]
        if fused is not None:
            zpi_c = z.to(torch.int32)[:, None]
            for _, _, c0, c1 in blocks:
                d = (dq[r0:r1, c0:c1] if dq is not None
                     else s.buf("d", (r1 - r0) * (c1 - c0), torch.float32, dev, ch).view(r1 - r0, c1 - c0))
                fused(w[r0:r1, c0:c1], inv_c, sc_c, zpi_c, codes[r0:r1, c0:c1], d, qmin, qmax)
            return
        zpf_c = z.to(torch.float32)[:, None]  # exact: |zp| <= 65535
        for _, _, c0, c1 in blocks:
            x = w[r0:r1, c0:c1]
            # the work buffer is the block's own region of the dequantized output (one buffer less
            # in cache: 0.139 vs 0.149 s at 100M, medians of 10 interleaved rounds), else a scratch
            t = (dq[r0:r1, c0:c1] if dq is not None
                 else s.buf("t", x.numel(), torch.float32, dev, ch).view(r1 - r0, c1 - c0))
            torch.mul(x, inv_c, out=t)  # KMR.quant.rounding: fp32 multiply by inv_scale
            t.round_()  # KMR.quant.rounding: half to even
            if asym:
                t.add_(zpf_c)  # exact in fp32 (integers below 2^24); also maps -0.0 to +0.0
                t.clamp_(qmin, qmax)  # KMR.quant.clamp (symmetric codes never clamp: |r| <= qmax)
            codes[r0:r1, c0:c1].copy_(t)  # exact: integral values within the dtype's range
            if dq is not None:
                if asym:
                    t.sub_(zpf_c)  # q - zp, exact; x - x is +0.0
                else:  # q + 0.0 changes no bit except -0.0 -> +0.0, as the reference's int64 q - zp
                    t.add_(0.0)
                t.mul_(sc_c)  # KMR.quant.dequant: one fp32 multiply, in the output

    items = _row_blocks(g, length, ch)
    if compile and fused is None:  # first compiled call in this process: compile on the first block, timed
        with _compile_lock:
            fused = _compiled.get(dev.type)
            if fused is None:
                fused = torch.compile(_fused_block, dynamic=True)
                t0 = time.perf_counter()
                work(items[0], Scratch())
                COMPILE_STATS["first_call_s"] += time.perf_counter() - t0
                COMPILE_STATS["compiles"] += 1
                _compiled[dev.type] = fused
                items = items[1:]
    map_chunks(work, items, nw)
    return FusedQuant(codes, scale, zp.to(torch.int32), dq)


def quantize_tensor(w: torch.Tensor, bits: int, scheme: Scheme, granularity: Granularity = "channel",
                    group_size: int = 128, *, chunk: int | None = None, workers: int | None = None,
                    compile: bool = False) -> tuple[FusedQuant, torch.Tensor]:
    """One parameter as the rule quantizes it: groups by ``KMR.quant.groups``, fp32 arithmetic,
    the dequantized weight cast back to ``w``'s dtype and shape (``KMR.quant.dtype``)."""
    g, length = group_shape(tuple(w.shape), granularity, group_size)  # KMR.quant.groups
    w32 = w.detach().to(torch.float32).reshape(g, length)  # KMR.quant.dtype: fp32 arithmetic
    fq = quantize_groups(w32, bits, scheme, chunk=chunk, workers=workers, compile=compile)
    assert fq.dequant is not None
    return fq, fq.dequant.reshape(w.shape).to(w.dtype)
