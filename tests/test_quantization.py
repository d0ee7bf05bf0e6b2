"""Uniform affine quantization (spec/methods/quantization.md), checked against an independent
numpy float32 implementation, torch's fake-quant and exact rational arithmetic."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.methods.quantization import (
    RECORDS_ATTR,
    Granularity,
    Scheme,
    UniformQuantization,
    dequantize_groups,
    group_shape,
    kept_codes,
    quantize_groups,
)

F = np.float32
SCHEMES: list[Scheme] = ["symmetric", "asymmetric"]
GRANS: list[Granularity] = ["tensor", "channel", "group"]


# ---------------------------------------------------------------- independent numpy reference
def np_quantize(w2d: np.ndarray, bits: int, scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Written from the spec, group by group, with numpy float32 scalars and np.rint (half-even)."""
    assert w2d.dtype == np.float32
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
    else:
        qmin, qmax = 0, 2**bits - 1
    codes = np.zeros(w2d.shape, dtype=np.int64)
    scales = np.zeros(w2d.shape[0], dtype=np.float32)
    zps = np.zeros(w2d.shape[0], dtype=np.int64)
    for i, row in enumerate(w2d):
        lo = min(F(row.min()), F(0))
        hi = max(F(row.max()), F(0))
        s = F(max(-lo, hi) / F(qmax)) if scheme == "symmetric" else F(F(hi - lo) / F(qmax))
        s = max(s, F(2.0**-23))
        inv = F(F(1) / s)
        zp = 0 if scheme == "symmetric" else int(np.clip(qmin - int(np.rint(F(lo * inv))), qmin, qmax))
        for j, w in enumerate(row):
            codes[i, j] = int(np.clip(int(np.rint(F(w * inv))) + zp, qmin, qmax))
        scales[i], zps[i] = s, zp
    return codes, scales, zps


def np_dequant(codes: np.ndarray, scales: np.ndarray, zps: np.ndarray) -> np.ndarray:
    out: np.ndarray = (codes - zps[:, None]).astype(np.float32) * scales[:, None]
    return out


def bits_of(a: np.ndarray | torch.Tensor) -> np.ndarray:
    x = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    out: np.ndarray = np.ascontiguousarray(x).view(np.uint8)
    return out


SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.1754944e-38, 2.0**-23, 0.5, -0.5, 1.5, 2.5, 1.0, -1.0,
           3.0, 1e-30, 1e30, -1e30, 2.0**126, -(2.0**126), 65504.0, 1e-7]
floats = st.one_of(st.sampled_from(SPECIAL),
                   st.floats(-(2.0**126), 2.0**126, width=32, allow_nan=False, allow_infinity=False),
                   st.floats(-4.0, 4.0, width=32))


@st.composite
def groups(draw: Any) -> np.ndarray:
    g = draw(st.integers(1, 4))
    length = draw(st.integers(1, 9))
    vals = draw(st.lists(floats, min_size=g * length, max_size=g * length))
    return np.array(vals, dtype=np.float32).reshape(g, length)


@given(groups(), st.integers(2, 16), st.sampled_from(SCHEMES))
def test_quantize_groups_matches_numpy(w: np.ndarray, bits: int, scheme: Scheme) -> None:
    """KMR.quant.range KMR.quant.scale KMR.quant.scale-floor KMR.quant.zero-point KMR.quant.rounding
    KMR.quant.clamp KMR.quant.dequant KMR.quant.bits: bit for bit equal to the numpy reference."""
    codes, scale, zp = quantize_groups(torch.from_numpy(w.copy()), bits, scheme)
    ec, es, ez = np_quantize(w, bits, scheme)
    assert codes.dtype == torch.int32 and zp.dtype == torch.int32 and scale.dtype == torch.float32
    np.testing.assert_array_equal(codes.numpy(), ec)
    np.testing.assert_array_equal(bits_of(scale), bits_of(es))
    np.testing.assert_array_equal(zp.numpy(), ez)
    dq = dequantize_groups(codes, scale, zp)
    np.testing.assert_array_equal(bits_of(dq), bits_of(np_dequant(ec, es, ez)))


