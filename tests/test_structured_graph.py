"""Structured pruning on traced graphs (spec/methods/structured.md, "Graphs"): channel groups
through residual adds, concatenations, BatchNorm, depthwise convolutions, squeeze-and-excite
gates and flatten; refusals that name the fx node; the pruned model against the masked original;
EfficientNet-Lite0. Expected groups are written out by hand; removed channels come from an
independent oracle (Fraction sums) or are read back from the pruned model's BatchNorm buffers."""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core import RuleInputError
from kmr_ref.methods.meters import macs, parameter_count
from kmr_ref.methods.structured import StructuredPruning
from kmr_ref.methods.structured_graph import analyse_graph
from tests.test_structured import cnn, mlps, state_bytes


def groups_of(model: nn.Module) -> list[tuple[str, int, bool, list[str]]]:
    return [(g.name, g.size, g.pinned, [r[0] for r in g.rows]) for g in analyse_graph(model).groups]


def oracle_group_scores(weights: list[torch.Tensor], p: int = 2) -> list[float]:
    """S_c = the exact sum of |w|^p over row c of every member weight, rounded once."""
    rows = [w.detach().double().reshape(w.shape[0], -1).tolist() for w in weights]
    return [float(sum((abs(Fraction(x)) ** p for r in rows for x in r[c]), Fraction(0)))
            for c in range(len(rows[0]))]


def oracle_removed(scores: list[float], f: Fraction) -> list[int]:
    k = min(math.floor(f * len(scores)), len(scores) - 1)
    return sorted(c for _, c in sorted((s, c) for c, s in enumerate(scores))[:k])


def bn_init(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, nn.modules.batchnorm._BatchNorm):
                assert b.running_mean is not None and b.running_var is not None
                b.running_mean.copy_(torch.rand(b.num_features, generator=g) * 2 - 1)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
                b.weight.copy_(torch.rand(b.num_features, generator=g) + 0.5)
                b.bias.copy_(torch.rand(b.num_features, generator=g) * 0.5 + 0.5)
    return m.eval()


# ---------------------------------------------------------------------------------------------
# Hand-built graphs


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(6)
        self.c1 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(5)
        self.c2 = nn.Conv2d(5, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.c2(torch.relu(self.bn1(self.c1(h)))))
        z = torch.relu(y + h)
        return self.fc(torch.flatten(self.pool(z), 1))


class SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 1)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.proj = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self.bn1(self.dw(nn.functional.relu6(self.bn0(self.c0(x))))))
        s = nn.functional.adaptive_avg_pool2d(h, 1)
        gate = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))
        return self.proj(gate * h)


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(9)
        self.out = nn.Conv2d(9, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_residual_groups() -> None:
    """KMR.structured.graph-add, KMR.structured.graph-group, KMR.structured.graph-output,
    KMR.structured.graph-flatten, KMR.structured.graph-bn: the residual add joins stem and c2."""
    assert groups_of(Residual()) == [("stem", 6, False, ["stem", "c2"]), ("c1", 5, False, ["c1"]),
                                     ("fc", 3, True, ["fc"])]


def test_se_depthwise_groups() -> None:
    """KMR.structured.graph-depthwise (the depthwise conv's rows follow its input),
    squeeze-and-excite (KMR.structured.graph-add on a multiplication: the gate's channels join),
    KMR.structured.graph-spatial, KMR.structured.graph-elementwise."""
    assert groups_of(SE()) == [("c0", 8, False, ["c0", "dw", "expand"]), ("reduce", 2, False, ["reduce"]),
                               ("proj", 4, True, ["proj"])]


def test_cat_groups_and_offsets() -> None:
    """KMR.structured.graph-cat: two groups side by side; the BatchNorm spans both; the consumer's
    input columns are removed at each group's offset."""
    torch.manual_seed(3)
    m = bn_init(Cat().double(), 3)
    assert groups_of(m) == [("a", 4, False, ["a"]), ("b", 5, False, ["b"]), ("out", 2, True, ["out"])]
    out: Any = StructuredPruning(graph=True).apply(m, "fraction", Fraction(1, 2))
    ra = oracle_removed(oracle_group_scores([m.a.weight]), Fraction(1, 2))
    rb = oracle_removed(oracle_group_scores([m.b.weight]), Fraction(1, 2))
    keep = [c for c in range(4) if c not in ra] + [4 + c for c in range(5) if c not in rb]
    assert out.bn.num_features == len(keep) == 5
    assert torch.equal(out.bn.running_mean, m.bn.running_mean[keep])
    assert torch.equal(out.out.weight, m.out.weight[:, keep])
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref.out.weight[:, [c for c in range(9) if c not in keep]] = 0.0
    torch.testing.assert_close(out(x), ref(x), rtol=1e-12, atol=1e-12)


class SplitAdd(nn.Module):
    """One conv's 5 channels added to a concatenation of 2 + 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 5, 1)
        self.c, self.d = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 3, padding=1)
        self.out = nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.a(x) + torch.cat([self.c(x), self.d(x)], 1)))


def test_add_splits_runs() -> None:
    """KMR.structured.graph-add with different run boundaries: a's channels split into [0:2]
    (joined with c) and [2:5] (joined with d), named by range (KMR.structured.graph-group);
    KMR.structured.graph-equivalence."""
    torch.manual_seed(11)
    m = SplitAdd().double()
    assert groups_of(m) == [("a[0:2]", 2, False, ["a", "c"]), ("a[2:5]", 3, False, ["a", "d"]),
                            ("out", 2, True, ["out"])]
    f = Fraction(1, 2)
    out: Any = StructuredPruning(graph=True).apply(m, "fraction", f)
    r0 = oracle_removed(oracle_group_scores([m.a.weight[:2], m.c.weight]), f)
    r1 = oracle_removed(oracle_group_scores([m.a.weight[2:], m.d.weight]), f)
    removed = r0 + [2 + c for c in r1]
    assert out.a.out_channels == 3 and out.c.out_channels == 1 and out.d.out_channels == 2
    assert torch.equal(out.a.weight, m.a.weight[[c for c in range(5) if c not in removed]])
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref.out.weight[:, removed] = 0.0
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(out(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("f", [Fraction(1, 4), Fraction(1, 2), Fraction(19, 20)])
def test_residual_equivalence(f: Fraction) -> None:
    """KMR.structured.graph-equivalence, KMR.structured.graph-score (the group's score sums the
    rows of all its members), KMR.structured.graph-removal: the pruned residual CNN equals the
    original with the consumers' input columns of the removed channels zeroed (float64, 1e-12)."""
    torch.manual_seed(5)
    m = bn_init(Residual().double(), 5)
    before = state_bytes(m)
    out: Any = StructuredPruning(graph=True).apply(m, "fraction", f)
    assert state_bytes(m) == before  # KMR.rule.no-mutation
    r0 = oracle_removed(oracle_group_scores([m.stem.weight, m.c2.weight]), f)
    r1 = oracle_removed(oracle_group_scores([m.c1.weight]), f)
    k0 = [c for c in range(6) if c not in r0]
    k1 = [c for c in range(5) if c not in r1]
    assert torch.equal(out.stem.weight, m.stem.weight[k0]) and torch.equal(out.c2.weight, m.c2.weight[k0][:, k1])
    assert torch.equal(out.c1.weight, m.c1.weight[k1][:, k0])
    assert torch.equal(out.bn2.running_var, m.bn2.running_var[k0])
    assert torch.equal(out.fc.weight, m.fc.weight[:, [4 * c + j for c in k0 for j in range(4)]])
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref.c1.weight[:, r0] = 0.0
        ref.c2.weight[:, r1] = 0.0
        for c in r0:
            ref.fc.weight[:, 4 * c: 4 * c + 4] = 0.0
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(out(x), ref(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(m(x), ref(x))  # the removed contributions were not zero
    assert parameter_count(out) < parameter_count(m) and macs(out, x) < macs(m, x)


def test_se_equivalence() -> None:
    """KMR.structured.graph-equivalence with a squeeze-and-excite gate and a depthwise conv."""
    torch.manual_seed(7)
    m = bn_init(SE().double(), 7)
    f = Fraction(1, 2)
    out: Any = StructuredPruning(graph=True).apply(m, "fraction", f)
    r0 = oracle_removed(oracle_group_scores([m.c0.weight, m.dw.weight, m.expand.weight]), f)
    r1 = oracle_removed(oracle_group_scores([m.reduce.weight]), f)
    k0 = [c for c in range(8) if c not in r0]
    assert out.dw.groups == out.dw.in_channels == out.dw.out_channels == 4
    assert torch.equal(out.expand.weight, m.expand.weight[k0][:, [c for c in range(2) if c not in r1]])
    ref = copy.deepcopy(m)
    with torch.no_grad():
        ref.proj.weight[:, r0] = 0.0
        ref.reduce.weight[:, r0] = 0.0
        ref.expand.weight[:, r1] = 0.0
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(out(x), ref(x), rtol=1e-12, atol=1e-12)


def test_select_and_group_knobs() -> None:
    """KMR.structured.graph-knob (named by the group's first producer), KMR.structured.graph-select
    (a group is pruned only when all its scored layers are chosen), KMR.structured.per-layer-knob."""
    m = bn_init(Residual(), 1)
    assert [k.name for k in StructuredPruning.for_model(m, graph=True).knobs()] == \
        ["fraction", "fraction@stem", "fraction@c1"]
    r = StructuredPruning.for_model(m, graph=True, exclude=["c2.*"])
    assert r.layers == ("c1",)
    out: Any = r.apply(m, "fraction", Fraction(1, 2))
    assert out.stem.out_channels == 6 and out.c1.out_channels == 3
    one: Any = StructuredPruning.for_model(m, graph=True).apply(m, "fraction@stem", Fraction(1, 2))
    assert one.stem.out_channels == one.c2.out_channels == 3 and one.c1.out_channels == 5
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(graph=True, layers=("fc",)).apply(m, "fraction@fc", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.per-layer-knob"


# ---------------------------------------------------------------------------------------------
# The Sequential case


@settings(max_examples=15)
@given(mlps(), st.sampled_from([Fraction(0), Fraction(1, 3), Fraction(3, 4)]), st.sampled_from([1, 2]),
       st.sampled_from(["per-layer", "global"]))
def test_sequential_is_a_special_case(model: nn.Sequential, f: Fraction, p: int, scope: str) -> None:
    """KMR.structured.graph-sequential, KMR.structured.graph-mode: on a stack the sequential rules
    accept, the graph rules give the same groups (one per layer), knobs and output bytes."""
    seq = StructuredPruning.for_model(model, p, scope)  # type: ignore[arg-type]
    gr = StructuredPruning.for_model(model, p, scope, graph=True)  # type: ignore[arg-type]
    assert gr.layers == seq.layers
    assert state_bytes(gr.apply(model, "fraction", f)) == state_bytes(seq.apply(model, "fraction", f))


@pytest.mark.parametrize("scope", ["per-layer", "global"])
def test_sequential_cnn_special_case(scope: str) -> None:
    """KMR.structured.graph-sequential on the nested CNN with BatchNorm, pooling and Flatten."""
    m = cnn()
    seq = StructuredPruning.for_model(m, scope=scope)  # type: ignore[arg-type]
    gr = StructuredPruning.for_model(m, scope=scope, graph=True)  # type: ignore[arg-type]
    assert gr.layers == seq.layers == ("0.0", "1.0", "4")
    for knob, v in (("fraction", Fraction(1, 2)), ("fraction@1.0", Fraction(2, 5))):
        assert state_bytes(gr.apply(m, knob, v)) == state_bytes(seq.apply(m, knob, v))


# ---------------------------------------------------------------------------------------------
# Refusals


class Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g


class Body(nn.Module):
    """conv -> <op> -> conv; ``op`` decides what sits between the two layers."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(2, 4, 1)
        self.b = nn.Conv2d(4, 3, 1)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.op == "autograd":
            h = Swish.apply(h)
        elif self.op == "control":
            if h.sum() > 0:
                h = h * 2
        elif self.op == "inplace-method":
            h = h.add_(1)
        elif self.op == "inplace-fn":
            h = nn.functional.relu(h, inplace=True)
        elif self.op == "module":
            h = self.norm(h)
        elif self.op == "softmax":
            h = torch.softmax(h, dim=1)
        elif self.op == "slice":
            h = torch.cat([h[:, :2], h[:, 2:]], dim=1)
        elif self.op == "size":
            h = h * h.size(1)
        elif self.op == "twice":
            h = h + self.a(x)
        return self.b(h)


REFUSALS = [
    ("autograd", "KMR.structured.graph-refuse", "Swish.apply"),
    ("control", "KMR.structured.graph-trace", "cannot trace"),
    ("inplace-method", "KMR.structured.graph-inplace", "add_"),
    ("inplace-fn", "KMR.structured.graph-inplace", "relu"),
    ("module", "KMR.structured.graph-refuse", "'norm'"),
    ("softmax", "KMR.structured.graph-refuse", "softmax"),
    ("slice", "KMR.structured.graph-refuse", "getitem"),
    ("size", "KMR.structured.graph-refuse", "size"),
    ("twice", "KMR.structured.graph-refuse", "more than once"),
]


@pytest.mark.parametrize(("op", "clause", "named"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_before_any_change(op: str, clause: str, named: str) -> None:
    """KMR.structured.graph-refuse, KMR.structured.graph-trace, KMR.structured.graph-inplace:
    refused with the clause and the fx node (or the trace error); the model is untouched."""
    m = Body(op)
    before = state_bytes(m)
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(graph=True).apply(m, "fraction", Fraction(1, 2))
    assert e.value.clause == clause and named in str(e.value)
    if clause != "KMR.structured.graph-trace":
        assert "fx node" in str(e.value)
    assert state_bytes(m) == before


def test_refused_grouped_conv_and_shared() -> None:
    """KMR.structured.graph-depthwise (other grouped convs are refused), KMR.structured.graph-shared."""
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(graph=True).apply(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 3, groups=2)),
                                            "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.graph-refuse" and "groups=2" in str(e.value)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(graph=True).apply(nn.Sequential(a, b), "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.graph-shared"


class HardCoded(nn.Module):
    """A depthwise conv whose forward passes groups=8 as a constant instead of self.groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(nn.functional.conv2d(self.a(x), self.dw.weight, self.dw.bias, 1, 0, 1, 8))


def test_recheck_refuses_hard_coded_forward() -> None:
    """KMR.structured.graph-recheck, KMR.structured.graph-layer: the original passes (groups=8 is the
    module's own); the pruned model's forward would still pass 8, so the rule refuses to return it."""
    m = HardCoded()
    assert groups_of(m)[0] == ("a", 8, False, ["a", "dw"])
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(graph=True).apply(m, "fraction", Fraction(1, 2))
    assert e.value.clause == "KMR.structured.graph-recheck" and "groups=8" in str(e.value)
    assert StructuredPruning(graph=True).apply(m, "fraction", Fraction(1, 10)) is not m  # nothing removed


class FixedOps(nn.Module):
    """Operations the rules do not cover, on channels that never change: allowed."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(5)
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.b(torch.relu(self.a(self.norm(x)))), dim=-1)


def test_uncovered_ops_on_fixed_channels() -> None:
    """KMR.structured.graph-fixed, KMR.structured.graph-output: a LayerNorm on the input and a
    softmax after the output layer read only channels that never change."""
    m = FixedOps()
    out: Any = StructuredPruning(graph=True).apply(m, "fraction", Fraction(1, 2))
    assert out.a.out_features == 2 and out.b.in_features == 2 and out.b.out_features == 3


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (real pretrained weights)


@pytest.fixture(scope="module")
def effnet() -> nn.Module:
    pytest.importorskip("efficientnet_lite_pytorch")
    from kmr_ref.models import efficientnet_lite0

    return efficientnet_lite0.load()


def test_efficientnet_groups(effnet: nn.Module) -> None:
    """KMR.structured.graph-group on EfficientNet-Lite0 (its convs are Conv2d subclasses that pad and
    call F.conv2d with their own weight: KMR.structured.graph-layer): 25 groups; each stage's residual stream is
    one group (its blocks' project convs), each expansion joins its depthwise conv; the classifier
    is pinned (KMR.structured.graph-output)."""
    gs = groups_of(effnet)
    assert len(gs) == 25
    assert gs[0] == ("_conv_stem", 32, False, ["_conv_stem", "_blocks.0._depthwise_conv"])
    assert ("_blocks.11._project_conv", 192, False,
            [f"_blocks.{i}._project_conv" for i in (11, 12, 13, 14)]) in gs
    assert ("_blocks.9._expand_conv", 672, False, ["_blocks.9._expand_conv", "_blocks.9._depthwise_conv"]) in gs
    assert gs[-1] == ("_fc", 1000, True, ["_fc"])


@pytest.mark.slow
def test_efficientnet_pruned_equals_masked(effnet: nn.Module) -> None:
    """KMR.structured.graph-equivalence and KMR.structured.graph-removal on EfficientNet-Lite0:
    parameters and MACs fall; the pruned model's logits equal those of the original with the
    removed channels zeroed after every BatchNorm of their group (ReLU6 keeps 0 at 0, so this cuts
    exactly their contributions), float32, within atol = rtol = 1e-4. The removed channels are read
    back from the pruned BatchNorm buffers (a subsequence of the original's)."""
    from kmr_ref.models import efficientnet_lite0

    f = Fraction(1, 4)
    rule = StructuredPruning.for_model(effnet, graph=True, include=["_blocks.1[0-5].*", "_conv_head.*"])
    out = rule.apply(effnet, "fraction", f)
    x = efficientnet_lite0.example_input(2)
    assert parameter_count(out) < parameter_count(effnet) and macs(out, x) < macs(effnet, x)
    mods = dict(out.named_modules())
    hooks = []
    for name, bn in effnet.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        small = mods[name]
        assert isinstance(small, nn.BatchNorm2d)

        def rows(b: nn.Module) -> list[tuple[float, ...]]:
            return list(zip(*(t.tolist() for t in (b.running_mean, b.running_var, b.weight, b.bias)), strict=True))

        full = rows(bn)
        kept = [full.index(v) for v in rows(small)]
        assert kept == sorted(kept) and len(set(full)) == len(full)
        removed = [c for c in range(len(full)) if c not in set(kept)]
        if removed:
            assert len(removed) == math.floor(f * len(full))  # KMR.structured.count per group

            def zero(_m: nn.Module, _i: Any, y: torch.Tensor, r: list[int] = removed) -> torch.Tensor:
                y = y.clone()
                y[:, r] = 0.0
                return y

            hooks.append(bn.register_forward_hook(zero))
    assert hooks
    try:
        with torch.no_grad():
            ref = effnet(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        torch.testing.assert_close(out(x), ref, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(effnet(x), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Random residual graphs (Hypothesis)


class RandomNet(nn.Module):
    """A stem, then drawn blocks over a stream of c channels, then pool -> flatten -> Linear."""

    def __init__(self, blocks: list[tuple[str, int]], c: int) -> None:
        super().__init__()
        self.kinds = [k for k, _ in blocks]
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(c)
        self.blocks = nn.ModuleList()
        for kind, w in blocks:
            blk = nn.Module()
            if kind == "res":
                blk.c1, blk.bn1, blk.c2 = nn.Conv2d(c, w, 1), nn.BatchNorm2d(w), nn.Conv2d(w, c, 3, padding=1)
            elif kind == "cat":
                blk.c1, blk.c2 = nn.Conv2d(c, w, 1), nn.Conv2d(c, w + 1, 1)
                c = 2 * w + 1
                blk.bn1 = nn.BatchNorm2d(c)
            elif kind == "dw":
                blk.c1, blk.bn1 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c)
            elif kind == "se":
                blk.c1, blk.c2 = nn.Conv2d(c, w, 1), nn.Conv2d(w, c, 1)
            else:
                blk.c1, blk.bn1 = nn.Conv2d(c, w, 1), nn.BatchNorm2d(w)
                c = w
            self.blocks.append(blk)
        self.fc = nn.Linear(4 * c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem_bn(self.stem(x)))
        for kind, blk in zip(self.kinds, self.blocks, strict=True):
            if kind == "res":
                h = h + blk.c2(torch.relu(blk.bn1(blk.c1(h))))
            elif kind == "cat":
                h = torch.relu(blk.bn1(torch.cat([blk.c1(h), blk.c2(h)], 1)))
            elif kind == "dw":
                h = nn.functional.relu6(blk.bn1(blk.c1(h)))
            elif kind == "se":
                h = h * torch.sigmoid(blk.c2(torch.relu(blk.c1(nn.functional.adaptive_avg_pool2d(h, 1)))))
            else:
                h = torch.relu(blk.bn1(blk.c1(h)))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


@st.composite
def random_nets(draw: st.DrawFn) -> RandomNet:
    blocks = draw(st.lists(st.tuples(st.sampled_from(["res", "cat", "dw", "se", "conv"]), st.integers(1, 4)),
                           min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    return bn_init(RandomNet(blocks, draw(st.integers(1, 5))), seed)  # type: ignore[return-value]


@settings(max_examples=12)  # each example traces and meters 4 models: kept small for the CI budget
@given(random_nets(), st.sampled_from(["per-layer", "global"]))
def test_random_graphs(net: RandomNet, scope: str) -> None:
    """KMR.structured.graph-group (consistent: every pruned model runs, its output shape is kept),
    KMR.structured.graph-monotone (parameters and MACs non-increasing along the knob's grid),
    KMR.rule.deterministic (same input, same bytes)."""
    rule = StructuredPruning(graph=True, scope=scope)  # type: ignore[arg-type]
    x = torch.randn(2, 2, 4, 4)
    costs = []
    for f in (Fraction(0), Fraction(1, 3), Fraction(1, 2), Fraction(19, 20)):
        out = rule.apply(net, "fraction", f)
        with torch.no_grad():
            assert out(x).shape == (2, 3)
        costs.append((parameter_count(out), macs(out, x)))
        if f == Fraction(1, 2):
            assert state_bytes(rule.apply(net, "fraction", f)) == state_bytes(out)
    assert costs[0] == (parameter_count(net), macs(net, x))
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(costs))


# ---------------------------------------------------------------------------------------------
# Through kmr compress: config key, run directory, reload


def test_compress_graph_mode_reloads(tmp_path: Path) -> None:
    """KMR.structured.graph-mode from a config (``graph = true``; KMR.compress.methods), the run
    directory reloads through ``kmr_ref.load`` with the depthwise conv's groups resized
    (KMR.compress.artifacts, KMR.compress.load) to the same bytes and outputs; MACs fall as the
    meter says."""
    import json

    import kmr_ref
    from kmr_ref.compress import CompressConfig, PhaseConfig, ScheduledConfig, StructuredMethod, compress
    from kmr_ref.compress.config import ConfigError

    torch.manual_seed(13)
    base = bn_init(SE(), 13)
    x = torch.randn(1, 3, 6, 6)
    cfg = CompressConfig(phases=(PhaseConfig(StructuredMethod(graph=True), ScheduledConfig(("1/2",))),),
                         meter="macs", budget=0)
    rep = compress(base, cfg, out_dir=tmp_path / "out", example_input=x)
    assert rep.cost_final == macs(rep.model, x) < rep.cost_initial == macs(base, x)
    back: Any = kmr_ref.load(tmp_path / "out", model=base)
    assert back.dw.groups == back.dw.out_channels == 4 and back.expand.out_channels == 4
    assert state_bytes(back) == state_bytes(rep.model)
    with torch.no_grad():
        assert torch.equal(back(x), rep.model(x))
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert next(
        c["attrs"] for c in man["modules"] if c["path"] == "dw") == {"groups": 4, "in_channels": 4, "out_channels": 4}
    d: dict[str, Any] = {"meter": "params", "budget": 0, "phases": [
        {"method": "structured", "graph": True, "policy": {"type": "scheduled", "values": ["1/2"]}}]}
    with pytest.raises(ConfigError):
        StructuredMethod(graph=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CompressConfig.from_dict({**d, "phases": [{**d["phases"][0], "graph": "yes"}]})
    parsed = CompressConfig.from_dict(d)
    assert isinstance(parsed.phases[0].method, StructuredMethod) and parsed.phases[0].method.graph is True


def se_model() -> nn.Module:
    """A zero-argument factory for the config test below (``model = "module:attr"``)."""
    torch.manual_seed(17)
    return bn_init(SE(), 17)


def se_input() -> torch.Tensor:
    return torch.linspace(-2, 2, 3 * 6 * 6).reshape(1, 3, 6, 6)


def test_kmr_eval_reproduces_graph_run(tmp_path: Path) -> None:
    """KMR.compress.eval on a graph-mode run built from a TOML-style config with a factory: the
    run directory rebuilds from the factory and re-measures to the report's MACs."""
    from kmr_ref.cli.eval_cmd import evaluate
    from kmr_ref.compress import CompressConfig, compress, load_model

    cfg = CompressConfig.from_dict({
        "model": "tests.test_structured_graph:se_model", "example_input": "tests.test_structured_graph:se_input",
        "meter": "macs", "budget_fraction": "3/5",
        "phases": [{"method": "structured", "graph": True, "policy": {"type": "scheduled", "values": ["1/2"]}}]})
    rep = compress(load_model(cfg), cfg, out_dir=tmp_path / "run")
    assert rep.status.value == "feasible"
    got, final = evaluate(tmp_path / "run")
    assert got == final and got["cost"] == rep.cost_final
