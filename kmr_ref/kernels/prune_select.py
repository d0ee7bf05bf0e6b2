"""Global magnitude pruning near the memory bound: one histogram pass, one write pass.

Equal, bit for bit, to :func:`kmr_ref.methods.pruning.magnitude_masks` / ``apply_mask``
(``KMR.prune.count``, ``KMR.prune.tie-break``, ``KMR.prune.zero-value``); ``tests/test_kernels.py``
proves it. ``spec/methods/kernels.md`` states the algorithm; in short:

* **Keys.** For a non-negative IEEE float, value order is the order of its bit pattern read as an
  integer. Clearing the sign bit gives the key of |w| (``-0.0`` and ``+0.0`` both get 0 and tie).
  Tensors of different float dtypes share one key space: 16-bit floats and float32 convert exactly
  to float32, anything converts exactly to float64 (the *key dtype*). The *top* of a key is its
  15 high bits (the high 16-bit word with the sign cleared: one op on a strided int16 view).
* **Pass 1, histogram.** A 2^15-bin histogram of the tops over every entry gives the boundary
  bucket b (the bucket holding the k-th smallest), the count ``below`` of entries in lower buckets
  and the quota ``q = k - below`` of bucket entries to prune.
* **Pass 2, write.** Entries with top < b are pruned, the others copied bit for bit; the entries of
  bucket b (a fraction of a percent of a Gaussian model) are collected with their positions, and
  the first q of them by (key, tensor index, flat index) — a stable sort of the keys, the positions
  being collected in that order — are pruned afterwards by an indexed fill.
* **Fallback.** Only when the bucket is large (more than n/128 entries, e.g. a model already mostly
  zero): radix passes over the lower digits inside the bucket find the exact k-th key, a counting
  pass gives each chunk its share of the tie quota, and the write pass prunes key < v* plus each
  chunk's share of the ties (:func:`select_threshold`).

Every pass runs as cache-sized chunks on one worker per core (:mod:`kmr_ref.kernels.parallel`):
one intra-op thread per op, chunks taken dynamically, so a busy machine slows the kernel no more
than it slows a copy. Working memory is O(workers x chunk) plus the bucket.

Precondition: finite values (NaN keys order by payload, whereas the reference treats all NaNs as
equal; the rule refuses NaN and inf before either runs, ``KMR.prune.nonfinite``). ±inf is exact.
Works on any device the tensors live on (all tensors on one device; CUDA untested here).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.kernels.parallel import Scratch, chunk_entries, empty_out, map_chunks, one_thread, workers_for

__all__ = ["Selection", "magnitude_masks", "prune_global", "prune_global_", "select_threshold"]

_INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
           torch.float64: torch.int64}
_DIGITS = {torch.int16: (15,), torch.int32: (15, 16), torch.int64: (15, 16, 16, 16)}
_TOP_BINS = 1 << 15  # the first radix digit: the high 16-bit word of the key, sign cleared
_LITTLE = sys.byteorder == "little"

Item = tuple[int, int, int]  # (tensor index, first flat index, end flat index)


@dataclass(frozen=True)
class Selection:
    """The exact boundary of the k smallest entries: ``key`` is the key of the k-th entry (its
    |w| bit pattern in ``key_dtype``), ``below`` the number of entries with a smaller key,
    ``ties`` the number with an equal key; the first ``k - below`` of the ties are pruned."""

    k: int
    n: int
    key_dtype: torch.dtype
    key: int
    below: int
    ties: int

    @property
    def quota(self) -> int:
        return self.k - self.below


def _key_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dts = {t.dtype for t in tensors}
    for dt in dts:
        if not dt.is_floating_point or dt.is_complex:
            raise RuleInputError("KMR.prune.dtype", f"a floating dtype is required, got {dt}")
    if len(dts) == 1:
        (dt,) = dts
        if dt in _INT_OF:
            return dt
    return torch.float64 if torch.float64 in dts else torch.float32  # exact conversions only


class _Plan:
    """The tensors as flat views, the key space, the chunks (in tensor, flat-index order) and the
    per-chunk key computations on a worker's scratch buffers."""

    def __init__(self, tensors: Sequence[torch.Tensor], chunk: int | None, workers: int | None,
                 key_dtype: torch.dtype | None = None) -> None:
        self.tensors = [t.detach() for t in tensors]
        self.flats = [t.reshape(-1) for t in self.tensors]  # row-major; a copy only if not contiguous
        self.key_dtype = key_dtype or _key_dtype(self.tensors)
        self.int_dtype = _INT_OF[self.key_dtype]
        self.key_bits = torch.iinfo(self.int_dtype).bits
        self.sign_clear = (1 << (self.key_bits - 1)) - 1
        self.words = self.key_bits // 16  # 16-bit words per key; the top is the most significant
        self.hi = self.words - 1 if _LITTLE else 0
        self.n = sum(t.numel() for t in self.tensors)
        self.device = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.workers = workers_for(self.device, workers)
        self.convert = any(t.dtype != self.key_dtype for t in self.tensors)
        width = max((t.element_size() for t in self.tensors), default=4)
        bpe = width + (self.key_bits // 8 if self.convert else 0) + self.key_bits // 8 + 4
        self.chunk = chunk or chunk_entries(self.device, self.n, bpe, self.workers)

    def items(self, which: Sequence[int] | None = None) -> list[Item]:
        out: list[Item] = []
        for i in range(len(self.tensors)) if which is None else which:
            m = self.flats[i].numel()
            out += [(i, a, min(a + self.chunk, m)) for a in range(0, m, self.chunk)]
        return out

    def in_key_dtype(self, x: torch.Tensor, s: Scratch) -> torch.Tensor:
        if x.dtype == self.key_dtype:
            return x
        xc = s.buf("conv", x.numel(), self.key_dtype, self.device, self.chunk)
        xc.copy_(x)  # exact: float16/bfloat16 -> float32, anything -> float64
        return xc

    def keys(self, x: torch.Tensor, s: Scratch) -> torch.Tensor:
        """The |w| keys of the chunk ``x`` (a view of a reused buffer)."""
        a = s.buf("key", x.numel(), self.int_dtype, self.device, self.chunk)
        torch.bitwise_and(self.in_key_dtype(x, s).view(self.int_dtype), self.sign_clear,
                          out=a)  # KMR.prune.tie-break: |w|, -0 -> 0
        return a

    def tops(self, x: torch.Tensor, s: Scratch) -> torch.Tensor:
        """The 15 high bits of the |w| keys of ``x``, as int16 in [0, 2^15): one op."""
        t = s.buf("top", x.numel(), torch.int16, self.device, self.chunk)
        words = self.in_key_dtype(x, s).view(torch.int16)
        if self.words > 1:
            words = words[self.hi::self.words]
        torch.bitwise_and(words, 0x7FFF, out=t)  # KMR.prune.tie-break: the sign is not part of |w|
        return t


def _acc(s: Scratch, name: str, h: torch.Tensor) -> None:
    acc = s.state.get(name)
    if acc is None:
        s.state[name] = h
    else:
        acc.add_(h)


def _sum(scratches: list[Scratch], name: str, bins: int, device: torch.device) -> torch.Tensor:
    total = torch.zeros(bins, dtype=torch.int64, device=device)
    for s in scratches:
        if name in s.state:
            total.add_(s.state[name])
    return total


def _top_histogram(p: _Plan) -> tuple[torch.Tensor, list[int]]:
    """Pass 1: the 2^15-bin histogram of the tops, and each tensor's smallest top."""

    def hist(it: Item, s: Scratch) -> int:
        i, a0, a1 = it
        t = p.tops(p.flats[i][a0:a1], s)
        _acc(s, "h", torch.bincount(t, minlength=_TOP_BINS))
        return int(t.amin())

    mins, scratches = map_chunks(hist, p.items(), p.workers)
    least = [_TOP_BINS] * len(p.tensors)
    for (i, _, _), m in zip(p.items(), mins, strict=True):
        least[i] = min(least[i], m)
    return _sum(scratches, "h", _TOP_BINS, p.device), least


def _locate(counts: torch.Tensor, rank: int) -> tuple[int, int, int]:
    """(bin d, entries in bins < d, entries in bin d) for the 1-based ``rank``."""
    cum = torch.cumsum(counts, 0)
    d = int(torch.searchsorted(cum, torch.tensor([rank], dtype=cum.dtype, device=cum.device))[0])
    if d >= counts.numel():  # pragma: no cover - the counts always sum to >= rank
        raise AssertionError("radix select lost entries")
    ties = int(counts[d])
    return d, int(cum[d]) - ties, ties


def _radix(p: _Plan, k: int, top_counts: torch.Tensor) -> Selection:
    """``KMR.prune.count`` / ``KMR.prune.tie-break``: from the top histogram, radix passes over the
    lower digits (each restricted by a clamp to the entries sharing the prefix found so far) give
    the exact key of the k-th smallest entry."""
    digits = _DIGITS[p.int_dtype]
    total_bits = sum(digits)
    prefix, below, ties = _locate(top_counts, k)
    done = digits[0]
    for width in digits[1:]:
        shift = total_bits - done - width
        bins = 1 << width
        # bin 0: prefix below, bins 1..2^w: the digit, bin 2^w + 1: prefix above
        base = (prefix << width) - 1
        top = min((prefix + 1) << width, ((1 << total_bits) - 1) >> shift)

        def hist(it: Item, s: Scratch, shift: int = shift, base: int = base, top: int = top,
                 nbins: int = bins + 2) -> None:
            i, a0, a1 = it
            a = p.keys(p.flats[i][a0:a1], s)
            if shift:
                a.bitwise_right_shift_(shift)
            a.clamp_(base, top).sub_(base)
            _acc(s, "r", torch.bincount(a, minlength=nbins))

        _, scratches = map_chunks(hist, p.items(), p.workers)
        counts = _sum(scratches, "r", bins + 2, p.device)[1:-1]
        d, lower, ties = _locate(counts, k - below)
        below += lower
        prefix = (prefix << width) | d
        done += width
    return Selection(k, p.n, p.key_dtype, prefix, below, ties)


@one_thread
def select_threshold(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None,
                     workers: int | None = None) -> Selection:
    """``KMR.prune.count`` / ``KMR.prune.tie-break``: the exact key of the k-th smallest |w| over
    all ``tensors`` (1 <= k <= n), by histogram passes; no concatenation, no sort."""
    n = sum(t.numel() for t in tensors)
    if not 1 <= k <= n:
        raise KnobDomainError("KMR.prune.count", f"select needs 1 <= k <= n, got k={k}, n={n}")
    p = _Plan(tensors, chunk, workers)
    counts, _ = _top_histogram(p)
    return _radix(p, k, counts)


# A sink writes one chunk's result: sink(i, a0, a1, x, pruned) with x the input chunk and pruned
# a bool mask; a fix prunes, after the pass, the given flat indices of tensor i.
Sink = Callable[[int, int, int, torch.Tensor, torch.Tensor], None]
Fix = Callable[[int, torch.Tensor], None]


def _select_and_write(p: _Plan, k: int, sink: Sink, fix: Fix, bucket_limit: int | None) -> list[bool]:
    """The pruning passes; returns, per tensor, whether any entry of it is pruned (the sink is
    called only for tensors that may have a pruned entry)."""
    hist, least = _top_histogram(p)
    b, below, count = _locate(hist, k)
    quota = k - below  # bucket entries to prune, first by (key, tensor index, flat index)
    if quota == count:  # the whole bucket goes: top <= b, no selection inside it
        return _write(p, [i for i, m in enumerate(least) if m <= b], b, inclusive=True, sink=sink)
    if count <= (max(1 << 16, p.n // 128) if bucket_limit is None else bucket_limit):
        return _write_collect(p, least, b, quota, sink, fix)
    sel = _radix(p, k, hist)  # a large bucket (e.g. mostly zeros): exact key, then tie quotas
    return _write_ties(p, [i for i, m in enumerate(least) if m <= b], sel, sink)


def _write(p: _Plan, which: list[int], b: int, *, inclusive: bool, sink: Sink) -> list[bool]:
    def write(it: Item, s: Scratch) -> None:
        i, a0, a1 = it
        x = p.flats[i][a0:a1]
        m = s.buf("m", a1 - a0, torch.bool, p.device, p.chunk)
        (torch.le if inclusive else torch.lt)(p.tops(x, s), b, out=m)  # KMR.prune.tie-break
        sink(i, a0, a1, x, m)

    map_chunks(write, p.items(which), p.workers)
    hit = set(which)
    return [i in hit for i in range(len(p.tensors))]


def _write_collect(p: _Plan, least: list[int], b: int, quota: int, sink: Sink, fix: Fix) -> list[bool]:
    which = [i for i, m in enumerate(least) if m <= b]

    def write(it: Item, s: Scratch) -> tuple[torch.Tensor, torch.Tensor]:
        i, a0, a1 = it
        x = p.flats[i][a0:a1]
        t = p.tops(x, s)
        m = s.buf("m", a1 - a0, torch.bool, p.device, p.chunk)
        torch.lt(t, b, out=m)  # below the bucket: pruned
        sink(i, a0, a1, x, m)
        e = s.buf("e", a1 - a0, torch.bool, p.device, p.chunk)
        idx = torch.eq(t, b, out=e).nonzero().view(-1)  # the bucket: collected, in flat order
        key = torch.bitwise_and(p.in_key_dtype(x[idx], s).view(p.int_dtype), p.sign_clear).to(torch.int64)
        return idx.add_(a0), key

    items = p.items(which)
    got, _ = map_chunks(write, items, p.workers)
    touched = [i in set(which) and least[i] < b for i in range(len(p.tensors))]
    keys = torch.cat([g[1] for g in got])
    _prune_first(keys, quota, [g[0] for g in got], [it[0] for it in items], fix, touched)
    return touched


def _write_ties(p: _Plan, which: list[int], sel: Selection, sink: Sink) -> list[bool]:
    """Fallback write: key < v* is pruned, and of the ties (key == v*) the first ``quota`` in
    (tensor index, flat index) order — each chunk's share from a counting pass."""
    v = sel.key
    items = p.items(which)

    def count(it: Item, s: Scratch) -> int:
        i, a0, a1 = it
        e = s.buf("e", a1 - a0, torch.bool, p.device, p.chunk)
        return int(torch.eq(p.keys(p.flats[i][a0:a1], s), v, out=e).sum())

    ties, _ = map_chunks(count, items, p.workers)
    shares, left = [], sel.quota
    for c in ties:
        shares.append(min(c, left))
        left -= shares[-1]

    def write(job: tuple[Item, int, int], s: Scratch) -> bool:
        (i, a0, a1), share, c = job
        x = p.flats[i][a0:a1]
        a = p.keys(x, s)
        m = s.buf("m", a1 - a0, torch.bool, p.device, p.chunk)
        if share == c:  # every tie of this chunk is within the quota (or there is none)
            torch.le(a, v, out=m)
        else:
            torch.lt(a, v, out=m)
            if share:  # KMR.prune.tie-break: the first `share` ties of the chunk, in flat order
                e = s.buf("e", a1 - a0, torch.bool, p.device, p.chunk)
                torch.eq(a, v, out=e)
                m.logical_or_(e.logical_and_(torch.cumsum(e, 0, dtype=torch.int64) <= share))
        sink(i, a0, a1, x, m)
        return bool(m.any())

    hits, _ = map_chunks(write, list(zip(items, shares, ties, strict=True)), p.workers)
    touched = [False] * len(p.tensors)
    for (i, _, _), h in zip(items, hits, strict=True):
        touched[i] = touched[i] or h
    return touched


_SAMPLE = 1 << 17  # sampled entries that place the band; its width ~ 10 sqrt(f (1 - f) / sample)
_Z = 5.0  # band half-width in standard deviations of the sampled rank (a miss only costs time)


class _BandMiss(Exception):
    """The sampled band did not hold the k-th entry, or grew too large: take the exact path."""


def _largest_below(v: torch.Tensor, dtype: torch.dtype, strict: bool) -> float:
    """The largest non-negative value of ``dtype`` that is < v (``strict``) or <= v, for v > 0 a
    0-d tensor in the key dtype; -1.0 when there is none (hardshrink then zeroes nothing)."""
    c = v.to(dtype)  # round to nearest; at most one step above v
    if (c.to(v.dtype) >= v) if strict else (c.to(v.dtype) > v):
        if float(c) == 0.0:
            return -1.0
        c = (c.view(_INT_OF[dtype]) - 1).view(dtype)  # the predecessor of a positive float
    return float(c)


def _sampled_band(p: _Plan, k: int, sample: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """|w| bounds (lo, hi) in the key dtype such that, with high probability, the k-th smallest
    entry lies in [lo, hi], from a seeded uniform sample; None when the band would start at 0 or
    hold more than a quarter of the sample (the exact path is better there)."""
    s = min(sample, p.n)
    g = torch.Generator().manual_seed(20250814)
    # a uniform sample with replacement, drawn tensor by tensor: multinomial counts, then positions
    ends = torch.tensor([f.numel() for f in p.flats], dtype=torch.int64).cumsum(0)
    owner = torch.searchsorted(ends, torch.randint(p.n, (s,), generator=g), right=True)
    counts = torch.bincount(owner, minlength=len(p.flats))
    vals = []
    for i, c in enumerate(counts.tolist()):
        if c:
            local = torch.randint(p.flats[i].numel(), (c,), generator=g).to(p.device)
            vals.append(p.flats[i][local].to(p.key_dtype).abs())
    sv = torch.cat(vals)
    f = k / p.n
    j = f * s
    half = _Z * (s * f * (1 - f)) ** 0.5 + 4
    jl, jh = int(j - half) - 1, int(j + half) + 1
    if jl < 0 or (jh - jl) > s / 4:
        return None
    lo = torch.kthvalue(sv.cpu(), jl + 1).values
    hi = torch.kthvalue(sv.cpu(), jh + 1).values if jh < s else torch.tensor(float("inf"), dtype=p.key_dtype)
    if float(lo) == 0.0:
        return None
    return lo, hi


def _flatnonzero(m: torch.Tensor) -> torch.Tensor:
    """Ascending positions of the true entries of the 1-D bool tensor ``m`` (int64): numpy's
    ``flatnonzero`` on CPU (several times faster than torch's ``nonzero`` there, and it releases the
    GIL, so the workers stay parallel), ``torch.nonzero`` elsewhere."""
    if m.device.type != "cpu":
        return m.nonzero().view(-1)
    return torch.from_numpy(np.flatnonzero(m.numpy()).astype(np.int64, copy=False))


def _band_positions(o: torch.Tensor, u: torch.Tensor, s: Scratch) -> torch.Tensor:
    """Ascending flat positions where the integer views ``o`` (|w| < lo written as +0.0) and ``u``
    (also |w| <= hi written as +0.0) differ: the band lo <= |w| <= hi (below it both hold +0.0,
    above it the same bits), through :func:`_flatnonzero`; on CPU the mask is written by numpy into
    the worker's scratch buffer."""
    if o.device.type != "cpu":
        return _flatnonzero(torch.ne(o, u))
    m = s.buf("band", o.numel(), torch.bool, o.device, o.numel())
    np.not_equal(o.numpy(), u.numpy(), out=m.numpy())  # into a reused buffer: no allocation per chunk
    return _flatnonzero(m)


def _write_band(p: _Plan, k: int, band: tuple[torch.Tensor, torch.Tensor], sink_out: Callable[[int], torch.Tensor],
                fix: Fix, limit: int) -> list[bool]:
    """One pass: every chunk is written with |w| < lo pruned (one ``hardshrink``, which writes +0.0
    and keeps every other bit), and the band lo <= |w| <= hi is collected (positions and values);
    then the first ``k - below`` entries of the band by (|w|, tensor index, flat index) are pruned.
    Raises :class:`_BandMiss` when the band does not hold the k-th entry or exceeds ``limit``."""
    lo, hi = band
    lam_lo = {dt: _largest_below(lo, dt, strict=True) for dt in {t.dtype for t in p.tensors}}
    lam_hi = {dt: (_largest_below(hi, dt, strict=False) if bool(torch.isfinite(hi)) else float("inf"))
              for dt in lam_lo}
    collected = [0]

    def write(it: Item, s: Scratch) -> tuple[int, torch.Tensor, torch.Tensor]:
        i, a0, a1 = it
        x = p.flats[i][a0:a1]
        o = sink_out(i)[a0:a1]
        torch.ops.aten.hardshrink.out(x, lam_lo[x.dtype], out=o)  # KMR.prune.zero-value: +0.0 below lo
        ints = _INT_OF[x.dtype]  # count and find on integer views: +0.0 is the only zero written
        kept = int(torch.count_nonzero(o.view(ints)))  # |w| >= lo > 0: never zero
        u = s.buf("u", a1 - a0, x.dtype, p.device, p.chunk)
        if lam_hi[x.dtype] == float("inf"):
            u.zero_()
        else:
            torch.ops.aten.hardshrink.out(o, lam_hi[x.dtype], out=u)  # |w| > hi
        idx = _band_positions(o.view(ints), u.view(ints), s)
        collected[0] += idx.numel()  # read by every worker: only an early stop, never a result
        if collected[0] > limit:
            raise _BandMiss
        vals = x[idx]
        return kept, idx.add_(a0), vals

    items = p.items()
    got, _ = map_chunks(write, items, p.workers)
    below = p.n - sum(g[0] for g in got)
    band_n = sum(g[1].numel() for g in got)
    if not below < k <= below + band_n:
        raise _BandMiss
    keys = torch.cat([torch.bitwise_and(g[2].to(p.key_dtype).view(p.int_dtype), p.sign_clear).to(torch.int64)
                      for g in got])
    touched = [False] * len(p.tensors)
    for (i, a0, a1), g in zip(items, got, strict=True):
        touched[i] = touched[i] or g[0] < a1 - a0  # something below lo
    _prune_first(keys, k - below, [g[1] for g in got], [it[0] for it in items], fix, touched)
    return touched


def _prune_first(keys: torch.Tensor, quota: int, locs: list[torch.Tensor], owners: list[int], fix: Fix,
                 touched: list[bool]) -> None:
    """KMR.prune.tie-break: of the collected entries (in (tensor, flat index) order, chunk by chunk),
    prune the first ``quota`` by (|w| key, position): all keys < v*, then the first ties of v*.
    The chosen positions are split by chunk with a ``searchsorted`` over the chunk boundaries (no
    concatenation of every position, no per-entry owner table)."""
    v = int(torch.kthvalue(keys.cpu(), quota).values)
    sel = keys < v
    rest = quota - int(sel.sum())
    if rest:  # 0 < rest <= the count of ties of v*, by the definition of the quota-th value
        sel[_flatnonzero(keys == v)[:rest]] = True
    chosen = _flatnonzero(sel)  # ascending: collection order
    bounds = [0]
    for t in locs:
        bounds.append(bounds[-1] + t.numel())
    cuts = torch.searchsorted(chosen, torch.tensor(bounds, dtype=chosen.dtype, device=chosen.device)).tolist()
    parts: dict[int, list[torch.Tensor]] = {}
    for j, (c0, c1) in enumerate(itertools.pairwise(cuts)):
        if c1 > c0:
            parts.setdefault(owners[j], []).append(locs[j][chosen[c0:c1] - bounds[j]])
    for i, got in parts.items():  # ascending tensor index, as the items
        fix(i, got[0] if len(got) == 1 else torch.cat(got))
        touched[i] = True


def _check_k(tensors: Sequence[torch.Tensor], k: int) -> int:
    n = sum(t.numel() for t in tensors)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise KnobDomainError("KMR.prune.count", f"k must be an integer in [0, n={n}], got {k!r}")
    return n


@one_thread
def magnitude_masks(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None,
                    bucket_limit: int | None = None, workers: int | None = None) -> list[torch.Tensor]:
    """Keep-masks equal to :func:`kmr_ref.methods.pruning.magnitude_masks` (``KMR.prune.tie-break``)."""
    _check_k(tensors, k)
    masks = [torch.ones(t.shape, dtype=torch.bool, device=t.device) for t in tensors]
    if k == 0:
        return masks
    p = _Plan(tensors, chunk, workers)
    flats = [m.view(-1) for m in masks]

    def sink(i: int, a0: int, a1: int, x: torch.Tensor, m: torch.Tensor) -> None:
        torch.logical_not(m, out=flats[i][a0:a1])

    def fix(i: int, locs: torch.Tensor) -> None:
        flats[i].index_fill_(0, locs, False)

    _select_and_write(p, k, sink, fix, bucket_limit)
    return masks


@one_thread
def prune_global(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None,
                 bucket_limit: int | None = None, workers: int | None = None,
                 sample: int | None = None) -> list[torch.Tensor]:
    """The pruned tensors: equal, bit for bit, to ``apply_mask(t, keep)`` with the reference masks
    (``KMR.prune.zero-value``: pruned -> +0.0, kept entries keep their bits).

    A tensor with no pruned entry is returned as is (the same object, shared, as the rule shares
    untouched tensors: ``KMR.rule.no-mutation``); every other result is a new contiguous tensor.
    The inputs are never modified. ``workers``: threads (default: torch's thread count, at most
    the cores this process may use); ``chunk``: entries per chunk (default from the cache size);
    ``bucket_limit``: the most bucket entries collected before the radix fallback (default
    max(2^16, n/128)); ``sample``: entries sampled to place the band of the one-pass path
    (default 2^17; 0: always the histogram path)."""
    _check_k(tensors, k)
    if k == 0:
        return list(tensors)
    p = _Plan(tensors, chunk, workers)
    outs: dict[int, torch.Tensor] = {}
    zeros = {t.dtype: torch.zeros((), dtype=t.dtype, device=t.device) for t in p.tensors}

    def out(i: int) -> torch.Tensor:
        o = outs.get(i)
        if o is None:  # allocated on first use (workers may race: setdefault keeps one of them)
            o = outs.setdefault(i, empty_out(p.flats[i].shape, p.flats[i].dtype, p.device))
        return o

    def sink(i: int, a0: int, a1: int, x: torch.Tensor, m: torch.Tensor) -> None:
        torch.where(m, zeros[x.dtype], x, out=out(i)[a0:a1])  # KMR.prune.zero-value: +0.0

    def fix(i: int, locs: torch.Tensor) -> None:
        out(i).index_fill_(0, locs, 0.0)  # KMR.prune.zero-value: +0.0

    band = _sampled_band(p, k, _SAMPLE if sample is None else sample) if sample != 0 else None
    if band is not None:
        try:
            touched = _write_band(p, k, band, out, fix, max(1 << 16, p.n // 32))
            return [outs[i].view(t.shape) if hit else t
                    for i, (t, hit) in enumerate(zip(tensors, touched, strict=True))]
        except _BandMiss:
            outs.clear()  # the exact path writes every tensor it returns afresh
    touched = _select_and_write(p, k, sink, fix, bucket_limit)
    return [outs[i].view(t.shape) if hit else t for i, (t, hit) in enumerate(zip(tensors, touched, strict=True))]


@one_thread
def prune_global_(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None, bucket_limit: int | None = None,
                  workers: int | None = None) -> list[bool]:
    """In place (for practitioners who own their tensors; the rule never calls this): the same
    result as :func:`prune_global`, written into ``tensors`` (which must be contiguous). Returns,
    per tensor, whether any entry was pruned. Peak extra memory is O(workers x chunk + bucket)."""
    _check_k(tensors, k)
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("prune_global_ needs contiguous tensors")
    if k == 0:
        return [False] * len(tensors)
    p = _Plan(tensors, chunk, workers)

    def sink(i: int, a0: int, a1: int, x: torch.Tensor, m: torch.Tensor) -> None:
        x.masked_fill_(m, 0.0)  # KMR.prune.zero-value; x is a view of the caller's tensor

    def fix(i: int, locs: torch.Tensor) -> None:
        p.flats[i].index_fill_(0, locs, 0.0)  # KMR.prune.zero-value

    with torch.no_grad():
        return _select_and_write(p, k, sink, fix, bucket_limit)