@given(groups(), st.integers(2, 16), st.sampled_from(SCHEMES))
def test_dequant_equals_torch_fake_quant(w: np.ndarray, bits: int, scheme: Scheme) -> None:
    """KMR.quant.rounding: the codes are torch's fake-quant arithmetic (multiply by fp32(1/s),
    nearbyint, add zp, clamp), so our dequantization equals fake_quantize_per_channel_affine."""
    wt = torch.from_numpy(w.copy())
    codes, scale, zp = quantize_groups(wt, bits, scheme)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if scheme == "symmetric" else (0, 2**bits - 1)
    fq = torch.fake_quantize_per_channel_affine(wt, scale, zp, 0, qmin, qmax)
    np.testing.assert_array_equal(bits_of(fq), bits_of(dequantize_groups(codes, scale, zp)))


def test_rounding_multiplies_by_inverse_scale() -> None:
    """KMR.quant.rounding: round(w * fp32(1/s)) and round(w / s) differ in rare last-ulp cases;
    the spec picks the product. Case found by search: symmetric 8-bit, one group [hi, w]."""
    hi = np.array([0x3FEF3FC3], dtype=np.uint32).view(np.float32)[0]  # the case written in the spec
    w = np.array([0x3FC2FA83], dtype=np.uint32).view(np.float32)[0]
    s = F(hi / F(127))
    inv = F(F(1) / s)
    by_product, by_division = int(np.rint(F(w * inv))), int(np.rint(F(w / s)))
    assert by_product != by_division  # the two conventions really differ here
    codes, scale, _ = quantize_groups(torch.tensor([[hi, w]], dtype=torch.float32), 8, "symmetric")
    assert scale.item() == s
    assert int(codes[0, 1]) == by_product


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_ties_round_half_to_even(scheme: Scheme, bits: int) -> None:
    """KMR.quant.rounding: values exactly half-way between two codes go to the even code.
    Scale is a power of two here, so w * inv_scale is exact and lands on k + 1/2."""
    qmax = 2 ** (bits - 1) - 1 if scheme == "symmetric" else 2**bits - 1
    s = 2.0**-4
    top = qmax * s  # symmetric: max |w| = top -> s exactly; asymmetric: hi - lo = top with lo = 0
    ks = list(range(min(qmax, 40)))
    row = [top] + [(k + 0.5) * s for k in ks] + ([-(k + 0.5) * s for k in ks] if scheme == "symmetric" else [])
    codes, scale, zp = quantize_groups(torch.tensor([row], dtype=torch.float32), bits, scheme)
    assert scale.item() == s and int(zp[0]) == 0
    expect = [qmax] + [round(k + 0.5) for k in ks]  # Python's round() is half-to-even
    if scheme == "symmetric":
        expect += [round(-(k + 0.5)) for k in ks]
    assert codes[0].tolist() == expect
    assert all(c % 2 == 0 for c in expect[1:])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 8, 16])
def test_all_zero_group_and_signed_zero(scheme: Scheme, bits: int) -> None:
    """KMR.quant.scale-floor: an all-zero group (+0 and -0 alike) gets scale 2^-23, every code
    equals the zero point, and dequantizes to +0.0."""
    w = torch.tensor([[0.0, -0.0, 0.0], [1.0, -0.0, 0.25]], dtype=torch.float32)
    codes, scale, zp = quantize_groups(w, bits, scheme)
    assert scale[0].item() == 2.0**-23
    assert int(zp[0]) == 0
    assert codes[0].tolist() == [int(zp[0])] * 3
    dq = dequantize_groups(codes, scale, zp)
    assert bits_of(dq[0]).tolist() == [0] * 12  # +0.0, never -0.0
    assert int(codes[1, 1]) == int(zp[1]) and dq[1, 1].item() == 0.0  # zero is exact (KMR.quant.range)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("c", [3.0, -3.0, 1e-40, 2.0**126, -(2.0**126)])
def test_constant_groups(scheme: Scheme, c: float) -> None:
    """KMR.quant.range: a constant group still has 0 in its range; compare with numpy."""
    w = np.full((1, 5), c, dtype=np.float32)
    codes, scale, zp = quantize_groups(torch.from_numpy(w.copy()), 4, scheme)
    ec, es, ez = np_quantize(w, 4, scheme)
    assert codes.numpy().tolist() == ec.tolist() and scale.item() == es[0] and zp.tolist() == ez.tolist()
    dq = dequantize_groups(codes, scale, zp)
    assert bool(torch.isfinite(dq).all())


