"""Global magnitude pruning by radix select over |w| bit patterns (no concatenated copy, no sort).

Equal, bit for bit, to :func:`kmr_ref.methods.pruning.magnitude_masks` / ``apply_mask``
(``KMR.prune.count``, ``KMR.prune.tie-break``, ``KMR.prune.zero-value``); ``tests/test_kernels.py``
proves it. How:

* **Keys.** For a non-negative IEEE float, the order of values is the order of its bit pattern read
  as a signed integer of the same width. Clearing the sign bit (``bits & 0x7F…F``) gives the key of
  |w|; ``-0.0`` and ``+0.0`` both get key 0 (they tie, as ``KMR.prune.tie-break`` says). Tensors of
  different float dtypes are compared in one key space: float16/bfloat16/float32 (and narrower)
  values convert exactly to float32, and anything converts exactly to float64 (the *key dtype*).
* **Select.** Passes of ``torch.bincount`` over 15/16-bit digits of the key, from the top, each pass
  restricted (by a clamp, not a mask) to the entries that share the prefix found so far, give the
  exact key ``v*`` of the k-th smallest entry and ``below``, the number of entries with key < v*.
  float32 takes 2 histogram passes, 16-bit floats 1, float64 4. Every pass streams the tensors in
  chunks through preallocated buffers: working memory is O(chunk), independent of the model size.
* **Write.** One more pass writes the result: key < v* is pruned; of the entries with key == v*,
  the first ``q = k - below`` in (tensor index, flat index) order are pruned — tensors and chunks
  are walked in that order, and only the chunk where the quota runs out needs a cumsum.

Precondition: finite values (NaN keys order by payload, whereas the reference treats all NaNs as
equal; the rule refuses NaN and inf before either runs, ``KMR.prune.nonfinite``). ±inf is exact.
Works on any device the tensors live on (all tensors on one device).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kmr_ref.core.errors import KnobDomainError, RuleInputError

__all__ = ["Selection", "default_chunk", "magnitude_masks", "prune_global", "prune_global_", "select_threshold"]

_INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
           torch.float64: torch.int64}
_DIGITS = {torch.int16: (15,), torch.int32: (15, 16), torch.int64: (15, 16, 16, 16)}


def default_chunk(device: torch.device, n: int) -> int:
    """Entries per streamed chunk: cache-sized on CPU (and at most n/64, so the ~10 bytes of buffers
    per chunk entry stay a few percent of the model), large on accelerators (fewer launches)."""
    if device.type != "cpu":
        return 1 << 24
    return min(1 << 19, max(1 << 14, n >> 6))


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


class _Stream:
    """Chunked views of the tensors' keys, written into reusable buffers (no per-chunk allocation)."""

    def __init__(self, tensors: Sequence[torch.Tensor], key_dtype: torch.dtype, chunk: int) -> None:
        self.tensors = [t.detach() for t in tensors]
        self.key_dtype = key_dtype
        self.int_dtype = _INT_OF[key_dtype]
        self.sign_clear = (1 << (torch.iinfo(self.int_dtype).bits - 1)) - 1
        self.chunk = chunk
        biggest = min(chunk, max((t.numel() for t in self.tensors), default=0))
        dev = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.key_buf = torch.empty(biggest, dtype=self.int_dtype, device=dev)
        self.tmp_buf = torch.empty(biggest, dtype=self.int_dtype, device=dev)
        self.conv_buf = torch.empty(biggest, dtype=key_dtype, device=dev) if any(
            t.dtype != key_dtype for t in self.tensors) else None

    def flat(self, i: int) -> torch.Tensor:
        return self.tensors[i].reshape(-1)  # row-major flat index (a copy only if not contiguous)

    def chunks(self, i: int) -> list[tuple[int, int]]:
        n = self.tensors[i].numel()
        return [(a, min(a + self.chunk, n)) for a in range(0, n, self.chunk)]

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """The |w| keys of the chunk ``x`` (a view of a reused buffer)."""
        m = x.numel()
        if x.dtype != self.key_dtype:
            assert self.conv_buf is not None
            xc = self.conv_buf[:m]
            xc.copy_(x)  # exact: float16/bfloat16 -> float32, anything -> float64
            x = xc
        a = self.key_buf[:m]
        torch.bitwise_and(x.view(self.int_dtype), self.sign_clear, out=a)  # KMR.prune.tie-break: |w|, -0 -> 0
        return a


