"""Torch meters (spec/meters.md) against closed-form counts written out in the tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core import CostMeter, InformativeMeter, MeterError
from kmr_ref.methods.lowrank import LowRank
from kmr_ref.methods.meters import (
    latency_meter,
    latency_s,
    macs,
    macs_meter,
    nonzero_count,
    nonzero_meter,
    parameter_count,
    parameter_meter,
)


def state_bytes(m: nn.Module) -> dict[str, bytes]:
    return {n: t.detach().reshape(-1).view(torch.uint8).numpy().tobytes()
            for n, t in [*m.named_parameters(), *m.named_buffers()]}


@given(st.lists(st.integers(1, 7), min_size=2, max_size=5), st.booleans())
def test_params_mlp(widths: list[int], bias: bool) -> None:
    """KMR.meter.params: sum of (in*out + out*bias) over the layers, as an exact int."""
    m = nn.Sequential(*[nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(widths)])
    exp = sum(a * b + (b if bias else 0) for a, b in itertools.pairwise(widths))
    c = parameter_meter()(m)
    assert c == parameter_count(m) == exp and type(c) is int


def test_params_tied_and_buffers() -> None:
    """KMR.meter.params: a tied parameter counts once; buffers (BN running stats) never count."""
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    assert parameter_count(nn.Sequential(a, b)) == 16 + 4 + 4
    assert parameter_count(nn.Sequential(a, nn.BatchNorm1d(4))) == 16 + 4 + 4 + 4


@given(st.lists(st.sampled_from([0.0, -0.0, 1.0, -2.5, float("nan"), float("inf"), 1e-45]),
                min_size=12, max_size=12))
def test_nonzeros(vals: list[float]) -> None:
    """KMR.meter.nonzeros: -0.0 is zero, NaN and inf are nonzero; the filter selects parameters."""
    lin = nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(vals, dtype=torch.float32).reshape(4, 3))
    other = nn.Linear(2, 2)
    with torch.no_grad():
        other.weight.zero_()
        other.bias.fill_(1.0)
    m = nn.Sequential(lin, other)
    exp_w = int(np.count_nonzero(np.asarray(vals, dtype=np.float32) != 0))
    assert nonzero_count(m) == exp_w + 2
    only_first = nonzero_meter(lambda mn, mod, pn, p: mn == "0")
    assert only_first(m) == exp_w


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_macs_linear(batch: int, n: int, m: int, extra: int) -> None:
    """KMR.meter.macs: a Linear on (B, E, n) costs B*E*m*n MACs; bias, ReLU cost nothing."""
    model = nn.Sequential(nn.Linear(n, m), nn.ReLU())
    x = torch.randn(batch, extra, n)
    assert macs(model, x) == batch * extra * m * n
    assert macs_meter(x)(model) == batch * extra * m * n


@pytest.mark.parametrize(("stride", "padding", "groups"), [(1, 0, 1), (2, 1, 1), (1, 1, 2)])
def test_macs_conv_bn_flatten(stride: int, padding: int, groups: int) -> None:
    """KMR.meter.macs: conv N*Cout*Hout*Wout*(Cin/groups)*k*k, plus the Linear; BN, pooling 0."""
    n, cin, cout, k, h = 2, 4, 6, 3, 9
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups), nn.BatchNorm2d(cout),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(cout * 4, 5))
    ho = (h + 2 * padding - k) // stride + 1
    exp = n * cout * ho * ho * (cin // groups) * k * k + n * cout * 4 * 5
    assert macs(model, torch.randn(n, cin, h, h)) == exp


def test_macs_lowrank_factors() -> None:
    """KMR.meter.macs of a LowRankFactors: B*(r*n + m*r)."""
    torch.manual_seed(0)
    m = LowRank().apply(nn.Sequential(nn.Linear(20, 30)), "rank", 3)
    assert macs(m, torch.randn(4, 20)) == 4 * (3 * 20 + 30 * 3)
    assert parameter_count(m) == 3 * 20 + 30 * 3 + 30


def test_meters_do_not_mutate() -> None:
    """KMR.meter.macs, KMR.meter.latency: the model (training flags, BN running stats) is untouched."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    before = state_bytes(model)
    x = torch.randn(8, 4) * 5 + 3
    macs(model, x)
    latency_s(model, x, repeats=2)
    assert state_bytes(model) == before
    assert all(m.training for m in model.modules())


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x) + self.b(y)
        return out


def test_tuple_inputs_and_latency() -> None:
    """KMR.meter.macs with a tuple input; KMR.meter.latency is informative (a float; no duration asserted)."""
    m = TwoInputs()
    xy = (torch.randn(2, 3), torch.randn(2, 4))
    assert macs(m, xy) == 2 * 5 * 3 + 2 * 5 * 4
    lat = latency_meter(xy, repeats=3)
    assert isinstance(lat, InformativeMeter) and isinstance(lat(m), float) and lat(m) >= 0.0
    with pytest.raises(MeterError) as e:
        latency_s(m, xy, repeats=0)
    assert e.value.clause == "KMR.meter.latency"
    assert isinstance(parameter_meter(), CostMeter) and isinstance(macs_meter(xy), CostMeter)


def _layer_macs(b: int, seq: int, d: int, ff: int) -> int:
    # hand formula of one post-norm transformer layer: Q, K, V and output projections (4 d x d),
    # the feed-forward pair (d x ff, ff x d), and attention Q K^T and A V (seq x seq x d each)
    return 4 * b * seq * d * d + 2 * b * seq * d * ff + 2 * b * seq * seq * d


@pytest.mark.parametrize("nested", [True, False])
def test_macs_transformer_encoder_fast_path(nested: bool) -> None:
    """KMR.meter.macs: the fused fast path of nn.TransformerEncoder (eval mode) and CPU
    scaled-dot-product attention are counted; the fast-path switch is restored afterwards."""
    d, heads, ff, layers, b, seq = 16, 2, 32, 3, 3, 5
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, ff, batch_first=True), layers,
                                enable_nested_tensor=nested).eval()
    x = torch.randn(b, seq, d)
    before = torch.backends.mha.get_fastpath_enabled()
    assert macs(enc, x) == layers * _layer_macs(b, seq, d, ff)
    assert torch.backends.mha.get_fastpath_enabled() == before


def test_macs_attention_paths() -> None:
    """KMR.meter.macs: MultiheadAttention with and without attention weights, and a bare
    scaled_dot_product_attention call, all count B*h*(s_q*s_k*d + s_q*s_k*d_v)."""
    d, b, sq, sk = 16, 3, 5, 7

    class Attn(nn.Module):
        def __init__(self, need_weights: bool) -> None:
            super().__init__()
            self.a = nn.MultiheadAttention(d, 2, batch_first=True)
            self.need = need_weights

        def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return self.a(q, kv, kv, need_weights=self.need)[0]

    q, kv = torch.randn(b, sq, d), torch.randn(b, sk, d)
    proj = b * sq * d * d + 2 * b * sk * d * d + b * sq * d * d  # Q; K and V; output projection
    for need in (True, False):
        assert macs(Attn(need).eval(), (q, kv)) == proj + 2 * b * sq * sk * d

    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, k, v)

    qh, kh, vh = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 3)
    assert macs(Sdpa(), (qh, kh, vh)) == 2 * 4 * (6 * 9 * 8 + 6 * 9 * 3)


def test_macs_restores_fast_path_on_error() -> None:
    """KMR.meter.macs: the fast-path switch is restored even when the forward raises."""
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    before = torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError):
        macs(Boom(), torch.zeros(1))
    assert torch.backends.mha.get_fastpath_enabled() == before
