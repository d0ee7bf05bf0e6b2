"""Early exit (spec/methods/early_exit.md): heads, the exact exit rule, expected MACs, monotonicity."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core.budgeted import budgeted_kmr
from kmr_ref.core.compose import Phase, composed_kmr
from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.policy import Proposal, ScheduledPolicy
from kmr_ref.core.rules import KMRTriple
from kmr_ref.examples import digits
from kmr_ref.methods.distillation import Distillation
from kmr_ref.methods.early_exit import (
    EarlyExit,
    EarlyExitRule,
    exceeds,
    exit_costs,
    expected_macs,
    expected_macs_meter,
)
from kmr_ref.methods.meters import macs
from kmr_ref.methods.training import state_bytes

FULL = 337536  # the digits CNN: 9216 + 294912 + 32768 + 640 MACs, by hand


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load(0)


@pytest.fixture(scope="module")
def base() -> nn.Sequential:
    return digits.pretrained()


@pytest.fixture(scope="module")
def xe(data: digits.Digits) -> torch.Tensor:
    return data.val.x[:120]  # a small evaluation set keeps the Hypothesis test fast


@pytest.fixture(scope="module")
def rule(data: digits.Digits) -> EarlyExitRule:
    return EarlyExitRule(data.train.x, data.train.y, steps=40)


@pytest.fixture(scope="module")
def ee(rule: EarlyExitRule, base: nn.Sequential) -> EarlyExit:
    m = rule.apply(base, "threshold", "9/10")
    assert isinstance(m, EarlyExit)
    return m


def test_macs_formula_by_hand_and_by_flop_counter(base: nn.Sequential, ee: EarlyExit, xe: torch.Tensor) -> None:
    """KMR.exit.macs: the stated per-exit costs, checked by hand and against FlopCounterMode."""
    conv1, conv2 = 16 * 1 * 9 * 64, 32 * 16 * 9 * 64
    h1, h2 = 16 * 64 * 10, 32 * 16 * 10
    assert conv1 + conv2 + 512 * 64 + 64 * 10 == FULL
    assert exit_costs(ee, xe) == [conv1 + h1, conv1 + conv2 + h1 + h2, FULL + h1 + h2] == [19456, 319488, 352896]
    assert exit_costs(base, xe) == [FULL] and expected_macs(base, xe) == FULL
    x1 = xe[:1]
    assert macs(base, x1) == FULL
    with torch.no_grad():
        f1, f4 = base[:2](x1), base[:5](x1)
    counted = [macs(base[:2], x1) + macs(ee.heads["1"], f1),
               macs(base[:5], x1) + macs(ee.heads["1"], f1) + macs(ee.heads["4"], f4)]
    assert counted == exit_costs(ee, xe)[:2]


def _exit_by_hand(ee: EarlyExit, x: torch.Tensor, theta: Fraction) -> int:
    """KMR.exit.rule for one sample, with Python's exact Fraction comparison."""
    h, j = x[None], 0
    with torch.no_grad():
        for i, layer in enumerate(ee.backbone):
            h = layer(h)
            if i in ee.positions:
                conf = float(torch.softmax(ee.heads[str(i)](h), dim=1).max())
                if Fraction(conf) > theta:
                    return j
                j += 1
    return j


def test_cost_meter_is_the_exact_mean(rule: EarlyExitRule, ee: EarlyExit, xe: torch.Tensor) -> None:
    """KMR.exit.cost-meter, KMR.exit.rule: (1/N) sum of each sample's exit cost, exact."""
    costs = [19456, 319488, 352896]
    xe = xe[:40]  # the by-hand exits run one sample at a time
    for th in ("9/10", "1/2", "0", "1"):
        m = rule.apply(ee, "threshold", th)
        want = Fraction(sum(costs[_exit_by_hand(ee, x, Fraction(th))] for x in xe), len(xe))
        got = expected_macs_meter(xe)(m)
        assert type(got) is Fraction and got == want
    assert expected_macs(rule.apply(ee, "threshold", 1), xe) == 352896  # theta = 1: never early
    assert expected_macs(rule.apply(ee, "threshold", 0), xe) == 19456  # theta = 0: always the first head
    with pytest.raises(RuleInputError, match=r"KMR\.exit\.cost-meter"):
        expected_macs(ee, xe[:0])


@given(st.floats(0, 1, width=32), st.fractions(0, 1, max_denominator=10**9))
def test_exceeds_is_exact(c: float, theta: Fraction) -> None:
    """KMR.exit.rule: conf > theta decided exactly, as Fraction(conf) > theta."""
    got = bool(exceeds(torch.tensor([c], dtype=torch.float32), theta)[0])
    assert got == (Fraction(float(torch.tensor(c, dtype=torch.float32))) > theta)


