"""Cost is monotone in each real rule's knob, on the running torch code (issue 8).

The Z3 lemmas of ``proofs/`` state these properties of formulas; here Hypothesis draws small real
``nn.Sequential`` models and applies each rule of ``kmr_ref/methods`` through its public API at
several knob values, measuring the result with the reference meters:

* magnitude pruning: prunable nonzeros non-increasing in the sparsity s, and exactly
  ``n - floor(s n)`` when nothing in scope is zero (``KMR.prune.monotone``, ``KMR.prune.cost``);
* uniform quantization: ``storage_bits`` strictly increasing in the bit width b, by exactly
  ``n (b' - b)`` for the symmetric scheme (``KMR.quant.storage-monotone``, ``KMR.quant.storage-bits``);
* structured pruning: parameters and MACs non-increasing in the fraction f
  (``KMR.structured.monotone``);
* low-rank: parameters and MACs non-decreasing in the rank r and in the energy e
  (``KMR.lowrank.monotone``).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core import CostMeter, GreedyPolicy, KMRTriple, Proposal, Status, budgeted_kmr
from kmr_ref.methods.lowrank import LowRank
from kmr_ref.methods.meters import macs, parameter_count
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable
from kmr_ref.methods.quantization import UniformQuantization
from kmr_ref.methods.storage import storage_bits
from kmr_ref.methods.structured import StructuredPruning

WIDTHS = st.lists(st.integers(1, 7), min_size=2, max_size=4)
SEEDS = st.integers(0, 2**16)
FRACS = st.lists(st.fractions(min_value=0, max_value=1, max_denominator=24), min_size=2, max_size=5)


def mlp(widths: list[int], seed: int, zeros: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them; weights from a seeded generator
    (no zeros unless ``zeros``: then about a third of the weights are exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            w = torch.rand(b, a, generator=g) + 0.25  # |w| >= 0.25: no zeros, no ties at 0
            w = torch.where(torch.rand(b, a, generator=g) < 0.5, w, -w)
            if zeros:
                w = torch.where(torch.rand(b, a, generator=g) < 1 / 3, torch.zeros_like(w), w)
            lin.weight.copy_(w)
            lin.bias.copy_(torch.rand(b, generator=g) - 0.5)
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def cnn(c: list[int], seed: int) -> nn.Sequential:
    """Conv2d - ReLU - Conv2d - ReLU - Flatten - Linear on 5x5 inputs (c: 3 channel counts)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1), nn.ReLU(), nn.Conv2d(c[1], c[2], 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(c[2] * 9, 3))


@given(WIDTHS, SEEDS, FRACS, st.booleans(), st.sampled_from(["global", "per-tensor"]))
def test_pruning_nonzeros_monotone_in_sparsity(widths: list[int], seed: int, ss: list[Fraction], zeros: bool,
                                               scope: str) -> None:
    """KMR.prune.monotone KMR.prune.cost: for a fixed model the nonzero prunable count after pruning
    is non-increasing in s; with no zeros in scope it is n - floor(s n) (global scope), so it
    strictly decreases wherever floor(s n) increases."""
    m = mlp(widths, seed, zeros)
    rule = MagnitudePruning(scope=scope)  # type: ignore[arg-type]
    n = sum(int(t.numel()) for _, t in rule.targets(m))
    ss = sorted(set(ss))
    costs = [nonzero_prunable(rule.apply(m, "sparsity", s)) for s in ss]
    assert all(a >= b for a, b in itertools.pairwise(costs)), (ss, costs)
    if not zeros and scope == "global":
        assert costs == [n - math.floor(s * n) for s in ss], (ss, costs, n)
        for (s0, c0), (s1, c1) in zip(zip(ss, costs, strict=True), zip(ss[1:], costs[1:], strict=True),
                                      strict=False):
            if math.floor(s1 * n) > math.floor(s0 * n):
                assert c1 < c0