def select_threshold(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None) -> Selection:
    """``KMR.prune.count`` / ``KMR.prune.tie-break``: the exact key of the k-th smallest |w| over
    all ``tensors`` (1 <= k <= n), found by histogram passes; no concatenation, no sort."""
    n = sum(t.numel() for t in tensors)
    if not 1 <= k <= n:
        raise KnobDomainError("KMR.prune.count", f"select needs 1 <= k <= n, got k={k}, n={n}")
    key_dtype = _key_dtype(tensors)
    s = _Stream(tensors, key_dtype, chunk or default_chunk(tensors[0].device, n))
    digits = _DIGITS[s.int_dtype]
    total_bits = sum(digits)
    prefix, below, ties = 0, 0, n
    done = 0
    for width in digits:
        shift = total_bits - done - width
        bins = 1 << width
        acc: torch.Tensor | None = None
        for i in range(len(s.tensors)):
            f = s.flat(i)
            for a0, a1 in s.chunks(i):
                a = s.keys(f[a0:a1])
                t = s.tmp_buf[: a1 - a0]
                if shift:
                    torch.bitwise_right_shift(a, shift, out=t)
                else:
                    t = a  # the key buffer is rewritten for the next chunk: free to modify
                if done == 0:  # the first digit: every entry falls into one of the bins
                    nbins = bins
                else:  # bin 0: prefix below, bins 1..2^w: the digit, bin 2^w + 1: prefix above
                    base = (prefix << width) - 1
                    top = min((prefix + 1) << width, ((1 << total_bits) - 1) >> shift)
                    t.clamp_(base, top).sub_(base)
                    nbins = bins + 2
                h = torch.bincount(t, minlength=nbins)
                acc = h if acc is None else acc.add_(h)
        assert acc is not None
        counts = acc[1:-1] if done else acc
        rank = k - below  # 1-based rank of the k-th entry among those sharing the prefix
        cum = torch.cumsum(counts, 0)
        d = int(torch.searchsorted(cum, torch.tensor([rank], dtype=cum.dtype, device=cum.device))[0])
        if d >= counts.numel():  # pragma: no cover - the counts always sum to >= rank
            raise AssertionError("radix select lost entries")
        ties = int(counts[d])
        below += int(cum[d]) - ties
        prefix = (prefix << width) | d
        done += width
    return Selection(k, n, key_dtype, prefix, below, ties)


Sink = Callable[[int, int, int, torch.Tensor, torch.Tensor], None]


def _write_pass(s: _Stream, sel: Selection, sink: Sink) -> list[bool]:
    """Stream the tensors once more; call ``sink(i, a0, a1, chunk, pruned_mask)`` per chunk.
    Returns, per tensor, whether any entry of it is pruned."""
    dev = s.tensors[0].device
    mbuf = torch.empty(s.key_buf.numel(), dtype=torch.bool, device=dev)
    ebuf = torch.empty(s.key_buf.numel(), dtype=torch.bool, device=dev)
    quota = sel.quota  # ties still to prune, in (tensor index, flat index) order: KMR.prune.tie-break
    if quota == sel.ties:  # all ties pruned: key <= v* everywhere
        quota = 0
        everywhere_le = True
    else:
        everywhere_le = False
    any_pruned = [False] * len(s.tensors)
    for i in range(len(s.tensors)):
        f = s.flat(i)
        for a0, a1 in s.chunks(i):
            x = f[a0:a1]
            a = s.keys(x)
            m = mbuf[: a1 - a0]
            if everywhere_le:
                torch.le(a, sel.key, out=m)
            elif quota == 0:
                torch.lt(a, sel.key, out=m)
            else:
                e = ebuf[: a1 - a0]
                torch.eq(a, sel.key, out=e)
                c = int(e.sum())
                if c <= quota:  # every tie in this chunk is within the quota
                    torch.le(a, sel.key, out=m)
                    quota -= c
                else:  # the quota runs out inside this chunk: the first `quota` ties only
                    torch.lt(a, sel.key, out=m)
                    first = torch.cumsum(e, 0, dtype=torch.int64) <= quota
                    m.logical_or_(e.logical_and_(first))
                    quota = 0
            if not any_pruned[i]:
                any_pruned[i] = bool(m.any())
            sink(i, a0, a1, x, m)
    return any_pruned


