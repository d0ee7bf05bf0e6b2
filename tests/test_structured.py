"""Structured pruning with physical removal (spec/methods/structured.md), checked against an
independent pure-Python oracle (Fraction sums, sorted tuples) and against the masked original
model M° of KMR.structured.equivalence."""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction
from typing import Any

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
from kmr_ref.methods.lowrank import LowRank
from kmr_ref.methods.meters import macs, parameter_count
from kmr_ref.methods.structured import StructuredPruning

SMALL = st.floats(-4, 4, width=32, allow_subnormal=False)
TIES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0])
FRACTIONS = st.fractions(min_value=0, max_value=Fraction(39, 40), max_denominator=40)


def state_bytes(m: nn.Module) -> dict[str, tuple[str, tuple[int, ...], bytes, bool]]:
    out = {}
    for n, t in [*m.named_parameters(), *m.named_buffers()]:
        out[n] = (str(t.dtype), tuple(t.shape), t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes(),
                  t.requires_grad)
    return out


# ---------------------------------------------------------------------------------------------
# Oracle: an independent statement of KMR.structured.score / count / tie-break / global-order


def oracle_scores(w: torch.Tensor, p: int) -> list[float]:
    """S_c = the exact sum of |w|^p (Fractions), rounded once to binary64 by float(Fraction)."""
    rows = w.detach().double().reshape(w.shape[0], -1).tolist()
    return [float(sum((abs(Fraction(x)) ** p for x in row), Fraction(0))) for row in rows]


def oracle_removed(scores: list[list[float]], fan: list[int], f: Fraction, scope: str) -> list[list[int]]:
    if scope == "per-layer":
        out = []
        for s in scores:
            k = min(math.floor(f * len(s)), len(s) - 1)
            out.append(sorted(c for _, c in sorted((v, c) for c, v in enumerate(s))[:k]))
        return out
    total = sum(len(s) for s in scores)
    k = math.floor(f * total)
    order = sorted((Fraction(v) / fan[li], li, c) for li, s in enumerate(scores) for c, v in enumerate(s))
    left = [len(s) for s in scores]
    rem: list[list[int]] = [[] for _ in scores]
    for _, li, c in order:
        if sum(len(r) for r in rem) == k:
            break
        if left[li] > 1:
            rem[li].append(c)
            left[li] -= 1
    return [sorted(r) for r in rem]


def mlp(widths: list[int], values: list[list[float]], dtype: torch.dtype = torch.float64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1], dtype=dtype)
        with torch.no_grad():
            vals = values[i]
            lin.weight.copy_(torch.tensor(vals[:-widths[i + 1]], dtype=torch.float32).reshape(lin.weight.shape))
            lin.bias.copy_(torch.tensor(vals[-widths[i + 1]:], dtype=torch.float32))
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@st.composite
def mlps(draw: st.DrawFn, elems: st.SearchStrategy[float] = SMALL) -> nn.Sequential:
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    values = [draw(st.lists(elems, min_size=(widths[i] + 1) * widths[i + 1], max_size=(widths[i] + 1) * widths[i + 1]))
              for i in range(len(widths) - 1)]
    return mlp(widths, values)


def linears(m: nn.Module) -> list[nn.Linear]:
    return [x for x in m.modules() if isinstance(x, nn.Linear)]


