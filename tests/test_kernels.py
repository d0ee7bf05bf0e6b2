"""The fast kernels equal the references in ``kmr_ref.methods``, bit for bit.

Pruning (``kmr_ref.kernels.prune_select``) against ``methods.pruning.magnitude_masks`` /
``apply_mask`` (KMR.prune.count, KMR.prune.tie-break, KMR.prune.zero-value, KMR.prune.global);
quantization (``kmr_ref.kernels.quant_fused``) against ``methods.quantization.quantize_groups`` /
``dequantize_groups`` (KMR.quant.range, KMR.quant.scale, KMR.quant.scale-floor,
KMR.quant.zero-point, KMR.quant.rounding, KMR.quant.clamp, KMR.quant.dequant). Inputs stress ties,
duplicates, zeros, ±0, denormals, huge magnitudes, tiny and (one) large tensor, and chunk sizes down
to 1 so that every chunk boundary and the tie quota running out inside a chunk are exercised.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.kernels import magnitude_masks, prune_global, prune_global_, select_threshold
from kmr_ref.kernels.quant_fused import codes_dtype, quantize_groups, quantize_tensor
from kmr_ref.methods import pruning as ref_prune
from kmr_ref.methods import quantization as ref_quant
from kmr_ref.methods.modules import default_prunable, ordered_parameters

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# magnitudes that collide, sit at dtype edges, or are denormal in one dtype and not another
POOL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 3.0, -3.0, 1e-3, 1e-45, -1e-45, 1.4e-45, 1e-40,
        6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 3e38, -3e38, 1e300, 1.0000001, 0.99999994, 7.0, 0.1]


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


@st.composite
def tensor_lists(draw: st.DrawFn, mixed: bool = True) -> list[torch.Tensor]:
    base = draw(st.sampled_from(FLOATS))
    out = []
    for _ in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
        numel = int(np.prod(shape)) if shape else 1
        dt = draw(st.sampled_from(FLOATS)) if mixed and draw(st.booleans()) else base
        kind = draw(st.sampled_from(["pool", "ints", "normal"]))
        if kind == "pool":
            vals = draw(st.lists(st.sampled_from(POOL), min_size=numel, max_size=numel))
            t = torch.tensor(vals, dtype=torch.float64)
        elif kind == "ints":  # many exact duplicates and ties
            t = torch.tensor(draw(st.lists(st.integers(-3, 3), min_size=numel, max_size=numel)), dtype=torch.float64)
        else:
            g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
            t = torch.randn(numel, generator=g, dtype=torch.float64) * draw(st.sampled_from([1.0, 1e-42, 1e20]))
        t = t.to(dt).reshape(shape)
        t = torch.where(torch.isfinite(t), t, torch.zeros((), dtype=dt))  # overflowing casts: finite inputs only
        if t.dim() == 2 and draw(st.booleans()):
            t = t.t()  # non-contiguous: the flat index is the logical row-major index
        out.append(t)
    return out


def _check_prune(ts: list[torch.Tensor], k: int, chunk: int | None, bucket_limit: int | None = None,
                 workers: int | None = None) -> None:
    before = [_bits(t) for t in ts]
    want = ref_prune.magnitude_masks(ts, k)
    kw = {"chunk": chunk, "bucket_limit": bucket_limit, "workers": workers}
    got = magnitude_masks(ts, k, **kw)
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape and torch.equal(g, w)  # KMR.prune.tie-break, KMR.prune.count
    outs = prune_global(ts, k, **kw)
    for t, o, keep in zip(ts, outs, want, strict=True):
        assert o.shape == t.shape and o.dtype == t.dtype
        assert _bits(o) == _bits(ref_prune.apply_mask(t, keep))  # KMR.prune.zero-value: +0.0, other bits kept
        assert (o is t) == bool(keep.all())  # untouched tensors are shared, the others are new
    assert [_bits(t) for t in ts] == before  # KMR.rule.no-mutation: the inputs are untouched
    inplace = [t.contiguous().clone() for t in ts]
    hit = prune_global_(inplace, k, **kw)
    for t, o, keep, h in zip(inplace, outs, want, hit, strict=True):
        assert _bits(t) == _bits(o) and h == (not bool(keep.all()))


@given(tensor_lists(), st.floats(0, 1), st.sampled_from([1, 2, 3, 5, 64, None]),
       st.sampled_from([None, 0, 1, 3]), st.sampled_from([None, 1, 2, 3]))
def test_prune_kernel_equals_reference(ts: list[torch.Tensor], frac: float, chunk: int | None,
                                       bucket_limit: int | None, workers: int | None) -> None:
    """KMR.prune.tie-break, KMR.prune.count, KMR.prune.zero-value, KMR.prune.global: any mix of float
    dtypes (compared exactly across dtypes), any k in [0, n], any chunk size, any number of worker
    threads; ``bucket_limit`` 0..3 forces the radix fallback whenever the boundary bucket is not
    wholly pruned, None takes the collected-bucket path."""
    n = sum(t.numel() for t in ts)
    _check_prune(ts, int(frac * n), chunk, bucket_limit, workers)


@given(st.integers(1, 5), st.integers(1, 30), st.data())
def test_prune_bucket_ties_across_tensors(ntensors: int, per: int, data: st.DataObject) -> None:
    """KMR.prune.tie-break: values that share one top bucket (same high 16 bits, different low
    bits) and exact ties spread over several tensors and dtypes; the selection inside the bucket
    orders by (|w|, tensor index, flat index), with the collected bucket and with the fallback."""
    base = data.draw(st.sampled_from([1.0, 0.25, 3e-39, 1e30]))
    lows = st.sampled_from([0, 1, 2, 0x7FFF, 0xFFFF])  # low 16 bits of the float32 pattern
    dts = st.sampled_from([torch.float32, torch.float64])
    ts = []
    for _ in range(ntensors):
        hi = torch.tensor([base], dtype=torch.float32).view(torch.int32) & ~0xFFFF
        bits = torch.tensor(data.draw(st.lists(lows, min_size=per, max_size=per)), dtype=torch.int32) | hi
        signs = torch.tensor(data.draw(st.lists(st.booleans(), min_size=per, max_size=per)))
        v = bits.view(torch.float32)
        ts.append(torch.where(signs, -v, v).to(data.draw(dts)))
    n = ntensors * per
    k = data.draw(st.integers(0, n))
    for limit in (None, 0):
        _check_prune(ts, k, data.draw(st.sampled_from([1, 4, None])), limit, data.draw(st.sampled_from([1, 2])))


def test_prune_large_bucket_fallback() -> None:
    """KMR.prune.tie-break, KMR.prune.count: a model that is mostly zeros (one bucket holds more than
    n/128 entries) takes the radix fallback by default; a Gaussian one collects its bucket."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(300_000, generator=g)
    a[: 200_000] = 0.0
    a[100_000:150_000] = -0.0
    b = torch.randn(700, 300, generator=g)
    b[::3] = 0.0
    ts = [a, b]
    zeros = int(sum(int((t == 0).sum()) for t in ts))
    for k in (1, zeros // 2, zeros, zeros + 1, 400_000):
        _check_prune(ts, k, None)


@given(st.integers(1, 40), st.data())
def test_prune_all_ties_quota_inside_chunk(n: int, data: st.DataObject) -> None:
    """KMR.prune.tie-break: when every |w| is equal (±v, ±0), the first k by (tensor, flat index)
    are pruned, the quota running out inside a chunk of any size."""
    v = data.draw(st.sampled_from([0.0, 1e-45, 1.0, 3e38]))
    signs = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    flat = torch.tensor([-v if s else v for s in signs], dtype=torch.float32)
    cut = data.draw(st.integers(0, n))
    ts = [flat[:cut].clone(), flat[cut:].clone().reshape(1, -1)]
    k = data.draw(st.integers(0, n))
    _check_prune(ts, k, data.draw(st.integers(1, n + 1)))
    keep = torch.cat([m.reshape(-1) for m in magnitude_masks(ts, k)])
    assert torch.equal(keep, torch.arange(n) >= k)  # independent: the first k positions in order


@given(tensor_lists(mixed=False), st.floats(0, 1))
def test_select_threshold_counts(ts: list[torch.Tensor], frac: float) -> None:
    """KMR.prune.count: the selected key is the k-th smallest |w|; `below` and `ties` match an
    independent numpy count over exact float64 magnitudes."""
    n = sum(t.numel() for t in ts)
    k = max(1, int(frac * n))
    if n == 0:
        with pytest.raises(KnobDomainError):
            select_threshold(ts, 1)
        return
    sel = select_threshold(ts, k)
    mags = np.sort(np.concatenate([np.abs(t.to(torch.float64).reshape(-1).numpy()) for t in ts]))
    v = mags[k - 1]
    assert sel.below == int((mags < v).sum()) and sel.ties == int((mags == v).sum())
    assert 1 <= sel.quota <= sel.ties
    key_val = torch.tensor([sel.key], dtype=torch.int64).to(
        {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}[sel.key_dtype]).view(sel.key_dtype)
    assert float(key_val) == v


def test_prune_large_tensor_many_chunks() -> None:
    """KMR.prune.tie-break on ~1.2M entries with the default chunk size: several chunks per tensor,
    a boundary value duplicated across tensors and chunks, denormals, ±0."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(1000, 700, generator=g)
    b = torch.randn(500_001, generator=g) * 1e-39  # denormal magnitudes
    a[::37, ::5] = 0.25
    b[::11] = -0.25
    b[::13] = -0.0
    ts = [a, b, torch.full((3, 3), 0.25)]
    n = sum(t.numel() for t in ts)
    below = int(sum(int((t.abs() < 0.25).sum()) for t in ts))
    for k in (below, below + 1, below + 5000, n // 3, n):
        _check_prune(ts, k, None)


def _band_spy(monkeypatch: pytest.MonkeyPatch, band: object = None) -> list[str]:
    """Record which path prune_global takes; with ``band``, force that sampled band."""
    from kmr_ref.kernels import prune_select as ps

    seen: list[str] = []
    real_write, real_band = ps._write_band, ps._sampled_band

    def write(*a: object, **kw: object) -> object:
        try:
            out = real_write(*a, **kw)  # type: ignore[arg-type]
        except ps._BandMiss:
            seen.append("miss")
            raise
        seen.append("band")
        return out

    def sampled(p: object, k: int, sample: int) -> object:
        got = real_band(p, k, sample)  # type: ignore[arg-type]
        if band is not None and got is not None:
            dt = got[0].dtype
            return tuple(torch.tensor(v, dtype=dt) for v in band)  # type: ignore[union-attr]
        return got

    monkeypatch.setattr(ps, "_write_band", write)
    monkeypatch.setattr(ps, "_sampled_band", sampled)
    return seen


@given(st.sampled_from(FLOATS), st.sampled_from(FLOATS), st.integers(0, 2**31 - 1), st.floats(0, 1),
       st.sampled_from([64, 512, 4096]), st.sampled_from([1, 2]))
def test_prune_band_path(dt0: torch.dtype, dt1: torch.dtype, seed: int, frac: float, sample: int,
                         workers: int) -> None:
    """KMR.prune.tie-break, KMR.prune.count, KMR.prune.zero-value: the one-pass path (a sampled band,
    one hardshrink write, the band's entries selected afterwards) on mixed dtypes with duplicated
    magnitudes across tensors, denormals and zeros; equal to the reference whether the band holds
    the k-th entry or misses it (then the exact path runs)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 50, generator=g)
    a[::7] = 0.5  # ties across rows and tensors
    b = torch.randn(3000, generator=g) * torch.tensor([1.0, 1e-40, 1e3])[torch.randint(3, (3000,), generator=g)]
    b[::5] = -0.5
    b[::11] = 0.0
    ts = [a.to(dt0), b.to(dt1), torch.full((7,), -0.5).to(dt0)]
    n = sum(t.numel() for t in ts)
    k = int(frac * n)
    want = ref_prune.magnitude_masks(ts, k)
    got = prune_global(ts, k, sample=sample, workers=workers)
    for t, o, keep in zip(ts, got, want, strict=True):
        assert _bits(o) == _bits(ref_prune.apply_mask(t, keep))
        assert (o is t) == bool(keep.all())


def test_prune_band_taken_and_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    """KMR.prune.tie-break: on a Gaussian model the one-pass band path is taken; a band that misses
    the k-th entry (too high, too low) falls back to the exact path with the same result."""
    g = torch.Generator().manual_seed(5)
    ts = [torch.randn(300, 400, generator=g), torch.randn(50_000, generator=g) * 0.5]
    k = 120_000
    want = [ref_prune.apply_mask(t, m) for t, m in zip(ts, ref_prune.magnitude_masks(ts, k), strict=True)]
    seen = _band_spy(monkeypatch)
    assert [_bits(o) for o in prune_global(ts, k)] == [_bits(w) for w in want]
    assert seen == ["band"]
    for bad in ((3.0, 4.0), (1e-3, 2e-3)):
        seen = _band_spy(monkeypatch, bad)
        assert [_bits(o) for o in prune_global(ts, k)] == [_bits(w) for w in want]
        assert seen == ["miss"]


def test_prune_bad_input() -> None:
    """KMR.prune.count and KMR.prune.dtype: k outside [0, n] and integer tensors are refused."""
    t = torch.ones(4)
    for k in (-1, 5):
        with pytest.raises(KnobDomainError) as e:
            prune_global([t], k)
        assert e.value.clause == "KMR.prune.count"
    with pytest.raises(RuleInputError) as e2:
        prune_global([torch.ones(3, dtype=torch.int32)], 1)
    assert e2.value.clause == "KMR.prune.dtype"
    assert prune_global([], 0) == [] and magnitude_masks([], 0) == []


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_matches_rule_on_a_model(device: str) -> None:
    """KMR.prune.global, KMR.prune.tensor-order: pruning the rule's ordered tensors with the kernel
    gives the rule's model, parameter for parameter (shared where the rule shares)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(9, 7), nn.ReLU(), nn.Conv2d(2, 3, 3), nn.Linear(7, 4)).to(device)
    lin0, lin3 = model[0], model[3]
    assert isinstance(lin0, nn.Linear) and isinstance(lin3, nn.Linear)
    with torch.no_grad():
        lin0.weight[:2] = 0.125
        lin3.weight[:, :1] = -0.125
    rule = ref_prune.MagnitudePruning.for_model(model)
    for s in (Fraction(0), Fraction(1, 3), Fraction(7, 10), Fraction(1)):
        out = rule.apply(model, "sparsity", s)
        targets = rule.targets(model)
        k = ref_prune.prune_count(s, sum(t.numel() for _, t in targets))
        got = prune_global([t for _, t in targets], k)
        new = dict(out.named_parameters())
        for (name, t), g in zip(targets, got, strict=True):
            assert _bits(new[name]) == _bits(g)
            assert (new[name] is t) == (g is t)


# ---------------------------------------------------------------- quantization

QPOOL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-45, -1e-45, 1e-39, 1e-8, -1e-8, 2.0**126, -(2.0**126),
         3.0, 0.1, -0.1, 1e-3, 127.0, 255.0]


@st.composite
def matrices(draw: st.DrawFn) -> torch.Tensor:
    g, length = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["pool", "normal", "ties", "narrow"]))
    if kind == "pool":
        vals = draw(st.lists(st.sampled_from(QPOOL), min_size=g * length, max_size=g * length))
        return torch.tensor(vals, dtype=torch.float32).reshape(g, length)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "normal":
        scale = draw(st.sampled_from([1.0, 1e-30, 1e30, 1e-6]))
        return (torch.randn(g, length, generator=gen) * scale).to(torch.float32)
    if kind == "narrow":  # all values of a row near one another: scale floor, zero point at the edge
        off = draw(st.sampled_from([0.0, 5.0, -5.0, 1e-7]))
        return (off + torch.randn(g, length, generator=gen) * 1e-9).to(torch.float32)
    # exact half-way points: with s a power of two and a row holding m * s, scale = s and w * inv = j + 1/2
    s = 2.0 ** draw(st.integers(-20, 20))
    m = draw(st.sampled_from([127, 255, 7, 15, 32767]))
    halves = torch.randint(-2 * m, 2 * m, (g, length), generator=gen).to(torch.float64) / 2
    w = (halves * s).to(torch.float32)
    w[:, 0] = m * s
    return w


def _check_quant(w: torch.Tensor, bits: int, scheme: ref_quant.Scheme, chunk: int | None,
                 workers: int | None = None, *, device: str = "cpu", compile: bool = False) -> None:
    codes, scale, zp = ref_quant.quantize_groups(w, bits, scheme)  # the reference, on CPU
    dq = ref_quant.dequantize_groups(codes, scale, zp)
    wd = w.to(device)
    before = _bits(wd)
    fq = quantize_groups(wd, bits, scheme, chunk=chunk, workers=workers, compile=compile)
    assert fq.codes.dtype == codes_dtype(bits, scheme) and fq.codes.device == wd.device
    assert torch.equal(fq.codes.cpu().to(torch.int32), codes)  # KMR.quant.rounding, KMR.quant.clamp
    assert _bits(fq.scale) == _bits(scale)  # KMR.quant.scale, KMR.quant.scale-floor
    assert torch.equal(fq.zp.cpu(), zp)  # KMR.quant.zero-point
    assert fq.dequant is not None and _bits(fq.dequant) == _bits(dq)  # KMR.quant.dequant (incl. +0.0)
    assert _bits(wd) == before


@given(matrices(), st.integers(2, 16), st.sampled_from(["symmetric", "asymmetric"]),
       st.sampled_from([1, 2, 7, 64, None]), st.sampled_from([None, 1, 2, 3]))
def test_quant_kernel_equals_reference(w: torch.Tensor, bits: int, scheme: ref_quant.Scheme,
                                       chunk: int | None, workers: int | None) -> None:
    """KMR.quant.range, KMR.quant.scale, KMR.quant.scale-floor, KMR.quant.zero-point,
    KMR.quant.rounding (half to even), KMR.quant.clamp, KMR.quant.dequant: bit for bit, any block size
    (rows per block, or a row split over several blocks when chunk < L), any number of workers."""
    _check_quant(w, bits, scheme, chunk, workers)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA path is unmeasured")


@needs_cuda
@given(matrices(), st.integers(2, 16), st.sampled_from(["symmetric", "asymmetric"]), st.sampled_from([1, 7, None]))
def test_quant_kernel_cuda_equals_reference(w: torch.Tensor, bits: int, scheme: ref_quant.Scheme,
                                            chunk: int | None) -> None:
    """KMR.quant.rounding, KMR.quant.clamp, KMR.quant.dequant on CUDA (one ``aminmax`` observe):
    the same bits as the CPU reference (ties, ±0, denormals, huge values, blocks down to 1 entry)."""
    _check_quant(w, bits, scheme, chunk, device="cuda")


@needs_cuda
@given(tensor_lists(), st.floats(0, 1), st.sampled_from([1, 3, 64, None]), st.sampled_from([None, 0, 3]))
def test_prune_kernel_cuda_equals_reference(ts: list[torch.Tensor], frac: float, chunk: int | None,
                                            bucket_limit: int | None) -> None:
    """KMR.prune.tie-break, KMR.prune.count, KMR.prune.zero-value on CUDA: masks and pruned bits equal
    to the CPU reference for mixed dtypes, ties, ±0, denormals, chunk size 1."""
    k = int(frac * sum(t.numel() for t in ts))
    want = ref_prune.magnitude_masks(ts, k)
    dts = [t.to("cuda") for t in ts]
    got = magnitude_masks(dts, k, chunk=chunk, bucket_limit=bucket_limit)
    outs = prune_global(dts, k, chunk=chunk, bucket_limit=bucket_limit)
    for t, g, o, keep in zip(ts, got, outs, want, strict=True):
        assert torch.equal(g.cpu(), keep)
        assert _bits(o) == _bits(ref_prune.apply_mask(t, keep))


def _can_compile() -> bool:
    import shutil

    return shutil.which("cc") is not None or shutil.which("gcc") is not None or shutil.which("g++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_compile(), reason="torch.compile on CPU needs a C++ compiler")
@given(matrices(), st.integers(2, 16), st.sampled_from(["symmetric", "asymmetric"]),
       st.sampled_from([1, 7, 64, None]), st.sampled_from([1, 2]))
def test_quant_compiled_equals_reference(w: torch.Tensor, bits: int, scheme: ref_quant.Scheme, chunk: int | None,
                                         workers: int) -> None:
    """KMR.quant.rounding, KMR.quant.clamp, KMR.quant.dequant with ``compile=True``: the
    ``torch.compile``d quantize pass gives the reference's bits (ties, ±0 -> +0.0, denormals, 2^126,
    blocks down to one entry, rows split over blocks, two workers sharing the compiled loop). The
    first example compiles (tens of seconds here); the compile count is then at least one."""
    from kmr_ref.kernels.quant_fused import COMPILE_STATS

    _check_quant(w, bits, scheme, chunk, workers, compile=True)
    assert COMPILE_STATS["compiles"] >= 1 and COMPILE_STATS["first_call_s"] > 0


@pytest.mark.parametrize("huge", [False, True])
def test_empty_out_hints_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, huge: bool) -> None:
    """The kernels' output allocator: a large CPU output gets the huge-page hint (when enabled and
    Linux offers it) over its 2 MiB-aligned interior, and nothing is written into it (the kernel
    writes every entry; no touch, no thread-count change); a small one is a plain ``empty``. Either
    way the tensor has the asked shape and dtype and holds what is written into it."""
    from kmr_ref.kernels import parallel

    monkeypatch.setattr(parallel, "HUGE_PAGES", huge)
    hints: list[tuple[int, int, int]] = []
    real = parallel._madvise()
    monkeypatch.setattr(parallel, "_madvise",
                        lambda: None if real is None else (lambda a, n, adv: hints.append((a, n, adv)) or 0))
    threads = torch.get_num_threads()
    written: list[str] = []
    real_zero = torch.Tensor.zero_
    monkeypatch.setattr(torch.Tensor, "zero_", lambda t: written.append("zero_") or real_zero(t))
    for dt in (torch.float32, torch.int8):
        hints.clear()
        out = parallel.empty_out((5 << 20,), dt, torch.device("cpu"))  # >= 4 MiB
        assert out.shape == (5 << 20,) and out.dtype == dt and torch.get_num_threads() == threads
        if huge and real is not None:
            ((a, n, adv),) = hints
            assert a % (2 << 20) == 0 and n % (2 << 20) == 0 and adv == 14  # MADV_HUGEPAGE
            assert out.data_ptr() <= a and a + n <= out.data_ptr() + out.numel() * out.element_size()
        else:
            assert hints == []
        src = torch.arange(5 << 20).to(dt)
        out.copy_(src)
        assert torch.equal(out, src)
    assert written == []
    hints.clear()
    small = parallel.empty_out((3, 4), torch.int8, torch.device("cpu"))
    assert small.shape == (3, 4) and small.dtype == torch.int8 and hints == []


def test_quant_negative_zero_trap() -> None:
    """KMR.quant.dequant: round(-0.127) is -0.0 in fp32, but the dequantized value must be +0.0
    (checked against an independent numpy evaluation of the spec's formulas)."""
    w = torch.tensor([[-0.001, 1.0, -1e-30]], dtype=torch.float32)
    fq = quantize_groups(w, 8, "symmetric")
    assert fq.dequant is not None
    npw = w.numpy()
    scale = np.float32(np.float32(1.0) / np.float32(127))
    inv = np.float32(np.float32(1) / scale)
    q = np.clip(np.rint(npw * inv).astype(np.int64), -127, 127)  # np.rint: half to even
    want = (q.astype(np.float32) * scale).astype(np.float32)
    assert _bits(fq.dequant) == want.tobytes()
    assert np.signbit(fq.dequant.numpy()).sum() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_tensor_matches_rule(device: str, granularity: ref_quant.Granularity, dtype: torch.dtype) -> None:
    """KMR.quant.groups, KMR.quant.dtype: the kernel on one parameter gives the rule's parameter and
    kept codes, bit for bit."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 6), nn.Conv2d(2, 4, 2)).to(device=device, dtype=dtype)
    out = ref_quant.quantize_model(model, 4, "asymmetric", granularity, 8)
    for name, t in ordered_parameters(model, default_prunable):
        fq, dq = quantize_tensor(t, 4, "asymmetric", granularity, 8)
        new = out.get_parameter(name)
        assert _bits(dq) == _bits(new)
        owner, leaf = out.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
        kept = ref_quant.kept_codes(owner, leaf)
        assert kept is not None and torch.equal(kept.codes, fq.codes.to(torch.int32))


def test_quant_bad_input() -> None:
    """KMR.quant.bits and KMR.quant.empty: as the reference, bad bit-widths and empty inputs are refused."""
    with pytest.raises(KnobDomainError):
        quantize_groups(torch.ones(2, 2), 1, "symmetric")
    with pytest.raises(RuleInputError):
        quantize_groups(torch.ones(2, 0), 8, "symmetric")
    with pytest.raises(TypeError):
        quantize_groups(torch.ones(4, dtype=torch.float32), 8, "symmetric")


def test_workers_one_per_core_whatever_the_load() -> None:
    """workers_for: torch's intra-op thread count bounded by the cores this process may use, also
    while other processes keep every core busy (the chunks are taken dynamically: a loaded machine
    gets as many workers as an idle one); an explicit count is kept; 1 at one intra-op thread."""
    import os
    import subprocess
    import sys
    import time

    from kmr_ref.kernels import parallel

    cpu = torch.device("cpu")
    cores = len(os.sched_getaffinity(0))
    want = min(torch.get_num_threads(), cores)
    busy = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 20\n"
                              "while time.monotonic() < end: pass"]) for _ in range(cores + 1)]
    try:
        time.sleep(0.3)
        assert parallel.workers_for(cpu) == want and parallel.workers_for(cpu, 3) == 3
        with parallel.intra_op_threads(1):
            assert parallel.workers_for(cpu) == 1
    finally:
        for p in busy:
            p.kill()
            p.wait()


@given(st.integers(1, 3000), st.sampled_from([torch.int16, torch.int32, torch.int64]), st.integers(0, 2**31 - 1),
       st.sampled_from([0.0, 0.01, 0.5, 1.0]))
def test_band_positions_are_torch_nonzero(n: int, dt: torch.dtype, seed: int, density: float) -> None:
    """KMR.prune.tie-break (collection order): the CPU band collector (bool mask, numpy's
    flatnonzero) gives exactly torch.nonzero's ascending positions of the entries where the two
    integer views differ: none, all, and every density between; a Scratch buffer reused across calls
    of different lengths."""
    from kmr_ref.kernels.parallel import Scratch
    from kmr_ref.kernels.prune_select import _band_positions

    g = torch.Generator().manual_seed(seed)
    o = torch.randint(-5, 5, (n,), generator=g).to(dt)
    u = torch.where(torch.rand(n, generator=g) < density, o + 1, o)
    s = Scratch()
    for m in (n, max(1, n // 3), n):
        got = _band_positions(o[:m], u[:m], s)
        want = torch.ne(o[:m], u[:m]).nonzero().view(-1)
        assert got.dtype == torch.int64 and torch.equal(got, want)