@given(WIDTHS, SEEDS, st.lists(st.integers(2, 16), min_size=2, max_size=4, unique=True),
       st.sampled_from(["symmetric", "asymmetric"]), st.sampled_from(["tensor", "channel", "group"]),
       st.integers(1, 9))
def test_storage_bits_strictly_increasing_in_b(widths: list[int], seed: int, bs: list[int], scheme: str,
                                               granularity: str, group: int) -> None:
    """KMR.quant.storage-monotone KMR.quant.storage-bits: storage_bits(T(M, bits, b)) is strictly
    increasing in b; each quantized tensor costs n b + 32 G (+ G b), so between b < b' the
    symmetric scheme's cost grows by exactly n (b' - b) summed over the quantized tensors, the
    asymmetric scheme's by more."""
    m = mlp(widths, seed)
    group = math.gcd(group, *widths[:-1])  # KMR.quant.group-divides: a divisor of every row length
    rule = UniformQuantization(scheme=scheme, granularity=granularity, group_size=group)  # type: ignore[arg-type]
    n = sum(int(t.numel()) for _, t in rule.targets(m))
    bs = sorted(bs)
    costs = [storage_bits(rule.apply(m, "bits", b)) for b in bs]
    for b0, b1, c0, c1 in zip(bs, bs[1:], costs, costs[1:], strict=False):
        if scheme == "symmetric":
            assert c1 - c0 == n * (b1 - b0), (bs, costs, n)
        else:
            assert c1 - c0 > n * (b1 - b0), (bs, costs, n)


def _params_and_macs(m: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    return parameter_count(m), macs(m, x)


@given(st.lists(st.integers(1, 6), min_size=3, max_size=4), SEEDS, FRACS, st.sampled_from(["per-layer", "global"]),
       st.integers(1, 2), st.integers(0, 3))
def test_structured_params_and_macs_monotone_in_fraction(widths: list[int], seed: int, fs: list[Fraction],
                                                         scope: str, p: int, which: int) -> None:
    """KMR.structured.monotone: for a fixed input model the parameter count and the MACs after the
    rule are non-increasing in f, with the global knob (either scope) and with a per-layer knob."""
    m = mlp(widths, seed)
    x = torch.ones(2, widths[0])
    rule = StructuredPruning.for_model(m, p=p, scope=scope)  # type: ignore[arg-type]
    fs = sorted(set(f for f in fs if f < 1))
    knobs = ["fraction", *(f"fraction@{n}" for n in rule.layers)]
    knob = knobs[which % len(knobs)]
    got = [_params_and_macs(rule.apply(m, knob, f), x) for f in fs]
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(got)), (knob, fs, got)
    if fs and fs[0] == 0:
        assert _params_and_macs(rule.apply(m, "fraction", 0), x) == _params_and_macs(m, x)


@given(st.lists(st.integers(2, 5), min_size=3, max_size=3), SEEDS,
       st.lists(st.fractions(0, 1, max_denominator=12), min_size=2, max_size=3))
def test_structured_conv_monotone_in_fraction(c: list[int], seed: int, fs: list[Fraction]) -> None:
    """KMR.structured.monotone on a convolutional Sequential (Conv2d, ReLU, Flatten, Linear)."""
    m = cnn(c, seed)
    x = torch.ones(1, c[0], 5, 5)
    rule = StructuredPruning()
    fs = sorted(set(f for f in fs if f < 1))
    got = [_params_and_macs(rule.apply(m, "fraction", f), x) for f in fs]
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(got)), (fs, got)


@given(st.lists(st.integers(2, 9), min_size=2, max_size=4), SEEDS,
       st.lists(st.integers(1, 10), min_size=2, max_size=4, unique=True))