@given(st.fractions(0, 1, max_denominator=1000), st.fractions(0, 1, max_denominator=1000))
def test_cost_monotone_in_threshold(rule: EarlyExitRule, ee: EarlyExit, xe: torch.Tensor,
                                    a: Fraction, b: Fraction) -> None:
    """KMR.exit.monotone: expected MACs non-decreasing in theta, for fixed heads."""
    lo, hi = min(a, b), max(a, b)
    assert expected_macs(rule.apply(ee, "threshold", lo), xe) <= expected_macs(rule.apply(ee, "threshold", hi), xe)


def test_forward_reuse_and_no_mutation(rule: EarlyExitRule, base: nn.Sequential, ee: EarlyExit,
                                       xe: torch.Tensor) -> None:
    """KMR.exit.forward, KMR.exit.reuse, KMR.exit.model, KMR.exit.heads, KMR.rule.no-mutation."""
    before = state_bytes(base)
    t = digits.pretrained().train()
    rule.apply(t, "threshold", "1/2")
    assert t.training and all(m.training for m in t.modules())
    assert state_bytes(base) == before
    assert ee.positions == (1, 4) and ee.threshold == Fraction(9, 10)
    assert all(torch.equal(p, q) for p, q in zip(ee.backbone.parameters(), base.parameters(), strict=True))
    m = rule.apply(ee, "threshold", "1/4")
    assert isinstance(m, EarlyExit) and m.heads is ee.heads and ee.threshold == Fraction(9, 10)
    with torch.no_grad():
        out = ee(xe)
        outs = ee.stages(xe)
        for i in range(len(xe)):
            j = _exit_by_hand(ee, xe[i], Fraction(9, 10))
            assert torch.equal(out[i], outs[j][i])
    for mode in (True, False):
        ee.train(mode)
        assert ee(xe[:4]).shape == (4, 10)
    ee.eval()
    assert not any(p.requires_grad for p in ee.heads.parameters())


def test_bad_input(data: digits.Digits, base: nn.Sequential, rule: EarlyExitRule) -> None:
    """KMR.exit.positions, KMR.exit.knob (KMR.knob.domain-real), KMR.exit.backbone, KMR.exit.settings."""
    x, y = data.train.x, data.train.y
    for pos in ((8,), (-1,), (20,)):
        with pytest.raises(KnobDomainError, match=r"KMR\.exit\.positions"):
            EarlyExitRule(x, y, positions=pos, steps=1).apply(base, "threshold", "1/2")
    for pos in ((4, 1), (), (1, 1)):
        with pytest.raises(KnobDomainError, match=r"KMR\.exit\.positions"):
            EarlyExitRule(x, y, positions=pos)
    for v in ("3/2", -1):
        with pytest.raises(KnobDomainError, match=r"KMR\.knob\.domain-real"):
            rule.apply(base, "threshold", v)
    for bad_model in (nn.Linear(64, 10), nn.Sequential(nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 10))):
        with pytest.raises(RuleInputError, match=r"KMR\.exit\.backbone"):
            rule.apply(bad_model, "threshold", "1/2")
    with pytest.raises(KnobDomainError, match=r"KMR\.exit\.settings"):
        EarlyExitRule(x, y, steps=0)
    with pytest.raises(RuleInputError, match=r"KMR\.exit\.settings"):
        EarlyExitRule(x, y[:5])


def test_algorithm1_and_algorithm10(data: digits.Digits, base: nn.Sequential, rule: EarlyExitRule,
                                    xe: torch.Tensor) -> None:
    """KMR.exit.knob in Algorithm 1; Algorithm 10: distill (width 4), then early exit, one MACs meter."""
    cost = expected_macs_meter(xe)
    q = digits.accuracy_meter(data.val)
    pol = ScheduledPolicy((Proposal("threshold", Fraction(99, 100)), Proposal("threshold", Fraction(1, 2))))
    res = budgeted_kmr(base, KMRTriple("exit", rule, cost, q), pol, Fraction(FULL, 4), 5)
    assert res.status.value == "feasible" and res.cost_final <= Fraction(FULL, 4)
    costs = [r.cost_after for r in res.trace]
    assert costs == sorted(costs, reverse=True) and costs[0] < FULL
    distill = Distillation(data.train.x, data.train.y, steps=10)
    phases = [Phase("distill", distill, ScheduledPolicy((Proposal("width", 4),))),
              Phase("exit", EarlyExitRule(data.train.x, data.train.y, steps=10),
                    ScheduledPolicy((Proposal("threshold", 0),)))]  # everyone leaves at the first head
    out = composed_kmr(base, phases, cost, 30000, 10, quality=q)
    assert out.phase_of_record[0] == "distill" and "exit" in out.phase_of_record
    width4 = 8 * 9 * 64 + 16 * 8 * 9 * 64 + 256 * 32 + 32 * 10  # 85 248 MACs for the width-4 student
    assert out.result.trace[0].cost_after == width4
    assert out.result.status.value == "feasible" and isinstance(out.result.model, EarlyExit)
    assert out.result.cost_final == 8 * 9 * 64 + 8 * 64 * 10  # conv1 + head 1 of the width-4 student