def float_bound(scale: float, qmax: int) -> float:
    return scale * (0.5 + (3 * qmax + 2) * 2.0**-24)


@given(groups(), st.integers(2, 16), st.sampled_from(SCHEMES))
def test_error_bound_in_float(w: np.ndarray, bits: int, scheme: Scheme) -> None:
    """KMR.quant.error-bound: in the binary32 arithmetic of the spec, every element satisfies
    |w - dq| <= s * (1/2 + (3*qmax + 2) * 2^-24) (computed exactly in binary64 / rationals)."""
    codes, scale, zp = quantize_groups(torch.from_numpy(w.copy()), bits, scheme)
    dq = dequantize_groups(codes, scale, zp).numpy()
    qmax = 2 ** (bits - 1) - 1 if scheme == "symmetric" else 2**bits - 1
    if scheme == "symmetric":  # KMR.quant.clamp: symmetric codes never reach the clamp
        inv = np.float32(1) / scale.numpy()
        assert (np.abs(np.rint(w * inv[:, None])) <= qmax).all()
    for i in range(w.shape[0]):
        s = float(scale[i])
        bound = Fraction(s) * (Fraction(1, 2) + Fraction(3 * qmax + 2, 2**24))
        for j in range(w.shape[1]):
            assert abs(Fraction(float(w[i, j])) - Fraction(float(dq[i, j]))) <= bound


def exact_codes(w: np.ndarray, s: Fraction, zp: int, qmin: int, qmax: int) -> tuple[list[int], list[int]]:
    unclamped = [round(Fraction(float(x)) / s) + zp for x in w]  # round(Fraction) is half-to-even
    return unclamped, [min(max(u, qmin), qmax) for u in unclamped]


@given(groups(), st.integers(2, 16), st.sampled_from(SCHEMES))
def test_error_bound_and_clamp_error_over_the_reals(w: np.ndarray, bits: int, scheme: Scheme) -> None:
    """KMR.quant.error-bound (reals): with the rule's s and zp, the exact quantizer
    q* = clamp(round(w / s) + zp) gives |w - (q* - zp) s| <= s/2 inside the clamp range;
    KMR.quant.clamp-error: outside it the error is exactly the distance to the end value."""
    _, scale, zp = quantize_groups(torch.from_numpy(w.copy()), bits, scheme)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if scheme == "symmetric" else (0, 2**bits - 1)
    for i in range(w.shape[0]):
        s, z = Fraction(float(scale[i])), int(zp[i])
        unclamped, q = exact_codes(w[i], s, z, qmin, qmax)
        for x, u, c in zip(w[i], unclamped, q, strict=True):
            err = abs(Fraction(float(x)) - (c - z) * s)
            if qmin <= u <= qmax:
                assert err <= s / 2
            else:
                end = (qmax if u > qmax else qmin) - z
                assert err == abs(Fraction(float(x)) - end * s)
                assert err > s / 2 or err == s / 2


def test_clamp_error_in_float_codes() -> None:
    """KMR.quant.clamp KMR.quant.clamp-error: asymmetric groups [-(k + 1/2), qmax - k - 1/2]
    (scale exactly 1) where round(hi*inv) + zp exceeds qmax: such codes are clamped to qmax and
    dequantize to the end value, and the error stays <= s/2."""
    seen = 0
    for bits in (2, 3, 4, 8):
        qmax = 2**bits - 1
        for k in range(min(qmax, 20)):
            w = np.array([[-(k + 0.5), qmax - k - 0.5]], dtype=np.float32)
            codes, scale, zp = quantize_groups(torch.from_numpy(w.copy()), bits, "asymmetric")
            assert scale.item() == 1.0 and int(zp[0]) == round(k + 0.5)
            raw = round(qmax - k - 0.5) + int(zp[0])
            dq = dequantize_groups(codes, scale, zp)[0]
            if raw > qmax:
                seen += 1
                assert int(codes[0, 1]) == qmax and dq[1].item() == qmax - int(zp[0])
            else:
                assert int(codes[0, 1]) == raw
            assert abs(dq[1].item() - w[0, 1]) <= 0.5
    assert seen > 0


