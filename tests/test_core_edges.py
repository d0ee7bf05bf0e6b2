"""Edge cases of the core found in review: plain-callable meters, numpy numbers, errors mid-run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from kmr_ref.core import (
    CostMeter,
    IntRange,
    KMRTriple,
    Knob,
    KnobValue,
    MeterError,
    Phase,
    Proposal,
    QualityMeter,
    RuleInputError,
    ScheduledPolicy,
    Status,
    budgeted_kmr,
    composed_kmr,
)


class Step:
    """Model: an int; knob 'v' sets it to v; values >= 100 are refused by the rule."""

    def knobs(self) -> Sequence[Knob]:
        return [Knob("v", IntRange(0, 1000))]

    def apply(self, model: int, knob: str, value: KnobValue) -> int:
        assert isinstance(value, int)
        if value >= 100:
            raise RuleInputError("KMR.rule.domain-error", f"cannot take {value}")
        return value


def test_plain_callable_cost_is_validated() -> None:
    """KMR.meter.cost-exact: a plain callable given as the cost meter is wrapped and validated,
    so a float cost raises MeterError instead of slipping into the result."""
    tri: KMRTriple[int] = KMRTriple("t", Step(), lambda m: m + 0.5)  # type: ignore[arg-type]
    with pytest.raises(MeterError) as e:
        budgeted_kmr(50, tri, ScheduledPolicy((Proposal("v", 10),)), 0, 5)
    assert e.value.clause == "KMR.meter.cost-exact"
    with pytest.raises(MeterError, match=r"KMR\.meter\.quality"):
        KMRTriple("t", Step(), lambda m: m, lambda m: float("nan")).quality(1)  # type: ignore[arg-type,misc]


def test_numpy_numbers_from_meters() -> None:
    """KMR.meter.cost-exact, KMR.meter.quality: numpy integers and floats are accepted as the
    Python numbers they equal; numpy floats are still refused as costs."""
    assert CostMeter[int]("c", lambda m: np.int64(7))(0) == 7  # type: ignore[arg-type,return-value]
    assert type(CostMeter[int]("c", lambda m: np.int64(7))(0)) is int  # type: ignore[arg-type,return-value]
    tri: KMRTriple[int] = KMRTriple("t", Step(), CostMeter("c", lambda m: m), lambda m: np.float32(0.5))  # type: ignore[arg-type,return-value]
    assert tri.quality is not None and tri.quality(3) == 0.5
    with pytest.raises(MeterError):
        CostMeter[int]("c", lambda m: np.float64(7.0))(0)  # type: ignore[arg-type,return-value]


def test_error_mid_run_carries_partial_result() -> None:
    """KMR.alg1.error: a rule error on the 3rd proposal propagates unchanged and carries the last
    accepted model and the trace so far as ``kmr_partial`` (status interrupted)."""
    tri: KMRTriple[int] = KMRTriple("t", Step(), CostMeter("c", lambda m: m))
    pol = ScheduledPolicy((Proposal("v", 40), Proposal("v", 30), Proposal("v", 200), Proposal("v", 1)))
    with pytest.raises(RuleInputError) as e:
        budgeted_kmr(50, tri, pol, 0, 10)
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert part.model == 30 and part.status is Status.INTERRUPTED and part.cost_final == 30
    assert [(r.value, r.accepted) for r in part.trace] == [(40, True), (30, True)]


def test_error_mid_pipeline_carries_partial_result() -> None:
    """KMR.alg1.error for Algorithm 10: the partial result covers the whole pipeline (global t)."""
    ok = Phase("a", Step(), ScheduledPolicy((Proposal("v", 40),)))
    bad = Phase("b", Step(), ScheduledPolicy((Proposal("v", 20), Proposal("v", 500))))
    with pytest.raises(RuleInputError) as e:
        composed_kmr(50, [ok, bad], CostMeter("c", lambda m: m), 0, 10)
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert part.model == 20 and part.cost_initial == 50
    assert [(r.t, r.value) for r in part.trace] == [(0, 40), (1, 20)]


def test_interrupt_while_a_phase_measures_its_start() -> None:
    """KMR.alg1.interrupt in Algorithm 10: a Ctrl-C while a later phase measures its start model
    keeps the earlier phases' accepted steps (status interrupted, the phase ends at its head)."""
    calls = {"n": 0}

    def cost(m: int) -> int:
        calls["n"] += 1
        # 1: M_0, 2: phase a measures its start, 3: its proposal, 4: phase a measures the model it
        # returns once more (KMR.meter.deterministic), 5: phase b starts
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return m

    a = Phase("a", Step(), ScheduledPolicy((Proposal("v", 40),)))
    b = Phase("b", Step(), ScheduledPolicy((Proposal("v", 20),)))
    out = composed_kmr(50, [a, b], CostMeter("c", cost), 0, 10)
    assert out.result.status is Status.INTERRUPTED and out.result.model == 40
    assert [(p.name, p.status, p.steps) for p in out.phases] == [
        ("a", Status.POLICY_STOP, 1), ("b", Status.INTERRUPTED, 0)]


def test_interrupt_while_merging_a_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """KMR.alg1.interrupt in Algorithm 10: a Ctrl-C while the pipeline records a finished phase
    keeps that phase whole; the next phase is reported interrupted at its loop head."""
    import kmr_ref.core.compose as compose_mod

    real = compose_mod._Acc.merged
    fired = {"n": 0}

    def flaky(self: Any, name: str, res: Any) -> Any:
        if fired["n"] == 0:
            fired["n"] += 1
            raise KeyboardInterrupt
        return real(self, name, res)

    monkeypatch.setattr(compose_mod._Acc, "merged", flaky)
    a = Phase("a", Step(), ScheduledPolicy((Proposal("v", 40), Proposal("v", 30))))
    b = Phase("b", Step(), ScheduledPolicy((Proposal("v", 20),)))
    out = composed_kmr(50, [a, b], CostMeter("c", lambda m: m), 0, 10)
    assert out.result.status is Status.INTERRUPTED and out.result.model == 30
    assert [(r.t, r.value) for r in out.result.trace] == [(0, 40), (1, 30)]
    assert [(p.name, p.status, p.steps) for p in out.phases] == [
        ("a", Status.POLICY_STOP, 2), ("b", Status.INTERRUPTED, 0)]


def test_error_at_a_phase_start_carries_the_pipeline() -> None:
    """KMR.alg1.error for Algorithm 10: an error while phase 2 measures its start model carries
    phase 1's accepted steps as kmr_partial."""
    calls = {"n": 0}

    def quality(m: int) -> float:
        calls["n"] += 1
        if calls["n"] == 4:  # 1: M_0, 2: phase a's start, 3: its proposal, 4: phase b's start
            raise RuntimeError("evaluation failed")
        return 1.0

    a = Phase("a", Step(), ScheduledPolicy((Proposal("v", 40),)))
    b = Phase("b", Step(), ScheduledPolicy((Proposal("v", 20),)))
    with pytest.raises(RuntimeError) as e:
        composed_kmr(50, [a, b], CostMeter("c", lambda m: m), 0, 10, quality=QualityMeter("q", quality))
    part = e.value.kmr_partial  # type: ignore[attr-defined]
    assert part.model == 40 and [(r.t, r.value) for r in part.trace] == [(0, 40)]
