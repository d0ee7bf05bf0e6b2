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


# ---------------------------------------------------------------------------------------------
# Analysis scopes, reusing rules, derivation records (kmr_ref/core/rules.py, meters.py)


class _Obj:
    """A model object that can be weakly referenced; identity is what the core keys on."""


def test_analysis_scope_keys_on_identity_and_nests() -> None:
    """KMR.rule.analysis-scope: outside a block there is no scope; inside, a value put for
    (kind, object) is found for that very object and kind only; nested blocks share the outer
    scope; the scope is gone when the outer block ends, also after an exception."""
    from kmr_ref.core.rules import AnalysisScope, analysis_scope, current_scope

    assert current_scope() is None
    a, b = _Obj(), _Obj()
    with analysis_scope() as s:
        assert isinstance(s, AnalysisScope) and current_scope() is s and len(s) == 0
        assert s.get("k", a) is None
        s.put("k", a, 7)
        assert s.get("k", a) == 7 and s.get("k", b) is None and s.get("other", a) is None and len(s) == 1
        with analysis_scope() as inner:
            assert inner is s and current_scope() is s
        assert current_scope() is s
    assert current_scope() is None
    with pytest.raises(RuntimeError), analysis_scope():
        raise RuntimeError("x")
    assert current_scope() is None
    with analysis_scope() as s2:
        assert s2 is not s and len(s2) == 0


def test_analysis_scope_refuses_a_recycled_id() -> None:
    """KMR.rule.analysis-scope: an entry answers only for the object it was put for, not for
    another object that happens to have the same id()."""
    from kmr_ref.core.rules import AnalysisScope

    s = AnalysisScope()
    a = _Obj()
    s.put("k", a, 1)
    key = ("k", id(a))
    s._memo[key] = (_Obj(), 1)  # as if a had died and its id been reused
    assert s.get("k", a) is None


class _Counting:
    def __init__(self) -> None:
        self.calls: list[tuple[object, str, KnobValue]] = []

    def knobs(self) -> Sequence[Knob]:
        return [Knob("v", IntRange(0, 100)), Knob("w", IntRange(0, 100))]

    def apply(self, model: object, knob: str, value: KnobValue) -> object:
        self.calls.append((model, knob, value))
        return (model, knob, value)


def test_reusing_rule_returns_kept_outputs() -> None:
    """KMR.rule.reuse: the same input object and (k, v) give the output computed before, without
    applying the inner rule again; another input object, another knob or a value of another type
    (1 and True are equal but not the same value) is applied; retain keeps one output, clear none."""
    from kmr_ref.core.rules import ReusingRule, reusing

    inner = _Counting()
    r = reusing(inner)
    assert isinstance(r, ReusingRule) and reusing(r) is r and r.knobs() == inner.knobs()
    a, b = _Obj(), _Obj()
    o1 = r.apply(a, "v", 1)
    assert r.apply(a, "v", 1) is o1 and (r.applied, r.reused, r.held) == (1, 1, 1)
    r.apply(a, "w", 1)
    r.apply(a, "v", True)
    assert (r.applied, r.reused, r.held) == (3, 1, 3)
    r.retain(a, "v", 1)
    assert r.held == 1 and r.apply(a, "v", 1) is o1 and r.reused == 2
    r.retain(a, "w", 1)  # not kept: everything is dropped
    assert r.held == 0
    o2 = r.apply(a, "v", 1)
    assert o2 == o1 and o2 is not o1 and r.applied == 4
    r.apply(b, "v", 2)  # another input: the outputs of a are dropped
    assert r.held == 1
    r.retain(a, "v", 2)  # a is not the latest input: drops all
    assert r.held == 0
    r.apply(b, "v", 2)  # applied again (6)
    r.clear()
    assert r.held == 0 and r.apply(b, "v", 2) == (b, "v", 2) and r.applied == 7
    assert [c[1:] for c in inner.calls] == [("v", 1), ("w", 1), ("v", True), ("v", 1), ("v", 2), ("v", 2), ("v", 2)]


def test_reusing_rule_keeps_nothing_on_failure() -> None:
    """KMR.rule.reuse: a failing application keeps nothing (the next call applies again)."""
    from kmr_ref.core.rules import reusing

    class Flaky(_Counting):
        def apply(self, model: object, knob: str, value: KnobValue) -> object:
            super().apply(model, knob, value)
            if len(self.calls) == 1:
                raise RuleInputError("KMR.rule.domain-error", "first call fails")
            return "ok"

    inner = Flaky()
    r = reusing(inner)
    a = _Obj()
    with pytest.raises(RuleInputError):
        r.apply(a, "v", 1)
    assert r.held == 0 and r.applied == 0
    assert r.apply(a, "v", 1) == "ok" and len(inner.calls) == 2 and r.applied == 1


def test_derivation_records() -> None:
    """KMR.meter.delta: a recorded derivation gives (parent, changed names) while both live; it
    vanishes with the child, is None once the parent is gone, and a model that cannot be weakly
    referenced gets no record."""
    import gc

    from kmr_ref.core.meters import _DERIVED, derivation, record_derivation

    parent, child = _Obj(), _Obj()
    assert derivation(child) is None
    record_derivation(child, parent, ["a.weight", "b.weight"])
    assert derivation(child) == (parent, frozenset({"a.weight", "b.weight"}))
    assert derivation(parent) is None
    other = _Obj()
    record_derivation(other, child, [])
    assert derivation(other) == (child, frozenset())
    n = len(_DERIVED)
    del other
    gc.collect()
    assert len(_DERIVED) == n - 1  # the record went with its child
    p2 = _Obj()
    record_derivation(child, p2, ["x"])  # a newer record replaces the older
    assert derivation(child) == (p2, frozenset({"x"}))
    del p2
    gc.collect()
    assert derivation(child) is None
    record_derivation(5, parent, ["x"])
    record_derivation((1, 2), parent, ["x"])
    assert derivation(5) is None and derivation((1, 2)) is None


def test_interrupt_while_merging_the_last_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """KMR.alg1.interrupt KMR.alg10.status: a Ctrl-C while the pipeline records its *last* phase
    (ended by its policy above the budget, steps left) keeps that phase whole; no phase would run
    next, so the pipeline ends as that phase did (policy-stop) and no outcome is invented for a
    next phase."""
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
    out = composed_kmr(50, [a], CostMeter("c", lambda m: m), 0, 10)
    assert out.result.status is Status.POLICY_STOP and out.result.model == 30
    assert [(r.t, r.value) for r in out.result.trace] == [(0, 40), (1, 30)]
    assert [(p.name, p.status, p.steps) for p in out.phases] == [("a", Status.POLICY_STOP, 2)]
