"""LoRA (spec/methods/lora.md) on the shifted-digits task."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kmr_ref.core.budgeted import budgeted_kmr
from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.policy import Proposal, ScheduledPolicy
from kmr_ref.core.rules import KMRTriple
from kmr_ref.examples import digits, shifted_digits
from kmr_ref.methods.lora import (
    LoRA,
    LoRALinear,
    adapter_storage_bits,
    adapters,
    merge,
    trained_parameter_meter,
    trained_parameters,
)
from kmr_ref.methods.meters import nonzero_count, parameter_count
from kmr_ref.methods.pruning import MagnitudePruning
from kmr_ref.methods.training import state_bytes

STEPS = 150  # enough to clear chance by a margin on the rotated digits (0.30 here)


@pytest.fixture(scope="module")
def task() -> digits.Digits:
    return shifted_digits.load(0)


@pytest.fixture(scope="module")
def base() -> nn.Sequential:
    return digits.pretrained()


@pytest.fixture(scope="module")
def adapted(task: digits.Digits, base: nn.Sequential) -> nn.Module:
    return LoRA(task.train.x, task.train.y, steps=STEPS).apply(base, "rank", 4)


def test_task_is_a_quarter_turn(task: digits.Digits) -> None:
    """KMR.lora.task: each image turned 90 degrees counter-clockwise, same split and labels."""
    up = digits.load(0)
    assert torch.equal(task.val.y, up.val.y)
    img = up.val.x[0, 0]
    # counter-clockwise: the top row, read right to left, becomes the left column, top to bottom
    assert torch.equal(task.val.x[0, 0][:, 0], img[0].flip(0))
    assert torch.equal(task.val.x[0, 0], torch.tensor(img.numpy()[:, ::-1].T.copy()))


def test_zero_start_and_adapter_formula(base: nn.Sequential) -> None:
    """KMR.lora.zero-start, KMR.lora.adapter: with B = 0 the output is the base's exactly; else W x + b + B A x."""
    lin = base[6]
    assert isinstance(lin, nn.Linear)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(0))
    a = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    z = LoRALinear(lin, a, torch.zeros(64, 2))
    assert torch.equal(z(x), lin(x))
    b = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    want = x.double() @ lin.weight.double().T + lin.bias.double() + (x.double() @ a.double().T) @ b.double().T
    assert torch.allclose(LoRALinear(lin, a, b)(x).double(), want, atol=1e-4)


def test_init_a_seeded_b_zero(task: digits.Digits, base: nn.Sequential) -> None:
    """KMR.lora.init: after one step A is still its init (B = 0 gives A no gradient), drawn as stated."""
    m = LoRA(task.train.x, task.train.y, steps=1, seed=5).apply(base, "rank", 3)
    (_, a1), (_, a2) = adapters(m)
    torch.manual_seed(5)
    want1 = torch.empty(3, 512).uniform_(-1 / math.sqrt(512), 1 / math.sqrt(512))
    want2 = torch.empty(3, 64).uniform_(-1 / math.sqrt(64), 1 / math.sqrt(64))
    assert torch.equal(a1.lora_A, want1) and torch.equal(a2.lora_A, want2)
    assert a1.lora_B.abs().sum() > 0  # B did move


def test_cost_meter_and_storage(base: nn.Sequential, adapted: nn.Module) -> None:
    """KMR.lora.cost-meter, KMR.lora.storage, KMR.lora.targets (default: both Linear layers)."""
    assert trained_parameters(base) == 38282  # full fine-tuning
    assert trained_parameter_meter()(adapted) == 4 * (512 + 64) + 4 * (64 + 10) == 650 * 4
    assert adapter_storage_bits(adapted) == 32 * 650 * 4
    assert [n for n, _ in adapters(adapted)] == ["6", "8"]


