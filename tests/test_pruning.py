"""Magnitude pruning (spec/methods/pruning.md) against an independent pure-Python oracle."""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from typing import Literal

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core import KnobDomainError, RuleInputError
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable

FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
# few distinct magnitudes -> many ties; signed zeros included
TIE_FLOATS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 1e-45, -1e-45])
SPARSITY = st.fractions(min_value=0, max_value=1, max_denominator=40)


def bits(x: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


def tensor_bits(t: torch.Tensor) -> list[int]:
    return [bits(float(v)) for v in t.detach().reshape(-1).tolist()]


def make_model(shapes: list[tuple[int, int]], values: list[list[float]]) -> nn.Module:
    layers: list[nn.Module] = []
    for (o, i), vals in zip(shapes, values, strict=True):
        lin = nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(vals, dtype=torch.float32).reshape(o, i))
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers)


@st.composite
def models(draw: st.DrawFn, elems: st.SearchStrategy[float] = FLOATS) -> tuple[list[tuple[int, int]],
                                                                               list[list[float]]]:
    shapes = draw(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3))
    values = [draw(st.lists(elems, min_size=o * i, max_size=o * i)) for o, i in shapes]
    return shapes, values


def oracle_global(values: list[list[float]], s: Fraction) -> list[list[int]]:
    """Independent statement of KMR.prune.count + KMR.prune.tie-break + KMR.prune.zero-value:
    sort (|w|, tensor index, flat index) tuples in plain Python."""
    n = sum(len(v) for v in values)
    k = math.floor(s * n)
    keys = sorted((abs(x), ti, fi) for ti, vs in enumerate(values) for fi, x in enumerate(vs))
    pruned = {(ti, fi) for _, ti, fi in keys[:k]}
    return [[0 if (ti, fi) in pruned else bits(np.float32(x).item()) for fi, x in enumerate(vs)]
            for ti, vs in enumerate(values)]


def weights(m: nn.Module) -> list[torch.Tensor]:
    return [mod.weight for mod in m.modules() if isinstance(mod, nn.Linear)]


@given(models(), SPARSITY)
def test_global_matches_oracle(mv: tuple[list[tuple[int, int]], list[list[float]]], s: Fraction) -> None:
    """KMR.prune.knob KMR.prune.global KMR.prune.count KMR.prune.tie-break KMR.prune.zero-value
    KMR.prune.tensor-order"""
    shapes, values = mv
    m = make_model(shapes, values)
    out = MagnitudePruning.for_model(m).apply(m, "sparsity", s)
    assert [tensor_bits(w) for w in weights(out)] == oracle_global(values, s)


@given(models(TIE_FLOATS), SPARSITY, st.booleans())
def test_kernel_option_bit_equal(mv: tuple[list[tuple[int, int]], list[list[float]]], s: Fraction,
                                 per_tensor: bool) -> None:
    """KMR.prune.tie-break: MagnitudePruning(kernel=True) gives the oracle's bits in both scopes."""
    shapes, values = mv
    m = make_model(shapes, values)
    scope: Literal["global", "per-tensor"] = "per-tensor" if per_tensor else "global"
    out = MagnitudePruning.for_model(m, scope=scope, kernel=True).apply(m, "sparsity", s)
    expect = [oracle_global([v], s)[0] for v in values] if per_tensor else oracle_global(values, s)
    assert [tensor_bits(w) for w in weights(out)] == expect


@given(models(TIE_FLOATS), SPARSITY)
def test_ties_and_signed_zeros(mv: tuple[list[tuple[int, int]], list[list[float]]], s: Fraction) -> None:
    """KMR.prune.tie-break with heavy ties, +0/-0 and denormals; KMR.prune.zero-value keeps a kept -0.0."""
    shapes, values = mv
    m = make_model(shapes, values)
    out = MagnitudePruning.for_model(m).apply(m, "sparsity", s)
    assert [tensor_bits(w) for w in weights(out)] == oracle_global(values, s)


@given(models(), SPARSITY)
def test_per_tensor_scope(mv: tuple[list[tuple[int, int]], list[list[float]]], s: Fraction) -> None:
    """KMR.prune.per-tensor: each tensor pruned on its own with k_i = floor(s n_i)."""
    shapes, values = mv
    m = make_model(shapes, values)
    out = MagnitudePruning.for_model(m, scope="per-tensor").apply(m, "sparsity", s)
    assert [tensor_bits(w) for w in weights(out)] == [oracle_global([v], s)[0] for v in values]