def _check_k(tensors: Sequence[torch.Tensor], k: int) -> int:
    n = sum(t.numel() for t in tensors)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise KnobDomainError("KMR.prune.count", f"k must be an integer in [0, n={n}], got {k!r}")
    return n


def magnitude_masks(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None) -> list[torch.Tensor]:
    """Keep-masks equal to :func:`kmr_ref.methods.pruning.magnitude_masks` (``KMR.prune.tie-break``)."""
    _check_k(tensors, k)
    masks = [torch.ones(t.shape, dtype=torch.bool, device=t.device) for t in tensors]
    if k == 0:
        return masks
    sel = select_threshold(tensors, k, chunk=chunk)
    s = _Stream(tensors, sel.key_dtype, chunk or default_chunk(tensors[0].device, sel.n))
    flats = [m.view(-1) for m in masks]

    def sink(i: int, a0: int, a1: int, x: torch.Tensor, m: torch.Tensor) -> None:
        torch.logical_not(m, out=flats[i][a0:a1])

    _write_pass(s, sel, sink)
    return masks


def prune_global(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None) -> list[torch.Tensor]:
    """The pruned tensors: equal, bit for bit, to ``apply_mask(t, keep)`` with the reference masks
    (``KMR.prune.zero-value``: pruned -> +0.0, kept entries keep their bits).

    A tensor with no pruned entry is returned as is (the same object, shared, as the rule shares
    untouched tensors: ``KMR.rule.no-mutation``); every other result is a new contiguous tensor.
    The inputs are never modified."""
    _check_k(tensors, k)
    if k == 0:
        return list(tensors)
    sel = select_threshold(tensors, k, chunk=chunk)
    s = _Stream(tensors, sel.key_dtype, chunk or default_chunk(tensors[0].device, sel.n))
    outs = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
    flats = [o.view(-1) for o in outs]
    zeros = {t.dtype: torch.zeros((), dtype=t.dtype, device=t.device) for t in tensors}

    def sink(i: int, a0: int, a1: int, x: torch.Tensor, m: torch.Tensor) -> None:
        torch.where(m, zeros[x.dtype], x, out=flats[i][a0:a1])  # KMR.prune.zero-value: +0.0

    touched = _write_pass(s, sel, sink)
    return [o if hit else t for o, t, hit in zip(outs, tensors, touched, strict=True)]


def prune_global_(tensors: Sequence[torch.Tensor], k: int, *, chunk: int | None = None) -> list[bool]:
    """In place (for practitioners who own their tensors; the rule never calls this): the same
    result as :func:`prune_global`, written into ``tensors`` (which must be contiguous). Returns,
    per tensor, whether any entry was pruned. Peak extra memory is O(chunk)."""
    _check_k(tensors, k)
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("prune_global_ needs contiguous tensors")
    if k == 0:
        return [False] * len(tensors)
    sel = select_threshold(tensors, k, chunk=chunk)
    s = _Stream(tensors, sel.key_dtype, chunk or default_chunk(tensors[0].device, sel.n))

    def sink(i: int, a0: int, a1: int, x: torch.Tensor, m: torch.Tensor) -> None:
        x.masked_fill_(m, 0.0)  # KMR.prune.zero-value; x is a view of the caller's tensor

    with torch.no_grad():
        return _write_pass(s, sel, sink)