def test_freeze_no_mutation_and_learning(task: digits.Digits, base: nn.Sequential, adapted: nn.Module) -> None:
    """KMR.lora.freeze, KMR.rule.no-mutation, KMR.lora.loss, KMR.rule.runs-forward."""
    trainable = digits.pretrained()
    for p in trainable.parameters():
        p.requires_grad_(True)
    before = state_bytes(trainable)
    m = LoRA(task.train.x, task.train.y, steps=2).apply(trainable, "rank", 1)
    assert all(p.requires_grad for p in trainable.parameters()) and state_bytes(trainable) == before
    for n, ad in adapters(adapted):  # the base weights are bit-equal to the input's after training
        assert torch.equal(ad.base.weight, base.get_submodule(n).weight)
    assert not any(p.requires_grad for p in m.parameters())
    for mode in (True, False):
        adapted.train(mode)
        assert adapted(task.val.x[:5]).shape == (5, 10)
    acc0, acc = digits.accuracy(base, task.val), digits.accuracy(adapted, task.val)
    assert acc0 < 0.2 and acc > acc0 + 0.12


def test_merge_matches_and_prunes(task: digits.Digits, adapted: nn.Module) -> None:
    """KMR.lora.merge, KMR.lora.merge-tolerance; a merged model is plain: MagnitudePruning applies."""
    merged = merge(adapted)
    assert not adapters(merged) and adapters(adapted)  # the adapted model is untouched
    assert parameter_count(merged) == 38282
    with torch.no_grad():
        ya, ym = adapted(task.val.x), merged(task.val.x)
    assert float((ym - ya).abs().max()) <= 1e-5 * (1 + float(ya.abs().max()))
    assert torch.equal(ya.argmax(1), ym.argmax(1))
    pruned = MagnitudePruning.for_model(merged).apply(merged, "sparsity", "1/2")
    assert nonzero_count(pruned) == 38282 - 38160 // 2  # biases (122) stay
    assert pruned(task.val.x[:3]).shape == (3, 10)


def test_readapt_and_algorithm1(task: digits.Digits, base: nn.Sequential, adapted: nn.Module) -> None:
    """KMR.lora.readapt; KMR.lora.rank in Algorithm 1 (cost = trained parameters)."""
    rule = LoRA(task.train.x, task.train.y, steps=3)
    again = rule.apply(adapted, "rank", 2)
    assert trained_parameters(again) == 1300
    assert not any(isinstance(m.base, LoRALinear) for _, m in adapters(again))
    tri = KMRTriple("lora", rule, trained_parameter_meter())
    res = budgeted_kmr(base, tri, ScheduledPolicy((Proposal("rank", 8), Proposal("rank", 2))), 2000, 5)
    assert res.status.value == "feasible" and [r.cost_after for r in res.trace] == [5200, 1300]


def test_bad_input(task: digits.Digits, base: nn.Sequential) -> None:
    """KMR.lora.rank (KMR.knob.domain-int), KMR.lora.targets, KMR.lora.input, KMR.lora.settings."""
    x, y = task.train.x, task.train.y
    rule = LoRA(x, y, steps=1)
    before = state_bytes(base)
    for r in (0, -1, 65):
        with pytest.raises(KnobDomainError, match=r"KMR\.knob\.domain-int"):
            rule.apply(base, "rank", r)
    for t in (["0"], ["9"], ["nope"]):  # a Conv2d, out of range, no such module
        with pytest.raises(RuleInputError) as e:
            LoRA(x, y, targets=t, steps=1).apply(base, "rank", 1)
        assert e.value.clause == "KMR.lora.targets"
    with pytest.raises(RuleInputError, match=r"KMR\.lora\.targets"):
        LoRA(x, y, targets="6")
    with pytest.raises(RuleInputError, match=r"KMR\.lora\.targets"):
        rule.apply(nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten()), "rank", 1)
    bad = digits.pretrained()
    with torch.no_grad():
        bad[8].bias[0] = float("inf")
    with pytest.raises(RuleInputError, match=r"KMR\.lora\.input"):
        rule.apply(bad, "rank", 1)
    with pytest.raises(KnobDomainError, match=r"KMR\.lora\.settings"):
        LoRA(x, y, steps=0)
    with pytest.raises(RuleInputError, match=r"KMR\.lora\.settings"):
        LoRA(x, y[:3])
    assert state_bytes(base) == before