@given(models(), SPARSITY, st.data())
def test_per_tensor_knob(mv: tuple[list[tuple[int, int]], list[list[float]]], s: Fraction, data: st.DataObject) -> None:
    """KMR.prune.per-tensor-knob: sparsity@<name> touches that tensor only."""
    shapes, values = mv
    m = make_model(shapes, values)
    i = data.draw(st.integers(0, len(shapes) - 1))
    rule = MagnitudePruning.for_model(m)
    out = rule.apply(m, f"sparsity@{2 * i}.weight", s)
    for j, (w, v) in enumerate(zip(weights(out), values, strict=True)):
        expect = oracle_global([v], s)[0] if j == i else [bits(np.float32(x).item()) for x in v]
        assert tensor_bits(w) == expect


@given(models(), SPARSITY, SPARSITY)
def test_cost_formula_monotone_nested(mv: tuple[list[tuple[int, int]], list[list[float]]],
                                      s1: Fraction, s2: Fraction) -> None:
    """KMR.prune.cost (n - max(z, k)), KMR.prune.monotone, KMR.prune.nested, KMR.prune.cost-meter."""
    shapes, values = mv
    lo, hi = min(s1, s2), max(s1, s2)
    m = make_model(shapes, values)
    rule = MagnitudePruning.for_model(m)
    n = sum(len(v) for v in values)
    z = sum(1 for v in values for x in v if np.float32(x) == 0)
    a, b = rule.apply(m, "sparsity", lo), rule.apply(m, "sparsity", hi)
    for q, mm in ((lo, a), (hi, b)):
        assert nonzero_prunable(mm) == n - max(z, math.floor(q * n))
    assert nonzero_prunable(b) <= nonzero_prunable(a)
    twice = rule.apply(a, "sparsity", hi)
    assert [tensor_bits(w) for w in weights(twice)] == [tensor_bits(w) for w in weights(b)]


@given(models(), SPARSITY)
def test_idempotent_and_no_mutation(mv: tuple[list[tuple[int, int]], list[list[float]]], s: Fraction) -> None:
    """KMR.prune.nested (idempotence), KMR.rule.no-mutation, KMR.rule.deterministic."""
    shapes, values = mv
    m = make_model(shapes, values)
    before = {k: tensor_bits(v) for k, v in m.state_dict().items()}
    rule = MagnitudePruning.for_model(m)
    once = rule.apply(m, "sparsity", s)
    again = rule.apply(m, "sparsity", s)
    twice = rule.apply(once, "sparsity", s)
    assert {k: tensor_bits(v) for k, v in m.state_dict().items()} == before
    sd = {k: tensor_bits(v) for k, v in once.state_dict().items()}
    assert sd == {k: tensor_bits(v) for k, v in again.state_dict().items()}
    assert sd == {k: tensor_bits(v) for k, v in twice.state_dict().items()}


def test_identity_ends_and_sharing() -> None:
    """KMR.prune.identity-ends: s = 0 is the identity (tensors shared), s = 1 zeroes every weight;
    KMR.prune.prunable-default: biases untouched."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    rule = MagnitudePruning.for_model(m)
    z = rule.apply(m, "sparsity", 0)
    assert all(a is b for a, b in zip(m.parameters(), z.parameters(), strict=True))
    one = rule.apply(m, "sparsity", 1)
    for w in (one[0].weight, one[3].weight):
        assert all(b == 0 for b in tensor_bits(w))
    assert one[0].bias is m[0].bias and one[3].bias is m[3].bias
    assert nonzero_prunable(one) == 0


def test_float_sparsity_uses_shortest_decimal() -> None:
    """KMR.exact.binary64 + KMR.prune.count: s = 0.7 with n = 10 prunes exactly 7 (float 0.7 < 7/10)."""
    m = nn.Sequential(nn.Linear(5, 2, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(1, 11, dtype=torch.float32).reshape(2, 5))
    out = MagnitudePruning.for_model(m).apply(m, "sparsity", 0.7)
    assert nonzero_prunable(out) == 3
    assert math.floor(Fraction(0.7) * 10) == 6  # what an exact-binary reading would have given


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_raises_and_leaves_model(bad: float) -> None:
    """KMR.prune.nonfinite; KMR.error.names-clause; the caller's model is untouched."""
    m = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        m[0].weight[1, 2] = bad
    before = tensor_bits(m[0].weight)
    with pytest.raises(RuleInputError) as e:
        MagnitudePruning.for_model(m).apply(m, "sparsity", 0.5)
    assert e.value.clause == "KMR.prune.nonfinite" and str(e.value).startswith("[KMR.prune.nonfinite]")
    assert tensor_bits(m[0].weight) == before


