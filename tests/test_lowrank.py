"""Low-rank factorization (spec/methods/lowrank.md), checked against numpy's SVD, exact
Fraction arithmetic and torch.nn.functional convolutions."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core import (
    CostMeter,
    KMRTriple,
    KnobDomainError,
    Proposal,
    RuleInputError,
    ScheduledPolicy,
    Status,
    budgeted_kmr,
)
from kmr_ref.methods.lowrank import LowRank, LowRankFactors, signed_svd, targets
from kmr_ref.methods.meters import parameter_count

EPS64 = 2.0 ** -52


def state_bytes(m: nn.Module) -> dict[str, tuple[str, tuple[int, ...], bytes, bool]]:
    return {n: (str(t.dtype), tuple(t.shape), t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes(),
                t.requires_grad)
            for n, t in [*m.named_parameters(), *m.named_buffers()]}


def linear(w: np.ndarray, bias: bool = True) -> nn.Linear:
    m, n = w.shape
    lin = nn.Linear(n, m, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        if bias:
            lin.bias.copy_(torch.linspace(-1, 1, m, dtype=torch.float64))
    return lin


@st.composite
def matrices(draw: st.DrawFn) -> np.ndarray:
    m, n = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n))
    if draw(st.booleans()):  # low numerical rank, repeated singular values
        k = draw(st.integers(1, min(m, n)))
        w = rng.standard_normal((m, k)) @ rng.standard_normal((k, n))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    return np.asarray(w * scale, dtype=np.float64)


def tau(w: np.ndarray) -> float:
    """The tolerance of KMR.lowrank.error-eckart-young."""
    return float(64 * max(w.shape) * EPS64 * float(np.linalg.norm(w)))


@given(matrices(), st.data())
def test_linear_eckart_young(w: np.ndarray, data: st.DataObject) -> None:
    """KMR.lowrank.error-eckart-young, KMR.lowrank.split, KMR.lowrank.applicable,
    KMR.lowrank.equivalence, KMR.lowrank.sharing, KMR.rule.no-mutation."""
    m, n = w.shape
    r = data.draw(st.integers(1, min(m, n) - 1)) if min(m, n) > 1 else 1
    model: Any = nn.Sequential(linear(w))
    before = state_bytes(model)
    out: Any = LowRank().apply(model, "rank", r)
    assert state_bytes(model) == before
    s = np.linalg.svd(w, compute_uv=False)  # independent SVD (numpy)
    if r * (m + n) < m * n:
        assert isinstance(out[0], LowRankFactors) and len(out[0]) == 2
        f: Any = out[0]
        a, b = f[0].weight.detach().numpy(), f[1].weight.detach().numpy()
        assert a.shape == (r, n) and b.shape == (m, r) and f[0].bias is None
        assert f[1].bias is model[0].bias  # shared, not copied
        err = np.linalg.norm(w - b @ a)
        assert abs(err - math.sqrt(float(np.sum(s[r:] ** 2)))) <= tau(w)
        # the balanced split: ||A||_F^2 = ||B||_F^2 = sum of the top r singular values
        assert abs(np.sum(a * a) - np.sum(s[:r])) <= tau(w) * (1 + np.sum(s[:r]))
        assert abs(np.sum(b * b) - np.sum(s[:r])) <= tau(w) * (1 + np.sum(s[:r]))
        assert parameter_count(out) == r * (m + n) + m
        x = torch.linspace(-2, 2, 3 * n, dtype=torch.float64).reshape(3, n)
        exp = x.numpy() @ (b @ a).T + model[0].bias.detach().numpy()
        np.testing.assert_allclose(out(x).detach().numpy(), exp, rtol=1e-12, atol=1e-12 * (1 + np.abs(exp).max()))
    else:  # KMR.lowrank.applicable: left unchanged, not an error
        assert out[0].weight is model[0].weight and parameter_count(out) == m * n + m


def test_applicable_boundary() -> None:
    """KMR.lowrank.applicable: r(m+n) < mn strictly. 8x8: r = 4 gives 64 = 64 (unchanged), r = 3
    gives 48 < 64; 6x3: r = 2 gives 18 = 18 (unchanged), r = 1 gives 9 < 18."""
    rng = np.random.default_rng(0)
    for (m, n), r, applied in (((8, 8), 4, False), ((8, 8), 3, True), ((6, 3), 2, False), ((6, 3), 1, True)):
        model = nn.Sequential(linear(rng.standard_normal((m, n))))
        out: Any = LowRank().apply(model, "rank", r)
        assert isinstance(out[0], LowRankFactors) is applied
        assert parameter_count(out) == (r * (m + n) if applied else m * n) + m


@given(matrices())
def test_sign_convention(w: np.ndarray) -> None:
    """KMR.lowrank.sign, KMR.lowrank.svd: the largest-|.| entry of each u_i (first on ties) is
    positive, and U S V^T reconstructs W."""
    u, s, vh = signed_svd(torch.from_numpy(w))
    un = u.numpy()
    for i in range(un.shape[1]):
        j = int(np.flatnonzero(np.abs(un[:, i]) == np.abs(un[:, i]).max())[0])
        assert un[j, i] > 0
    np.testing.assert_allclose((un * s.numpy()) @ vh.numpy(), w, atol=tau(w), rtol=0)
    # and -W flips every pair but not the singular values
    _, s2, _ = signed_svd(torch.from_numpy(-w))
    assert torch.equal(s2, s) or torch.allclose(s2, s, rtol=1e-12, atol=tau(w))


def test_sign_first_index_on_ties() -> None:
    """KMR.lowrank.sign: u_1 = (-1, 1)/sqrt(2) has a tie in |.|; the first index decides: (1, -1)/sqrt(2)."""
    w = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)  # rank 1, u = ±(1, -1)/√2
    u, _, vh = signed_svd(w)
    assert u[0, 0] > 0 and u[1, 0] < 0
    assert vh[0, 0] < 0  # so that u_1 s_1 v_1^T = W


def test_determinism() -> None:
    """KMR.rule.deterministic, KMR.lowrank.svd: same bytes in, same bytes out (fp32 and fp64)."""
    torch.manual_seed(3)
    for dt in (torch.float32, torch.float64):
        model = nn.Sequential(nn.Linear(20, 16, dtype=dt), nn.ReLU(), nn.Conv1d(4, 6, 3, dtype=dt))
        r = LowRank(layers=("0", "2"))
        a: Any = r.apply(model, "rank", 3)
        b: Any = r.apply(model, "rank", 3)
        assert state_bytes(a) == state_bytes(b)
        assert a[0][0].weight.dtype == dt and a[0][1].weight.dtype == dt


def test_energy_diagonal() -> None:
    """KMR.lowrank.energy on W = diag(4, 2, 1, 1) padded to 4 x 40 (energies 16, 4, 1, 1; total 22):
    e <= 16/22 -> r = 1; e in (16/22, 20/22] -> r = 2; e in (20/22, 21/22] -> r = 3; above -> r = 4
    (then r(m+n) >= mn: unchanged, KMR.lowrank.applicable)."""
    w = np.zeros((4, 40))
    w[0, 0], w[1, 1], w[2, 2], w[3, 3] = 4, 2, 1, 1
    model: Any = nn.Sequential(linear(w))
    cases: list[tuple[Any, int]] = [
        (Fraction(1, 20), 1), (Fraction(16, 22), 1), (Fraction(16, 22) + Fraction(1, 10**6), 2), (Fraction(20, 22), 2),
        (Fraction(21, 22), 3), (Fraction(43, 44), 4), (1, 4), ("0.95", 3)]
    for e, r in cases:
        out: Any = LowRank().apply(model, "energy", e)
        layer: Any = out[0]
        factored = isinstance(layer, LowRankFactors)
        inner = layer[0].weight.shape[0] if factored else 4
        assert inner == r, (e, inner, r)


@given(matrices(), st.fractions(min_value=Fraction(1, 100), max_value=1, max_denominator=100))
def test_energy_against_oracle(w: np.ndarray, e: Fraction) -> None:
    """KMR.lowrank.energy: the smallest r with fsum(s_1^2..s_r^2) >= e * fsum(all), exact compare
    (oracle: correctly rounded Fraction sums of the binary64 squares of torch.linalg.svdvals)."""
    s = torch.linalg.svdvals(torch.from_numpy(w)).tolist()
    sq = [x * x for x in s]
    part = [float(sum((Fraction(v) for v in sq[:r]), Fraction(0))) for r in range(len(sq) + 1)]
    r = next(r for r in range(1, len(sq) + 1) if Fraction(part[r]) >= e * Fraction(part[-1]))
    m, n = w.shape
    out: Any = LowRank().apply(nn.Sequential(linear(w)), "energy", e)
    if r * (m + n) < m * n:
        assert out[0][0].weight.shape[0] == r
    else:
        assert isinstance(out[0], nn.Linear)


@pytest.mark.parametrize(("cls", "kw", "shape"), [
    (nn.Conv2d, {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 5, 9, 9)),
    (nn.Conv2d, {"kernel_size": (1, 3), "dilation": 2, "padding": (0, 2), "padding_mode": "circular"}, (2, 5, 7, 9)),
    (nn.Conv1d, {"kernel_size": 1}, (2, 5, 11)),
    (nn.Conv3d, {"kernel_size": 2}, (1, 5, 4, 4, 4)),
])
def test_conv(cls: type[nn.Module], kw: dict[str, object], shape: tuple[int, ...]) -> None:
    """KMR.lowrank.conv, KMR.lowrank.equivalence: Conv(in, r, k) then Conv(r, out, 1) equals the
    convolution with the rank-r reshaped weight (numpy SVD), run by a fresh torch Conv of the same
    geometry."""
    torch.manual_seed(0)
    conv: Any = cls(5, 12, **kw).double()
    seq: Any = LowRank().apply(nn.Sequential(conv), "rank", 2)
    out = seq[0]
    assert isinstance(out, LowRankFactors)
    first, second = out[0], out[1]
    assert type(first) is cls and type(second) is cls
    assert first.out_channels == 2 and first.kernel_size == conv.kernel_size and first.stride == conv.stride
    assert first.padding == conv.padding and first.dilation == conv.dilation and first.bias is None
    assert all(k == 1 for k in second.kernel_size) and second.bias is conv.bias
    w = conv.weight.detach().numpy().reshape(12, -1)
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    w2 = torch.from_numpy((u[:, :2] * s[:2]) @ vh[:2]).reshape(conv.weight.shape)
    x = torch.randn(*shape, dtype=torch.float64)
    ref_conv: Any = cls(5, 12, **kw).double()
    with torch.no_grad():
        ref_conv.weight.copy_(w2)
        ref_conv.bias.copy_(conv.bias)
    torch.testing.assert_close(out(x), ref_conv(x), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(conv(x), ref_conv(x))  # rank 2 really changed the layer


def test_refactor() -> None:
    """KMR.lowrank.refactor: a LowRankFactors at rank 4 re-factorized at rank 2 is the best rank-2
    approximation of B·A; rank >= 4 leaves it unchanged (the rule never raises a rank)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 12))
    model = nn.Sequential(linear(w), nn.ReLU(), linear(rng.standard_normal((3, 10))))
    rule = LowRank(layers=("0",))
    m4: Any = rule.apply(model, "rank", 4)
    p4 = (m4[0][1].weight @ m4[0][0].weight).detach().numpy()
    m2: Any = rule.apply(m4, "rank", 2)
    assert m2[0][0].weight.shape == (2, 12) and m2[0][1].weight.shape == (10, 2)
    s = np.linalg.svd(p4, compute_uv=False)
    err = np.linalg.norm(p4 - (m2[0][1].weight @ m2[0][0].weight).detach().numpy())
    assert abs(err - math.sqrt(float(np.sum(s[2:] ** 2)))) <= tau(w)
    for r in (4, 5):
        same: Any = rule.apply(m4, "rank", r)
        assert same[0][0].weight is m4[0][0].weight and same[0][1].weight is m4[0][1].weight
    full: Any = LowRank().apply(m4, "energy", 1)
    assert full[0][0].weight is m4[0][0].weight
    assert [n for n, _ in targets(m4, None)] == ["0", "2"]  # KMR.lowrank.scope: the pair is one layer