def test_lowrank_params_and_macs_monotone_in_rank(widths: list[int], seed: int, rs: list[int]) -> None:
    """KMR.lowrank.monotone KMR.lowrank.applicable: parameters and MACs after the rule are
    non-decreasing in the rank r (a lower rank is never more expensive), and never above the
    input's. Per Linear layer (m x n) the weights cost r (m + n) if r (m + n) < m n, else m n."""
    m = mlp(widths, seed)
    x = torch.ones(3, widths[0])
    rule = LowRank()
    rs = sorted(rs)
    got = [_params_and_macs(rule.apply(m, "rank", r), x) for r in rs]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(got)), (rs, got)
    base = _params_and_macs(m, x)
    assert all(g[0] <= base[0] and g[1] <= base[1] for g in got)
    layers = list(itertools.pairwise(widths))
    for r, (params, _) in zip(rs, got, strict=True):  # the closed form, written out here
        expect = sum((r * (a + b) if r * (a + b) < a * b and r < min(a, b) else a * b) + b for a, b in layers)
        assert params == expect, (r, widths, params, expect)


@given(st.lists(st.integers(2, 8), min_size=2, max_size=3), SEEDS,
       st.lists(st.fractions(Fraction(1, 20), 1, max_denominator=20), min_size=2, max_size=4))
def test_lowrank_params_and_macs_monotone_in_energy(widths: list[int], seed: int, es: list[Fraction]) -> None:
    """KMR.lowrank.monotone KMR.lowrank.energy: the per-layer rank chosen for an energy e is
    non-decreasing in e, so parameters and MACs after the rule are non-decreasing in e."""
    m = mlp(widths, seed)
    x = torch.ones(2, widths[0])
    rule = LowRank()
    es = sorted(set(es))
    got = [_params_and_macs(rule.apply(m, "energy", e), x) for e in es]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(got)), (es, got)


@given(st.lists(st.integers(2, 5), min_size=3, max_size=3), SEEDS, st.lists(st.integers(1, 6), min_size=2,
                                                                            max_size=3, unique=True))
def test_lowrank_conv_monotone_in_rank(c: list[int], seed: int, rs: list[int]) -> None:
    """KMR.lowrank.monotone on convolutions: a Conv2d (m = c_out, n = c_in k k) factorized at rank
    r costs r (m + n) weights and, per output position, r (m + n) MACs; non-decreasing in r."""
    m = cnn(c, seed)
    x = torch.ones(1, c[0], 5, 5)
    rs = sorted(rs)
    got = [_params_and_macs(LowRank().apply(m, "rank", r), x) for r in rs]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(got)), (rs, got)


@given(WIDTHS, SEEDS, st.lists(st.fractions(0, 1, max_denominator=10), min_size=1, max_size=4),
       st.integers(0, 40), st.booleans())
def test_greedy_on_real_pruning_never_proposes_a_non_lowering_step(widths: list[int], seed: int,
                                                                    ss: list[Fraction], budget: int,
                                                                    zeros: bool) -> None:
    """KMR.policy.greedy KMR.policy.greedy-ties KMR.meter.deterministic: with the real pruning rule
    and its (deterministic) nonzero meter, the greedy policy proposes only steps that strictly lower
    cost, so Algorithm 1 never stalls; each step takes the largest decrease among the candidates
    (no quality meter: every score is 0), the earlier candidate on a tie."""
    m = mlp(widths, seed, zeros)
    rule = MagnitudePruning()
    tri = KMRTriple("prune", rule, CostMeter("nnz", nonzero_prunable))
    cands = [Proposal("sparsity", s) for s in ss]
    res = budgeted_kmr(m, tri, GreedyPolicy(lambda st: cands), budget, 5)
    assert res.status is not Status.STALLED
    assert all(r.accepted and r.cost_after < r.cost_before for r in res.trace)
    cur = m
    for r in res.trace:  # the brute force, written out: every candidate applied to the current model
        costs = [nonzero_prunable(rule.apply(cur, "sparsity", s)) for s in ss]
        best = min(costs)
        assert r.cost_after == best and r.value == ss[costs.index(best)], (costs, r)
        cur = rule.apply(cur, "sparsity", r.value)