def masked(model: nn.Module, removed: list[list[int]], block: list[int] | None = None) -> nn.Module:
    """M° of KMR.structured.equivalence: zero the inputs of layer l+1 fed by removed channels of l."""
    m0 = copy.deepcopy(model)
    layers = [x for x in m0.modules() if isinstance(x, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for li, rem in enumerate(removed):
            s = 1 if block is None else block[li]
            for c in rem:
                layers[li + 1].weight[:, c * s:(c + 1) * s] = 0.0
    return m0


# ---------------------------------------------------------------------------------------------


@given(mlps(st.one_of(SMALL, TIES)), FRACTIONS, st.sampled_from([1, 2]), st.sampled_from(["per-layer", "global"]))
def test_mlp_against_oracle(model: nn.Sequential, f: Fraction, p: int, scope: str) -> None:
    """KMR.structured.score, KMR.structured.count, KMR.structured.tie-break,
    KMR.structured.global-order, KMR.structured.removal, KMR.structured.next-layer-inputs,
    KMR.structured.output-layer-kept, KMR.structured.equivalence, KMR.rule.no-mutation."""
    before = state_bytes(model)
    rule = StructuredPruning(p=p, scope=scope)  # type: ignore[arg-type]
    out = rule.apply(model, "fraction", f)
    assert state_bytes(model) == before
    lin0, lin1 = linears(model), linears(out)
    scores = [oracle_scores(x.weight, p) for x in lin0[:-1]]
    rem = oracle_removed(scores, [x.in_features for x in lin0[:-1]], f, scope)
    rem.append([])  # KMR.structured.output-layer-kept
    keep = [[c for c in range(x.out_features) if c not in set(r)] for x, r in zip(lin0, rem, strict=True)]
    for li, (a, b) in enumerate(zip(lin0, lin1, strict=True)):
        kin = list(range(a.in_features)) if li == 0 else keep[li - 1]
        exp_w = a.weight.detach()[keep[li]][:, kin]
        assert b.weight.shape == exp_w.shape and (b.out_features, b.in_features) == tuple(exp_w.shape)
        assert b.weight.detach().numpy().tobytes() == exp_w.numpy().tobytes()
        assert b.bias.detach().numpy().tobytes() == a.bias.detach()[keep[li]].numpy().tobytes()
    assert lin1[-1].out_features == lin0[-1].out_features
    exp_params = sum((len(keep[i - 1]) if i else lin0[0].in_features) * len(keep[i]) + len(keep[i])
                     for i in range(len(lin0)))
    assert parameter_count(out) == exp_params
    x = torch.linspace(-3, 3, 7 * lin0[0].in_features, dtype=torch.float64).reshape(7, -1)
    torch.testing.assert_close(out(x), masked(model, rem[:-1])(x), rtol=1e-12, atol=1e-12)


@given(mlps(), st.sampled_from(["per-layer", "global"]))
def test_monotone_in_fraction(model: nn.Sequential, scope: str) -> None:
    """KMR.structured.monotone: parameters and MACs non-increasing along the grid."""
    rule = StructuredPruning(scope=scope)  # type: ignore[arg-type]
    grid = rule.knobs()[0].grid()
    assert grid[0] == 0 and grid[-1] == Fraction(19, 20) and len(grid) == 20
    x = torch.zeros(2, linears(model)[0].in_features, dtype=torch.float64)
    costs = [(parameter_count(m), macs(m, x)) for m in (rule.apply(model, "fraction", v) for v in grid[::4])]
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(costs))


def test_global_order_hand_case() -> None:
    """KMR.structured.global-order: normalized key S_c / fan_in, ties by layer index, and the
    keep-one-channel skip of KMR.structured.count. Expected values derived by hand in the docstring:
    L0 rows [1,1,1,1],[2,2,2,2]: S = 4, 16, keys 1, 4; L1 rows [2,0],[1,1]: S = 4, 2, keys 2, 1.
    Order: (1, L0, c0), (1, L1, c1), (2, L1, c0), (4, L0, c1)."""
    m: Any = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [2, 2, 2, 2]]))
        m[2].weight.copy_(torch.tensor([[2.0, 0], [1, 1]]))
    g = StructuredPruning(p=2, scope="global")
    one: Any = g.apply(m, "fraction", Fraction(1, 4))  # K = 1
    assert one[0].weight.tolist() == [[2.0, 2, 2, 2]] and one[2].weight.shape == (2, 1)
    two: Any = g.apply(m, "fraction", Fraction(1, 2))  # K = 2
    # L1 keeps its channel 0 (row [2, 0]) and loses input column 0 (L0's removed channel 0)
    assert two[0].weight.tolist() == [[2.0, 2, 2, 2]] and two[2].weight.tolist() == [[0.0]]
    assert torch.equal(two[2].bias, m[2].bias[:1])
    three = g.apply(m, "fraction", Fraction(3, 4))  # K = 3, but both layers are down to 1 channel
    assert state_bytes(three) == state_bytes(two)
    # p = 1: L0 S = 4, 8 (keys 1, 2); L1 S = 2, 2 (keys 1, 1): order (1,L0,c0), (1,L1,c0), ...;
    # L1 keeps row c1 = [1, 1] without column 0
    g1: Any = StructuredPruning(p=1, scope="global").apply(m, "fraction", Fraction(1, 2))
    assert g1[0].weight.tolist() == [[2.0, 2, 2, 2]] and g1[2].weight.tolist() == [[1.0]]


def test_tie_break_lower_index_first() -> None:
    """KMR.structured.tie-break: equal scores (entries permuted) -> lower channel index removed first."""
    m: Any = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[3.0, 1e-8, 1], [1, 3, 1e-8], [1e-8, 1, 3], [3, 1, 1e-8]]))
        m[0].bias.copy_(torch.tensor([9.0, -9, 0, 1]))  # biases do not enter the score
    out: Any = StructuredPruning().apply(m, "fraction", Fraction(1, 2))
    assert out[0].bias.tolist() == [0.0, 1.0]
    assert out[1].weight.tolist() == m[1].weight[:, 2:].tolist()