def test_rank_range() -> None:
    """KMR.lowrank.rank-range: r <= 0 (in any spelling) is KnobDomainError; r >= min(m, n) is
    RuleInputError for rank@<layer> and leaves the layer unchanged for the global knob; the model
    is untouched."""
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    before = state_bytes(model)
    for r in (0, -1):
        with pytest.raises(KnobDomainError) as e:
            LowRank().apply(model, "rank", r)
        assert e.value.clause == "KMR.lowrank.rank-range"
    for r in (3, 4, 100):  # rank@<layer> names one layer: r >= min(m, n) is an error
        with pytest.raises(RuleInputError) as e2:
            LowRank(layers=("0", "2")).apply(model, "rank@2", r)
        assert e2.value.clause == "KMR.lowrank.rank-range"
        # the global knob leaves such layers unchanged (r(m+n) >= mn: not applicable)
        same: Any = LowRank().apply(model, "rank", r)
        assert isinstance(same[0], nn.Linear) and isinstance(same[2], nn.Linear)
    for bad_r in ("0", Fraction(0), -1.0):  # non-int spellings still name the rank clause
        with pytest.raises(KnobDomainError) as e3:
            LowRank().apply(model, "rank", bad_r)
        assert e3.value.clause == "KMR.lowrank.rank-range"
    kept: Any = LowRank(layers=("0",)).apply(model, "rank", 3)
    assert isinstance(kept[0], nn.Linear)  # 3*10 >= 24: unchanged
    for bad in (1.5, "x", True, 2**21):
        with pytest.raises(KnobDomainError):
            LowRank().apply(model, "rank", bad)  # type: ignore[arg-type]
    for en in (0, Fraction(-1, 2), Fraction(3, 2)):
        with pytest.raises(KnobDomainError):
            LowRank().apply(model, "energy", en)
    assert state_bytes(model) == before


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_bad_input() -> None:
    """KMR.lowrank.nonfinite, KMR.lowrank.dtype; KMR.lowrank.empty: a zero-size layer is skipped;
    the caller's model is untouched."""
    for bad in (float("nan"), float("inf"), float("-inf")):
        model: Any = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
        with torch.no_grad():
            model[1].bias[2] = bad
        before = state_bytes(model)
        with pytest.raises(RuleInputError) as e:
            LowRank().apply(model, "rank", 1)
        assert e.value.clause == "KMR.lowrank.nonfinite"
        assert state_bytes(model) == before
    model = nn.Sequential(nn.Linear(6, 5))
    model[0].weight = nn.Parameter(torch.ones(5, 6, dtype=torch.int64), requires_grad=False)
    with pytest.raises(RuleInputError) as e:
        LowRank().apply(model, "rank", 1)
    assert e.value.clause == "KMR.lowrank.dtype"
    z = nn.Sequential(nn.Linear(0, 5), nn.Linear(6, 6))
    out = LowRank().apply(z, "rank", 1)
    assert out[0] is not z[0] and out[0].weight is z[0].weight  # skipped: its tensors are shared
    assert isinstance(out[1], LowRankFactors)