@pytest.mark.filterwarnings("ignore:Initializing zero-element")
def test_dtype_empty_and_knob_errors() -> None:
    """KMR.prune.dtype, KMR.prune.empty, KMR.knob.domain, KMR.knob.unknown."""
    m = nn.Sequential(nn.Linear(3, 2))
    m[0].weight = nn.Parameter(torch.ones(2, 3, dtype=torch.int32), requires_grad=False)
    with pytest.raises(RuleInputError, match=r"KMR\.prune\.dtype"):
        MagnitudePruning.for_model(m).apply(m, "sparsity", 0.5)
    # KMR.prune.empty / KMR.select.zero-size: a zero-size tensor is skipped, the others are pruned
    e = nn.Sequential(nn.Linear(0, 2), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        e[1].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    rule_e = MagnitudePruning.for_model(e)
    assert rule_e.tensor_names == ("1.weight",)
    pe = rule_e.apply(e, "sparsity", 0.5)
    assert pe[0].weight is e[0].weight
    assert pe[1].weight.tolist() == [[0.0, 0.0], [3.0, -4.0]]
    with pytest.raises(RuleInputError, match=r"KMR\.prune\.empty"):  # spec 0.1.0 on request
        MagnitudePruning.for_model(e, empty="refuse").apply(e, "sparsity", 0.5)
    ok = nn.Sequential(nn.Linear(3, 2))
    rule = MagnitudePruning.for_model(ok)
    for v in (1.5, -0.1, float("nan"), True):
        with pytest.raises(KnobDomainError):
            rule.apply(ok, "sparsity", v)
    with pytest.raises(KnobDomainError, match=r"KMR\.knob\.unknown"):
        rule.apply(ok, "sparsity@nope.weight", 0.5)


def test_shared_tensor_counted_once() -> None:
    """KMR.prune.tensor-order: a tensor shared by two modules is one tensor, at its first name."""
    a = nn.Linear(2, 2, bias=False)
    m = nn.Sequential(a, nn.ReLU(), a)
    rule = MagnitudePruning.for_model(m)
    assert [k.name for k in rule.knobs()] == ["sparsity", "sparsity@0.weight"]
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, -4.0], [3.0, 2.0]]))
    out = rule.apply(m, "sparsity", Fraction(1, 2))
    assert out[0] is out[2]  # still one shared module in the copy
    assert tensor_bits(out[0].weight) == [0, bits(-4.0), bits(3.0), 0]


def test_conv_and_dtypes_on_available_devices() -> None:
    """KMR.prune.tie-break across dtypes (fp16/bf16/fp64) and devices present."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for dt in (torch.float16, torch.bfloat16, torch.float64):
            torch.manual_seed(3)
            m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3, 2)).to(device=dev, dtype=dt)
            vals = [w.detach().double().cpu().reshape(-1).tolist() for w in (m[0].weight, m[2].weight)]
            out = MagnitudePruning.for_model(m).apply(m, "sparsity", Fraction(3, 5))
            k = math.floor(Fraction(3, 5) * sum(len(v) for v in vals))
            keys = sorted((abs(x), ti, fi) for ti, vs in enumerate(vals) for fi, x in enumerate(vs))
            pruned = {(ti, fi) for _, ti, fi in keys[:k]}
            for ti, w in enumerate((out[0].weight, out[2].weight)):
                got = w.detach().double().cpu().reshape(-1).tolist()
                exp = [0.0 if (ti, fi) in pruned else x for fi, x in enumerate(vals[ti])]
                assert got == exp


def test_tied_weights_stay_tied() -> None:
    """KMR.prune.tensor-order: a tensor tied between two modules is pruned once and stays tied."""
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    b.weight = a.weight
    m = nn.Sequential(a, nn.ReLU(), b)
    out = MagnitudePruning.for_model(m).apply(m, "sparsity", Fraction(1, 3))
    assert out[0].weight is out[2].weight and nonzero_prunable(out) == 6
    assert m[0].weight is m[2].weight and nonzero_prunable(m) == 9