def cnn() -> Any:
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
        nn.Sequential(nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(5 * 3 * 3, 7), nn.GELU(), nn.BatchNorm1d(7), nn.Linear(7, 4),
    ).double()
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                assert bn.running_mean is not None and bn.running_var is not None
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(0.5, 1)  # positive beta: a zeroed channel still emits relu(beta - ...)
    return m.eval()


@pytest.mark.parametrize("f", [Fraction(1, 5), Fraction(1, 2), Fraction(19, 20)])
@pytest.mark.parametrize("scope", ["per-layer", "global"])
def test_cnn_bn_flatten_equivalence(f: Fraction, scope: str) -> None:
    """KMR.structured.bn, KMR.structured.flatten, KMR.structured.next-layer,
    KMR.structured.supported-graph (nested Sequentials), KMR.structured.equivalence:
    the pruned CNN equals M° (the original with the next layers' inputs from removed channels zeroed)."""
    m = cnn()
    before = state_bytes(m)
    out: Any = StructuredPruning(scope=scope).apply(m, "fraction", f)  # type: ignore[arg-type]
    assert state_bytes(m) == before
    layers0 = [m[0][0], m[1][0], m[4], m[7]]
    layers1 = [out[0][0], out[1][0], out[4], out[7]]
    scores = [oracle_scores(x.weight, 2) for x in layers0[:-1]]
    rem = oracle_removed(scores, [int(x.weight[0].numel()) for x in layers0[:-1]], f, scope)
    keep = [[c for c in range(s.weight.shape[0]) if c not in r] for s, r in zip(layers0, rem, strict=False)]
    for bn0, bn1, k in ((m[0][1], out[0][1], keep[0]), (m[1][1], out[1][1], keep[1]), (m[6], out[6], keep[2])):
        assert bn1.num_features == len(k)
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(bn1, name), getattr(bn0, name)[k])
        assert bn1.num_batches_tracked is bn0.num_batches_tracked
    assert layers1[2].in_features == 9 * len(keep[1])  # KMR.structured.flatten: blocks of 3*3
    exp = torch.cat([layers0[2].weight[keep[2]][:, 9 * c: 9 * c + 9] for c in keep[1]], dim=1)
    assert torch.equal(layers1[2].weight, exp)
    assert layers1[3].out_features == 4
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    ref = masked(m, rem, block=[1, 9, 1])
    torch.testing.assert_close(out(x), ref(x), rtol=1e-10, atol=1e-10)
    if f > 0:
        assert not torch.allclose(m(x), ref(x))  # the removed contributions were not zero
    assert parameter_count(out) < parameter_count(m) and macs(out, x) < macs(m, x)


def test_zero_fraction_shares_everything() -> None:
    """KMR.structured.sharing: fraction 0 returns a new tree with every tensor shared."""
    m = cnn()
    out = StructuredPruning().apply(m, "fraction", 0)
    assert out is not m
    for (n0, t0), (n1, t1) in zip(m.state_dict(keep_vars=True).items(), out.state_dict(keep_vars=True).items(),
                                  strict=True):
        assert n0 == n1 and t0 is t1


def test_per_layer_knob() -> None:
    """KMR.structured.per-layer-knob: only the named layer (and the next layer's inputs) change."""
    m = cnn()
    rule = StructuredPruning.for_model(m)
    assert [k.name for k in rule.knobs()] == ["fraction", "fraction@0.0", "fraction@1.0", "fraction@4"]
    out: Any = rule.apply(m, "fraction@1.0", Fraction(2, 5))
    assert out[0][0].weight is m[0][0].weight and out[7].weight is m[7].weight
    assert out[1][0].out_channels == 3 and out[4].in_features == 27 and out[4].out_features == 7
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(layers=("7",)).apply(m, "fraction@7", Fraction(1, 2))  # the output layer
    assert e.value.clause == "KMR.structured.per-layer-knob"


def test_determinism() -> None:
    """KMR.rule.deterministic: two runs give equal bytes."""
    m = cnn()
    r = StructuredPruning(scope="global")
    assert state_bytes(r.apply(m, "fraction", "0.35")) == state_bytes(r.apply(m, "fraction", "0.35"))


class Wrap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


class Reversed(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in reversed(self):
            x = m(x)
        return x


shared = nn.Linear(4, 4)
UNSUPPORTED = [
    Wrap(),
    Reversed(nn.Linear(4, 4), nn.Linear(4, 4)),
    nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
    nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)),
    nn.Sequential(nn.Conv1d(2, 4, 3), nn.Linear(4, 2)),
    nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(0), nn.Linear(4, 2)),
    nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(6, 2)),
    nn.Sequential(nn.Linear(3, 4), nn.Flatten(), nn.Linear(4, 2)),
    nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5), nn.Linear(4, 2)),
    nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)),
    nn.Sequential(shared, nn.ReLU(), shared),
    nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2)),
    nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2)),
]