# ---------------------------------------------------------------- groups
def test_group_shapes() -> None:
    """KMR.quant.groups: per-tensor one group; per-channel the rows of (out, R); per-group
    consecutive runs of g entries of each row, row-major."""
    assert group_shape((6, 4, 3, 3), "tensor", 1) == (1, 216)
    assert group_shape((6, 4, 3, 3), "channel", 1) == (6, 36)
    assert group_shape((6, 4, 3, 3), "group", 12) == (18, 12)
    assert group_shape((5,), "channel", 1) == (5, 1)
    assert group_shape((), "tensor", 1) == (1, 1)
    with pytest.raises(RuleInputError) as e:
        group_shape((6, 4, 3, 3), "group", 10)
    assert e.value.clause == "KMR.quant.group-divides"


def test_group_rows_are_row_major_runs() -> None:
    """KMR.quant.groups: per-group g=3 over a (2, 6) weight = four groups, each three entries of a row."""
    w = torch.tensor([[1.0, 2, 3, -10, 5, 6], [7, 8, 90, 1, 1, 1]])
    m = nn.Linear(6, 2, bias=False)
    m.weight = nn.Parameter(w.clone())
    q = UniformQuantization("symmetric", "group", group_size=3).apply(m, "bits", 4)
    kc = kept_codes(q, "weight")
    assert kc is not None
    expected = [float(max(abs(x) for x in w.reshape(4, 3)[i].tolist())) for i in range(4)]
    assert kc.scale.tolist() == [float(F(F(e) / F(7))) for e in expected]


# ---------------------------------------------------------------- the rule on modules
def model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 6)).to(dtype)


def sub(m: nn.Module, i: int) -> nn.Module:
    return m.get_submodule(str(i))


def P(m: nn.Module, name: str) -> nn.Parameter:
    return m.get_parameter(name)


def snapshot(m: nn.Module) -> list[tuple[str, bytes]]:
    return [(k, bits_of(v.detach().contiguous().view(torch.uint8)).tobytes()) for k, v in m.state_dict().items()]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("bits", [2, 5, 16])
def test_rule_weights_codes_and_no_mutation(scheme: Scheme, gran: Granularity, bits: int) -> None:
    """KMR.quant.codes-kept KMR.quant.selection KMR.rule.no-mutation: the rule returns a new
    model whose selected weights are the dequantized codes, keeps codes/scale/zp buffers, shares
    the untouched tensors, and leaves the input model unchanged."""
    m = model()
    before = snapshot(m)
    params_before = {k: v for k, v in m.named_parameters()}
    q = UniformQuantization(scheme, gran, group_size=2).apply(m, "bits", bits)
    assert snapshot(m) == before
    assert {k: v for k, v in m.named_parameters()} == params_before
    assert not hasattr(sub(m, 0), RECORDS_ATTR) and "weight_qcodes" not in sub(m, 0)._buffers
    assert P(q, "0.bias") is P(m, "0.bias") and P(q, "3.bias") is P(m, "3.bias")
    for idx in (0, 3):
        w = P(m, f"{idx}.weight").detach()
        g, length = group_shape(tuple(w.shape), gran, 2)
        ec, es, ez = np_quantize(w.numpy().reshape(g, length), bits, scheme)
        kc = kept_codes(sub(q, idx), "weight")
        assert kc is not None and kc.record.bits == bits and kc.record.scheme == scheme
        assert kc.codes.dtype == torch.int32 and kc.codes.shape == (g, length)
        assert kc.codes.numpy().tolist() == ec.tolist() and kc.zp.numpy().tolist() == ez.tolist()
        expect = np_dequant(ec, es, ez).reshape(w.shape)
        assert bits_of(P(q, f"{idx}.weight").detach()).tobytes() == bits_of(expect).tobytes()
        assert P(q, f"{idx}.weight").requires_grad
    # bookkeeping buffers are not part of the state dict: it loads into the original architecture
    assert set(q.state_dict()) == set(m.state_dict())