def test_scope_and_per_layer_knobs() -> None:
    """KMR.lowrank.scope, KMR.lowrank.per-layer-knob."""
    model: Any = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Conv1d(8, 8, 1, groups=2), nn.Flatten(),
                          nn.Linear(16, 8))
    rule = LowRank.for_model(model)
    assert rule.layers == ("0", "4")  # the grouped conv is not in scope
    assert [k.name for k in rule.knobs()] == ["rank", "energy", "rank@0", "energy@0", "rank@4", "energy@4"]
    out: Any = rule.apply(model, "rank@4", 2)
    assert out[0] is not model[0] and out[0].weight is model[0].weight and isinstance(out[4], LowRankFactors)
    with pytest.raises(RuleInputError) as e:
        LowRank(layers=("2",)).apply(model, "rank", 1)
    assert e.value.clause == "KMR.lowrank.scope"
    with pytest.raises(KnobDomainError) as e3:
        LowRank(layers=("0",)).apply(model, "rank@4", 1)
    assert e3.value.clause == "KMR.knob.unknown"
    with pytest.raises(RuleInputError) as e:
        rule.apply(nn.Sequential(nn.Linear(8, 8)), "rank@4", 1)  # a model without layer "4"
    assert e.value.clause == "KMR.lowrank.scope"
    shared = nn.Linear(8, 8)
    with pytest.raises(RuleInputError) as e:
        LowRank().apply(nn.Sequential(shared, nn.ReLU(), shared), "rank", 1)
    assert e.value.clause == "KMR.lowrank.scope"
    tied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    tied[1].weight = tied[0].weight
    with pytest.raises(RuleInputError) as e:
        LowRank().apply(tied, "rank", 1)
    assert e.value.clause == "KMR.lowrank.scope"
    root: Any = LowRank().apply(nn.Linear(10, 10), "rank", 2)  # the model itself is the layer
    assert isinstance(root, LowRankFactors)


def test_budgeted_kmr_to_parameter_budget() -> None:
    """Algorithm 1 with the low-rank rule and KMR.meter.params: a decreasing rank schedule reaches
    the budget; every accepted step strictly lowers the count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    c0 = parameter_count(model)
    triple = KMRTriple("lowrank", LowRank(layers=("0", "2")), CostMeter("params", parameter_count))
    policy: ScheduledPolicy[nn.Module] = ScheduledPolicy(tuple(Proposal("rank", r) for r in (12, 6, 3, 1)))
    res = budgeted_kmr(model, triple, policy, c0 // 3, 10)
    assert res.status is Status.FEASIBLE and res.cost_final <= c0 // 3
    assert all(r.accepted and r.cost_after < r.cost_before for r in res.trace)
    assert res.cost_final == parameter_count(res.model) and parameter_count(model) == c0