@pytest.mark.parametrize("model", UNSUPPORTED, ids=range(len(UNSUPPORTED)))
def test_unsupported_graph(model: nn.Module) -> None:
    """KMR.structured.unsupported-graph, KMR.structured.supported-graph: refused, never guessed."""
    before = state_bytes(model)
    with pytest.raises(RuleInputError) as e:
        StructuredPruning().apply(model, "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.unsupported-graph"
    assert state_bytes(model) == before


def test_tied_parameters_unsupported() -> None:
    """KMR.structured.supported-graph: no parameter held by two modules."""
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    with pytest.raises(RuleInputError) as e:
        StructuredPruning().apply(nn.Sequential(a, b), "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.unsupported-graph"


@pytest.mark.parametrize(("where", "bad", "clause"), [
    ("0.weight", float("nan"), "KMR.structured.nonfinite"),
    ("1.bias", float("inf"), "KMR.structured.nonfinite"),
    ("3.weight", float("-inf"), "KMR.structured.nonfinite"),
])
def test_nonfinite(where: str, bad: float, clause: str) -> None:
    """KMR.structured.nonfinite (also in a BatchNorm and in the output layer); model untouched."""
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m.get_parameter(where).view(-1)[1] = bad
    before = state_bytes(m)
    with pytest.raises(RuleInputError) as e:
        StructuredPruning().apply(m, "fraction", Fraction(1, 2))
    assert e.value.clause == clause and clause in str(e.value)
    assert state_bytes(m) == before


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_dtype_and_empty() -> None:
    """KMR.structured.dtype, KMR.structured.empty."""
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m[0].weight = nn.Parameter(torch.ones(4, 3, dtype=torch.int32), requires_grad=False)
    with pytest.raises(RuleInputError) as e:
        StructuredPruning().apply(m, "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.dtype"
    with pytest.raises(RuleInputError) as e:
        StructuredPruning().apply(nn.Sequential(nn.Linear(3, 0), nn.Linear(0, 2)), "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.empty"


def test_knob_domain() -> None:
    """KMR.structured.knob: [0, 1); KMR.structured.score: p in {1, 2}; KMR.structured.scope."""
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    r = StructuredPruning()
    for v in (1, "1", Fraction(-1, 20), 1.5, float("nan")):
        with pytest.raises(KnobDomainError):
            r.apply(m, "fraction", v)  # type: ignore[arg-type]
    with pytest.raises(KnobDomainError):
        r.apply(m, "sparsity", Fraction(1, 2))
    with pytest.raises(KnobDomainError) as e:
        StructuredPruning(p=3)
    assert e.value.clause == "KMR.structured.score"
    with pytest.raises(KnobDomainError):
        StructuredPruning(scope="everything")  # type: ignore[arg-type]
    quarter: Any = r.apply(m, "fraction", 0.75)  # type: ignore[arg-type]
    assert quarter[0].out_features == 1  # 0.75 is 3/4 (KMR.exact.binary64)


def test_budgeted_kmr_to_parameter_budget() -> None:
    """Algorithm 1 with the structured rule and KMR.meter.params reaches a parameter budget."""
    m = cnn()
    c0 = parameter_count(m)
    triple = KMRTriple("structured", StructuredPruning(), CostMeter("params", parameter_count))
    policy: ScheduledPolicy[nn.Module] = ScheduledPolicy((Proposal("fraction", Fraction(1, 4)),) * 10)
    res = budgeted_kmr(m, triple, policy, c0 // 2, 10)
    assert res.status is Status.FEASIBLE and res.cost_final <= c0 // 2
    assert res.cost_final == parameter_count(res.model)
    assert all(r.accepted and r.cost_after < r.cost_before for r in res.trace)
    assert res.model(torch.zeros(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 4)
    assert parameter_count(m) == c0


def test_after_lowrank_factors() -> None:
    """KMR.structured.supported-graph: a LowRankFactors (a Sequential that keeps Sequential.forward)
    is read as its two layers, so the rank channels of its first layer are prunable;
    KMR.structured.equivalence holds for the composed model."""
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    lr: Any = LowRank(layers=("0",)).apply(m, "rank", 4)
    out: Any = StructuredPruning().apply(lr, "fraction", Fraction(1, 2))
    assert out[0][0].out_features == 2 and out[0][1].in_features == 2 and out[0][1].out_features == 5
    first = [lr[0][0], lr[0][1], lr[2]]
    rem = oracle_removed([oracle_scores(x.weight, 2) for x in first[:2]], [12, 4], Fraction(1, 2), "per-layer")
    x = torch.randn(6, 12, dtype=torch.float64)
    torch.testing.assert_close(out(x), masked(lr, rem)(x), rtol=1e-12, atol=1e-12)