def test_rule_is_deterministic() -> None:
    """KMR.rule.deterministic: two applications give the same bytes."""
    r = UniformQuantization("asymmetric", "channel")
    assert snapshot(r.apply(model(), "bits", 3)) == snapshot(r.apply(model(), "bits", 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype: torch.dtype) -> None:
    """KMR.quant.dtype: weights are converted to float32, quantized, and the dequantized value is
    cast back to the parameter's dtype."""
    m = model(dtype)
    q = UniformQuantization("symmetric", "channel").apply(m, "bits", 4)
    w = P(m, "3.weight").detach()
    ec, es, ez = np_quantize(w.to(torch.float32).numpy(), 4, "symmetric")
    assert P(q, "3.weight").dtype == dtype
    expect = torch.from_numpy(np_dequant(ec, es, ez)).to(dtype)
    assert torch.equal(P(q, "3.weight").detach().view(torch.uint8), expect.view(torch.uint8))
    assert kept_codes(sub(q, 3), "weight") is not None


def test_tied_weights_stay_tied() -> None:
    """KMR.quant.selection: a parameter held by two modules is quantized once, both get it."""
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    m = nn.Sequential(a, b)
    q = UniformQuantization().apply(m, "bits", 4)
    assert P(q, "0.weight") is P(q, "1.weight") and P(q, "0.weight") is not a.weight
    assert b.weight is a.weight


def test_requantizing_replaces_codes() -> None:
    """KMR.quant.codes-kept: applying the rule to a quantized model quantizes its current
    (dequantized) weights; the new codes replace the old."""
    r = UniformQuantization("symmetric", "tensor")
    q8 = r.apply(model(), "bits", 8)
    q3 = r.apply(q8, "bits", 3)
    k8, k3 = kept_codes(sub(q8, 3), "weight"), kept_codes(sub(q3, 3), "weight")
    assert k8 is not None and k3 is not None and k8.record.bits == 8 and k3.record.bits == 3
    ec, _, _ = np_quantize(P(q8, "3.weight").detach().numpy().reshape(1, -1), 3, "symmetric")
    assert k3.codes.numpy().tolist() == ec.tolist()


def test_stale_record_is_not_valid() -> None:
    """KMR.quant.codes-kept: a record is valid only while the weight equals its dequantization."""
    q = UniformQuantization().apply(model(), "bits", 4)
    assert kept_codes(sub(q, 3), "weight") is not None
    with torch.no_grad():
        P(q, "3.weight")[0, 0] += 1.0
    assert kept_codes(sub(q, 3), "weight") is None


# ---------------------------------------------------------------- knobs and bad input
def test_knobs() -> None:
    """KMR.quant.bits KMR.quant.groups: bits 2..16 (decreasing is more aggressive); group_size
    1..2^31 only for per-group granularity."""
    ks = UniformQuantization("symmetric", "group", group_size=4).knobs()
    assert [(k.name, k.more_aggressive) for k in ks] == [("bits", "decreasing"), ("group_size", "increasing")]
    assert ks[0].grid() == list(range(2, 17))
    assert [k.name for k in UniformQuantization().knobs()] == ["bits"]
    with pytest.raises(KnobDomainError) as e:
        UniformQuantization().apply(model(), "group_size", 4)
    assert e.value.clause == "KMR.knob.unknown"
    q = UniformQuantization("asymmetric", "group", bits=3, group_size=4).apply(model(), "group_size", 2)
    kc = kept_codes(sub(q, 3), "weight")
    assert kc is not None and kc.record.bits == 3 and kc.record.group_size == 2


@pytest.mark.parametrize("bad", [1, 17, 0, -3, 2.5, True, "17", None])
def test_bits_out_of_range(bad: object) -> None:
    """KMR.quant.bits: a bit-width outside 2..16 raises KnobDomainError naming the clause."""
    m = model()
    before = snapshot(m)
    with pytest.raises(KnobDomainError) as e:
        UniformQuantization().apply(m, "bits", bad)  # type: ignore[arg-type]
    assert e.value.clause == "KMR.quant.bits"
    assert snapshot(m) == before


def _with_weight(w: torch.Tensor) -> nn.Module:
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    sub(m, 1).weight = nn.Parameter(w, requires_grad=w.is_floating_point())
    return m


@pytest.mark.parametrize(("w", "clause"), [
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "KMR.quant.nonfinite"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "KMR.quant.nonfinite"),
    (torch.tensor([[1.0, -float("inf")], [0.0, 1.0]]), "KMR.quant.nonfinite"),
    (torch.tensor([[1, 2], [3, 4]], dtype=torch.int32), "KMR.quant.dtype"),
    (torch.tensor([[2.0**127, 1.0], [0.0, 1.0]]), "KMR.quant.magnitude"),
    (torch.tensor([[1e300, 1.0], [0.0, 1.0]], dtype=torch.float64), "KMR.quant.magnitude"),
    (torch.tensor([[-10077.0, 65504.0], [0.0, 1.0]], dtype=torch.float16), "KMR.quant.magnitude"),
])
def test_bad_input(w: torch.Tensor, clause: str) -> None:
    """KMR.quant.nonfinite KMR.quant.dtype KMR.quant.magnitude: typed errors that
    name the clause; the caller's model is untouched (the first layer is checked before it)."""
    m = _with_weight(w)
    before = snapshot(m)
    with pytest.raises(RuleInputError) as e:
        UniformQuantization("asymmetric", "tensor").apply(m, "bits", 2)
    assert e.value.clause == clause and str(e.value).startswith(f"[{clause}]")
    assert snapshot(m) == before
    assert not hasattr(sub(m, 0), RECORDS_ATTR)


def test_group_size_must_divide() -> None:
    """KMR.quant.group-divides: g must divide R = numel / out for every selected tensor."""
    m = model()
    with pytest.raises(RuleInputError) as e:
        UniformQuantization("symmetric", "group", group_size=5).apply(m, "bits", 4)  # R = 18 and 16
    assert e.value.clause == "KMR.quant.group-divides"
    with pytest.raises(KnobDomainError) as e2:
        UniformQuantization("symmetric", "group", group_size=2).apply(m, "group_size", 0)
    assert e2.value.clause == "KMR.quant.groups"


@pytest.mark.filterwarnings("ignore:Initializing zero-element")
def test_zero_size_skipped() -> None:
    """KMR.quant.empty, KMR.select.zero-size: a zero-size weight is skipped (not fatal); the others
    are quantized."""
    m = nn.Sequential(nn.Linear(0, 2), nn.Linear(2, 2))
    out = UniformQuantization().apply(m, "bits", 4)
    assert out[0].weight is m[0].weight and not hasattr(out[0], RECORDS_ATTR)
    assert "weight" in out[1].__dict__[RECORDS_ATTR]
    with pytest.raises(RuleInputError) as e:  # spec 0.1.0 on request
        UniformQuantization(empty="refuse").apply(m, "bits", 4)
    assert e.value.clause == "KMR.quant.empty"


def test_nothing_selected_is_identity() -> None:
    """KMR.quant.selection: a model without selected tensors comes back with equal bytes."""
    m = nn.Sequential(nn.LayerNorm(4))
    assert snapshot(UniformQuantization().apply(m, "bits", 2)) == snapshot(m)


def test_per_tensor_bits_knobs() -> None:
    """KMR.quant.per-tensor-bits: bits@<name> quantizes that tensor alone; codes of the other
    tensors stay valid; storage counted by hand."""
    from kmr_ref.methods.storage import storage_bits

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    rule = UniformQuantization.for_model(m)
    assert [k.name for k in rule.knobs()] == ["bits", "bits@0.weight", "bits@1.weight"]
    a = rule.apply(m, "bits@0.weight", 2)
    assert a[0].__dict__[RECORDS_ATTR]["weight"].bits == 2 and not hasattr(a[1], RECORDS_ATTR)
    assert a[1].weight is m[1].weight
    b = rule.apply(a, "bits@1.weight", 5)
    assert b[0].__dict__[RECORDS_ATTR]["weight"].bits == 2 and b[1].__dict__[RECORDS_ATTR]["weight"].bits == 5
    # 16 codes at 2 bits + 4 channel scales; 8 codes at 5 bits + 2 scales; biases 4 + 2 float32
    assert storage_bits(b) == (16 * 2 + 4 * 32) + (8 * 5 + 2 * 32) + (4 + 2) * 32
    with pytest.raises(KnobDomainError) as e:
        rule.apply(m, "bits@0.weight", 17)
    assert e.value.clause == "KMR.quant.bits"
