"""Exhaustive small-world checking of the *code* of Algorithm 1 and Algorithm 10.

Every *table world* up to a stated bound (``Bound``) is enumerated — initial cost, budget, step
limit, the proposals of every phase, and the fault (an interrupt or an error, and at which call
it strikes) — not sampled. Each world is run through ``kmr_ref.core.budgeted_kmr`` (one phase)
or ``kmr_ref.core.composed_kmr`` (any number of phases) and checked four ways:

1. against an **independent interpreter** of the spec boxes (``spec/kmr.md`` §7, §9) written here
   from the spec text, not from the code: the returned model (identity: the model carries its
   history), status, every trace record, final cost and quality, the phase outcomes and
   **what the policy was shown** at every call (model, cost, quality, t, B, history);
2. with faults, against the fault-free run: the result (or the ``kmr_partial`` on the
   exception, ``KMR.alg1.error``) holds exactly the records streamed to ``on_record`` before
   the fault, they are a prefix of the fault-free trace, and the model, cost and quality are
   those of the last accepted record (``KMR.alg1.interrupt``: nothing accepted is lost);
3. Proposition 1 (P1a–P1e, ``KMR.prop1.*`` / ``KMR.alg10.prop1``) on the result;
4. through the **transition relation** of the Z3 encoding (``replay.replay`` /
   ``replay10.replay``): every run must be a legal trace. Replays are memoized on the observation
   they check (costs, records, statuses), so each distinct observation is solved once.

The toy method: a model is ``Toy(cost, path)`` — its cost and the proposals applied to reach it
(so a model started from the wrong place, or a rejected proposal kept, is a different model even
at equal cost); knob ``delta`` adds to the cost (floored at 0); the cost meter reads ``cost``,
the quality meter is a function of the path. The policy of each phase proposes its table in call
order (not by ``state.t``, so a wrong ``t`` shows in what the policy was shown) and then Stop.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kmr_ref.core import (
    ComposedResult,
    CostMeter,
    IntRange,
    KMRResult,
    Knob,
    KnobDomainError,
    KnobValue,
    MeterError,
    Phase,
    Policy,
    PolicyState,
    Proposal,
    QualityMeter,
    RuleInputError,
    Status,
    StepRecord,
    Stop,
)

FAULT_KINDS = ("ki-policy", "ki-record", "ki-rule", "ki-cost", "err-policy", "err-knob", "err-rule",
               "err-cost", "err-quality")
KNOB_LIMIT = 3  # the delta knob's domain is -3..3; err-knob proposes 99


@dataclass(frozen=True)
class Toy:
    cost: int
    path: tuple[tuple[int, int], ...] = ()  # (phase, delta) of every proposal applied to reach it


@dataclass(frozen=True)
class Fault:
    kind: str = "none"  # "none" or one of FAULT_KINDS
    at: int = 0  # the at-th call of that kind in the run (pipeline-wide), 0-based


@dataclass(frozen=True)
class World:
    """One table world. ``phases is None``: Algorithm 1 with ``phases_or_one[0]``; else Algorithm 10."""

    c0: int
    budget: int
    n: int
    tables: tuple[tuple[int, ...], ...]  # the proposals (deltas) of each phase, in call order
    fault: Fault = Fault()
    composed: bool = False
    quality: bool = True


def quality_of(m: Toy) -> float:
    """The quality meter of the toy method: deterministic in the model, finite."""
    return len(m.path) / 4 - m.cost / 8 + sum(d for _, d in m.path) / 16


def step_model(m: Toy, phase: int, d: int) -> Toy:
    return Toy(max(0, m.cost + d), (*m.path, (phase, d)))


# ---------------------------------------------------------------- the independent interpreter

@dataclass
class Expected:
    status: Status
    model: Toy
    records: list[tuple[int, int, int, int, bool, float | None]]  # t, delta, before, after, accepted, q
    shown: list[tuple[Toy, int, float | None, int, int]]  # model, cost, quality, t, len(history)
    phases: list[tuple[int, Status, int]] = field(default_factory=list)  # phase, status, records


def interpret(w: World) -> Expected:
    """Algorithm 1 (``spec/kmr.md`` §7) or Algorithm 10 (§9), fault-free, from the spec boxes."""
    q: Callable[[Toy], float | None] = quality_of if w.quality else (lambda m: None)
    records: list[tuple[int, int, int, int, bool, float | None]] = []
    shown: list[tuple[Toy, int, float | None, int, int]] = []

    def alg1(m: Toy, k: int, limit: int, t_off: int) -> tuple[Toy, Status, int]:
        c, t, calls, first = m.cost, 0, 0, len(records)  # line 1
        status: Status | None = None
        while c > w.budget:  # line 2
            if t == limit:  # line 3
                status = Status.STEP_LIMIT
                break
            shown.append((m, c, q(m), t, len(records) - first))  # line 4: the phase's own trace
            if calls >= len(w.tables[k]):  # line 5
                status = Status.POLICY_STOP
                break
            d = w.tables[k][calls]
            calls += 1
            m2 = step_model(m, k, d)  # line 7
            c2 = m2.cost  # line 8
            if c2 < c:  # line 9-10
                records.append((t + t_off, d, c, c2, True, q(m2)))
                m, c = m2, c2
            else:  # line 11
                records.append((t + t_off, d, c, c2, False, q(m2)))
                status = Status.STALLED
                break
            t += 1  # line 12
        if c <= w.budget:  # line 13
            status = Status.FEASIBLE
        assert status is not None
        return m, status, t

    m0 = Toy(w.c0)
    if not w.composed:
        m, s, _ = alg1(m0, 0, w.n, 0)
        return Expected(s, m, records, shown)
    m, used, ran = m0, 0, []  # §9 line 1
    last: Status | None = None
    for k in range(len(w.tables)):  # line 2
        if m.cost <= w.budget or used == w.n:  # line 3
            break
        start = len(records)
        m, s, acc = alg1(m, k, w.n - used, used)  # lines 4-5
        used += acc  # line 6
        ran.append((k, s, len(records) - start))
        last = s  # line 7: stalled / policy-stop end the phase only
    if m.cost <= w.budget:  # line 8
        status = Status.FEASIBLE
    elif used == w.n:
        status = Status.STEP_LIMIT
    else:
        status = last if last is not None else Status.POLICY_STOP
    return Expected(status, m, records, shown, ran)


# ---------------------------------------------------------------- running the code

class _Injected(Exception):
    """An error a callback raises on purpose (``err-policy``): must propagate unchanged."""


@dataclass
class Run:
    """What one run of the code did: its result (or the exception and its partial result), the
    records streamed to ``on_record`` and the states the policy was shown."""

    result: KMRResult[Toy] | None
    composed: ComposedResult[Toy] | None
    error: BaseException | None
    streamed: list[StepRecord]
    shown: list[tuple[Toy, int, float | None, int, int]]
    fired: bool  # the fault struck


def run_code(w: World, impl: Any = None, tracer: Callable[[], Any] | None = None) -> Run:
    """Run ``w`` through ``budgeted_kmr`` / ``composed_kmr`` (or ``impl``, a module holding them)."""
    from kmr_ref.core import budgeted as _b
    from kmr_ref.core import compose as _c

    counts = dict.fromkeys(FAULT_KINDS, 0)
    fired = [False]

    def strike(kind: str) -> bool:
        if w.fault.kind != kind:
            return False
        n = counts[kind]
        counts[kind] = n + 1
        if n == w.fault.at and not fired[0]:
            fired[0] = True
            return True
        return False

    class Rule:
        def __init__(self, k: int) -> None:
            self.k = k

        def knobs(self) -> Sequence[Knob]:
            return (Knob("delta", IntRange(-KNOB_LIMIT, KNOB_LIMIT)),)

        def apply(self, model: Toy, knob: str, value: KnobValue) -> Toy:
            if strike("ki-rule"):
                raise KeyboardInterrupt
            if strike("err-rule"):
                raise RuleInputError("KMR.rule.domain-error", "injected")
            assert isinstance(value, int) and knob == "delta"
            return step_model(model, self.k, value)

    def cost_fn(m: Toy) -> Any:
        if strike("ki-cost"):
            raise KeyboardInterrupt
        if strike("err-cost"):
            return 0.5  # a float: the CostMeter refuses it (KMR.meter.cost-exact)
        return m.cost

    def quality_fn(m: Toy) -> float:
        if strike("err-quality"):
            return float("nan")  # refused by the QualityMeter (KMR.meter.quality)
        return quality_of(m)

    shown: list[tuple[Toy, int, float | None, int, int]] = []

    def policy_for(k: int) -> Policy[Toy]:
        calls = [0]

        def policy(state: PolicyState[Toy]) -> Proposal | Stop:
            st = state
            shown.append((st.model, int(st.cost), st.quality, st.t, len(st.history)))
            assert st.budget == w.budget, "KMR.policy.state: the budget shown"
            if strike("ki-policy"):
                raise KeyboardInterrupt
            if strike("err-policy"):
                raise _Injected("policy failed")
            j = calls[0]
            calls[0] += 1
            if j >= len(w.tables[k]):
                return Stop("table exhausted")
            if strike("err-knob"):
                return Proposal("delta", 99)  # outside the domain: KnobDomainError
            return Proposal("delta", w.tables[k][j])

        return policy

    streamed: list[StepRecord] = []

    def on_rec1(r: StepRecord) -> None:
        streamed.append(r)
        if strike("ki-record"):
            raise KeyboardInterrupt

    def on_rec10(name: str, r: StepRecord) -> None:
        on_rec1(r)

    budgeted = impl.budgeted_kmr if impl is not None and hasattr(impl, "budgeted_kmr") else _b.budgeted_kmr
    composed = impl.composed_kmr if impl is not None and hasattr(impl, "composed_kmr") else _c.composed_kmr
    cost = CostMeter("toy-cost", cost_fn)
    quality = QualityMeter("toy-quality", quality_fn) if w.quality else None
    res: KMRResult[Toy] | None = None
    comp: ComposedResult[Toy] | None = None
    err: BaseException | None = None
    import sys

    stop = tracer() if tracer is not None else None
    try:
        if w.composed:
            phases = [Phase(f"p{k}", Rule(k), policy_for(k)) for k in range(len(w.tables))]
            comp = composed(Toy(w.c0), phases, cost, w.budget, w.n, quality=quality, on_record=on_rec10)
            res = comp.result
        else:
            from kmr_ref.core import KMRTriple

            tri = KMRTriple("toy", Rule(0), cost, quality)
            res = budgeted(Toy(w.c0), tri, policy_for(0), w.budget, w.n, on_record=on_rec1)
    except BaseException as e:
        err = e
    finally:
        if stop is not None:
            sys.settrace(None)
    return Run(res, comp, err, streamed, shown, fired[0])


# ---------------------------------------------------------------- checks

class Violation(AssertionError):
    """A world the code gets wrong; the message names the world and the clause."""


def _check(ok: bool, clause: str, w: World, what: str) -> None:
    if not ok:
        raise Violation(f"[{clause}] {what}; world {w}")


def _recs(trace: Sequence[StepRecord]) -> list[tuple[int, int, int, int, bool, float | None]]:
    return [(r.t, int(r.value), int(r.cost_before), int(r.cost_after), r.accepted, r.quality)
            for r in trace]


def check_prop1(w: World, res: KMRResult[Toy], phases: Sequence[tuple[Status, int]] | None) -> None:
    """P1a-P1e (``KMR.prop1.*``; for a pipeline ``KMR.alg10.prop1``) on one result."""
    c = "KMR.alg10.prop1" if w.composed else "KMR.prop1"
    acc = [r for r in res.trace if r.accepted]
    prev = res.cost_initial
    _check(res.cost_initial == w.c0, f"{c}.monotone" if not w.composed else c, w, "initial cost")
    for r in acc:
        _check(r.cost_before == prev and r.cost_after < prev, f"{c}.monotone" if not w.composed else c, w,
               f"accepted record {r} does not strictly lower the last accepted cost {prev}")
        prev = r.cost_after
    _check(len(acc) <= w.n, f"{c}.termination" if not w.composed else c, w, f"{len(acc)} accepted > N = {w.n}")
    _check([r.t for r in res.trace if r.accepted] == list(range(len(acc))),
           f"{c}.termination" if not w.composed else c, w, "t of the accepted records")
    _check((res.status == Status.FEASIBLE) == (res.cost_final <= w.budget),
           f"{c}.status-truthful" if not w.composed else c, w, f"status {res.status} vs cost {res.cost_final}")
    if res.status == Status.STEP_LIMIT:
        _check(len(acc) == w.n and res.cost_final > w.budget, f"{c}.status-truthful" if not w.composed else c,
               w, "step-limit without N accepted")
    if res.status == Status.STALLED:
        last = res.trace[-1] if res.trace else None
        _check(last is not None and not last.accepted and last.cost_after >= last.cost_before == res.cost_final,
               f"{c}.status-truthful" if not w.composed else c, w, "stalled without a last rejected record")
    if res.status == Status.POLICY_STOP:
        _check(res.cost_final > w.budget and (not res.trace or res.trace[-1].accepted or w.composed),
               f"{c}.status-truthful" if not w.composed else c, w, "policy-stop with a rejected record last")
    _check(len(acc) <= w.c0 - res.cost_final, f"{c}.integer-bound" if not w.composed else c, w,
           "accepted steps > C(M_0) - C(M_out)")
    last_cost = acc[-1].cost_after if acc else w.c0
    _check(res.cost_final == last_cost == res.model.cost, f"{c}.last-accepted" if not w.composed else c, w,
           f"final cost {res.cost_final}, model cost {res.model.cost}, last accepted {last_cost}")
    # rejected records: at most one per phase, each the last record of its phase
    spans = [s for _, s in phases] if phases is not None else [len(res.trace)]
    j = 0
    for n in spans:
        part = res.trace[j:j + n]
        _check(all(r.accepted for r in part[:-1]), f"{c}.status-truthful" if not w.composed else c, w,
               "a record after a rejected record in its phase")
        j += n
    _check(j == len(res.trace), "KMR.alg10.phase-trace", w, "phase record counts do not add up")


def _path_model(w: World, trace: Sequence[StepRecord], phases: Sequence[int]) -> Toy:
    """The model of the last accepted record (M_0 if none), rebuilt from the trace."""
    m = Toy(w.c0)
    for r, k in zip(trace, phases, strict=True):
        if r.accepted:
            m = step_model(m, k, int(r.value))
    return m


def _phase_of_records(w: World, run: Run, res: KMRResult[Toy]) -> list[int]:
    if run.composed is not None:
        return [int(n[1:]) for n in run.composed.phase_of_record]
    if not w.composed:
        return [0] * len(res.trace)
    return _phases_of_partial(w, res)


def _phases_of_partial(w: World, res: KMRResult[Toy]) -> list[int]:
    """Phases of a partial pipeline result: re-run the interpreter and tag records by position."""
    exp = interpret(dataclasses.replace(w, fault=Fault()))
    tags = [k for k, _, n in exp.phases for _ in range(n)]
    return tags[:len(res.trace)]


def check_run(w: World, run: Run, exp: Expected) -> None:
    """Checks 1-3 of the module docstring on one run of world ``w``."""
    if w.fault.kind == "none":
        _check(run.error is None, "KMR.alg1.return", w, f"fault-free run raised {run.error!r}")
        assert run.result is not None
        res = run.result
        _check(res.status == exp.status, "KMR.alg10.status" if w.composed else "KMR.alg1.status", w,
               f"status {res.status}, expected {exp.status}")
        _check(_recs(res.trace) == exp.records, "KMR.alg10.phase-trace" if w.composed else "KMR.trace.record", w,
               f"trace {_recs(res.trace)}, expected {exp.records}")
        _check(res.model == exp.model, "KMR.alg10.return" if w.composed else "KMR.alg1.return", w,
               f"model {res.model}, expected {exp.model}")
        _check(run.shown == exp.shown, "KMR.policy.state", w, f"policy shown {run.shown}, expected {exp.shown}")
        _check(run.streamed == list(res.trace), "KMR.trace.record", w, "streamed records differ from the trace")
        if run.composed is not None:
            got = [(int(p.name[1:]), p.status, p.steps) for p in run.composed.phases]
            _check(got == exp.phases, "KMR.alg10.phase-break", w, f"phases {got}, expected {exp.phases}")
        q = quality_of if w.quality else (lambda m: None)
        _check(res.quality_final == q(res.model) and res.quality_initial == q(Toy(w.c0)), "KMR.alg1.return", w,
               "final or initial quality is not the quality of the model")
        check_prop1(w, res, None if run.composed is None else
                    [(p.status, p.steps) for p in run.composed.phases])
        return
    # a fault: the result (or partial) keeps exactly what was streamed, a prefix of the clean run
    part: KMRResult[Toy] | None = run.result
    if run.error is not None:
        e = run.error
        if isinstance(e, KeyboardInterrupt) and getattr(e, "kmr_partial", None) is None:
            # only an interrupt before the loop (the initial measurement) may escape bare
            _check(not run.streamed and not run.shown, "KMR.alg1.after-loop", w,
                   f"KeyboardInterrupt escaped after {len(run.streamed)} records")
            return
        _check(isinstance(e, (KeyboardInterrupt, _Injected, MeterError, RuleInputError, KnobDomainError)),
               "KMR.alg1.error", w, f"the error changed type: {e!r}")
        part = getattr(e, "kmr_partial", None)
        if part is None:
            _check(not run.streamed and not run.shown, "KMR.alg1.error", w,
                   f"error after {len(run.streamed)} records carries no kmr_partial")
            return
        _check(isinstance(part, KMRResult) and part.status == (
            Status.FEASIBLE if part.cost_final <= w.budget else Status.INTERRUPTED), "KMR.alg1.error", w,
               f"kmr_partial {part!r}")
    assert part is not None
    _check(run.fired or w.fault.kind == "none" or run.error is None, "KMR.alg1.error", w, "error without fault")
    if run.error is None and not run.fired:
        # the fault never struck (e.g. the 3rd rule call of a run with two): the clean result
        check_run(dataclasses.replace(w, fault=Fault()), run, exp)
        return
    _check(list(part.trace) == run.streamed, "KMR.alg1.interrupt", w,
           f"records {_recs(part.trace)} but {_recs(run.streamed)} were streamed before the fault")
    _check(_recs(part.trace) == exp.records[:len(part.trace)], "KMR.alg1.interrupt", w,
           "the trace is not a prefix of the fault-free trace")
    _check(run.shown == exp.shown[:len(run.shown)], "KMR.policy.state", w, "policy shown differs")
    tags = _phase_of_records(w, run, part)
    m_exp = _path_model(w, part.trace, tags)
    _check(part.model == m_exp, "KMR.alg1.interrupt", w, f"model {part.model}, last accepted {m_exp}")
    q = quality_of if w.quality else (lambda m: None)
    _check(part.cost_final == m_exp.cost and part.quality_final == q(m_exp), "KMR.prop1.last-accepted", w,
           f"final cost/quality {part.cost_final}/{part.quality_final} of model {m_exp}")
    if run.error is None:
        _check(part.status in (Status.INTERRUPTED, Status.FEASIBLE) or not w.fault.kind.startswith("ki-")
               or not run.fired, "KMR.alg1.interrupt", w, f"interrupted run reported {part.status}")
        if part.status == Status.FEASIBLE:
            _check(part.cost_final <= w.budget, "KMR.alg1.feasible", w, "feasible above the budget")
        elif part.status == Status.INTERRUPTED:
            _check(part.cost_final > w.budget, "KMR.alg1.feasible", w, "interrupted at or below the budget")
        check_prop1(w, part, None if run.composed is None else
                    [(p.status, p.steps) for p in run.composed.phases])


# ---------------------------------------------------------------- replay through the encoding

_REPLAYED: dict[tuple[Any, ...], bool] = {}


def _obs_key(res: KMRResult[Any], w: World, comp: ComposedResult[Any] | None) -> tuple[Any, ...]:
    recs = tuple((r.t, r.cost_before, r.cost_after, r.accepted) for r in res.trace)
    ph = tuple((p.status, p.steps) for p in comp.phases) if comp is not None else None
    return (w.composed, len(w.tables) if w.composed else 1, w.n, w.budget, res.cost_initial,
            res.cost_final, res.status, recs, ph)


def replay_run(w: World, run: Run) -> bool:
    """Check 4: the run is a legal run of the encoding (memoized on the observation)."""
    from kmr_proofs import replay as r1
    from kmr_proofs import replay10 as r10

    if run.result is None:  # a partial result: Algorithm 1's replays as an interrupt at that point
        part = getattr(run.error, "kmr_partial", None)
        if part is None or w.composed:
            return True  # no result (escaped before the loop), or a pipeline partial (no phases)
        res, comp = part, None
    else:
        res, comp = run.result, run.composed
    key = _obs_key(res, w, comp)
    if key not in _REPLAYED:
        v = r10.replay(comp, w.n, len(w.tables)) if comp is not None else r1.replay(res, w.n)
        _REPLAYED[key] = v.legal
        if not v.legal:
            raise Violation(f"[KMR.trace.record] not a run of the encoding ({v.failed_at}); world {w}")
    if not _REPLAYED[key]:
        raise Violation(f"[KMR.trace.record] not a run of the encoding; world {w}")
    return True


# ---------------------------------------------------------------- the worlds

@dataclass(frozen=True)
class Bound:
    """The size of the enumerated space (every combination is one world)."""

    costs: tuple[int, ...] = (0, 1, 2, 3)  # C(M_0)
    budgets: tuple[int, ...] = (0, 1, 2)
    steps: tuple[int, ...] = (0, 1, 2, 3)  # N
    deltas: tuple[int, ...] = (-2, -1, 0, 1)  # each proposal
    max_proposals: int = 3  # per phase
    max_phases: int = 0  # 0: Algorithm 1 only
    fault_calls: tuple[int, ...] = (0, 1, 2)  # the call at which a fault strikes
    fault_kinds: tuple[str, ...] = FAULT_KINDS


def tables(b: Bound) -> list[tuple[int, ...]]:
    return [t for n in range(b.max_proposals + 1) for t in itertools.product(b.deltas, repeat=n)]


def worlds(b: Bound, composed: bool) -> Iterator[World]:
    faults = [Fault()] + [Fault(k, a) for k in b.fault_kinds for a in b.fault_calls]
    phase_sets: list[tuple[tuple[int, ...], ...]]
    if composed:
        phase_sets = [ps for p in range(b.max_phases + 1) for ps in itertools.product(tables(b), repeat=p)]
    else:
        phase_sets = [(t,) for t in tables(b)]
    for c0, bud, n, ps, f in itertools.product(b.costs, b.budgets, b.steps, phase_sets, faults):
        yield World(c0, bud, n, ps, f, composed, quality=(c0 + n) % 2 == 0 or f.kind == "err-quality")


def count(b: Bound, composed: bool) -> int:
    nt = len(tables(b))
    nphases = sum(nt ** p for p in range(b.max_phases + 1)) if composed else nt
    return (len(b.costs) * len(b.budgets) * len(b.steps) * nphases
            * (1 + len(b.fault_kinds) * len(b.fault_calls)))


# the default bounds (``make test``) and the large ones (``make exhaustive``)
ALG1_SMALL = Bound()
ALG10_SMALL = Bound(costs=(1, 3), budgets=(0, 1), steps=(0, 1, 2, 3), deltas=(-2, -1, 0), max_proposals=2,
                    max_phases=2, fault_calls=(0, 2), fault_kinds=("ki-policy", "ki-record", "ki-cost", "err-rule",
                                                                    "err-cost"))
ALG1_LARGE = Bound(costs=(0, 1, 2, 3, 4), budgets=(-1, 0, 1, 2, 3), steps=(0, 1, 2, 3, 4),
                   deltas=(-2, -1, 0, 1), max_proposals=4, fault_calls=(0, 1, 2, 3))
ALG10_LARGE = Bound(costs=(1, 2, 4), budgets=(0, 1), steps=(0, 1, 2, 3, 4), deltas=(-2, -1, 0), max_proposals=2,
                    max_phases=3, fault_calls=(0, 2))


@dataclass
class Summary:
    worlds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    faults_struck: int = 0
    replays: int = 0  # distinct observations solved by Z3
    sampled: int = 0  # random worlds beyond the bound (seeded)

    def line(self) -> str:
        mix = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return (f"{self.worlds} worlds ({self.faults_struck} with a fault that struck; {mix}); "
                f"{self.replays} distinct observations replayed through the encoding")


def check_world(w: World, impl: Any = None, replay: bool = True) -> Run:
    run = run_code(w, impl)
    check_run(w, run, interpret(dataclasses.replace(w, fault=Fault())))
    if replay:
        replay_run(w, run)
    return run


def check_all(b: Bound, composed: bool, *, impl: Any = None, replay: bool = True,
              sample: int = 0, seed: int = 0, stop_first: bool = True) -> Summary:
    """Every world of ``b`` (and ``sample`` random worlds of a bound one larger, seeded)."""
    s = Summary()
    before = len(_REPLAYED)
    extra: list[World] = []
    if sample:
        rng = random.Random(seed)
        big = dataclasses.replace(b, costs=(*b.costs, max(b.costs) + 2), steps=(*b.steps, max(b.steps) + 1),
                                  max_proposals=b.max_proposals + 1, max_phases=b.max_phases + (1 if composed else 0))
        for _ in range(sample):
            p = rng.randint(0, big.max_phases) if composed else 1
            ts_ = tuple(tuple(rng.choice(big.deltas) for _ in range(rng.randint(0, big.max_proposals)))
                        for _ in range(p))
            kind = rng.choice(("none", *big.fault_kinds))
            extra.append(World(rng.choice(big.costs), rng.choice(big.budgets), rng.choice(big.steps), ts_,
                               Fault(kind, rng.randint(0, 3)), composed, rng.random() < 0.5))
    for w in itertools.chain(worlds(b, composed), extra):
        run = check_world(w, impl, replay)
        s.worlds += 1
        s.faults_struck += run.fired
        res = run.result if run.result is not None else getattr(run.error, "kmr_partial", None)
        st = str(res.status) if res is not None else "no-result"
        s.statuses[st] = s.statuses.get(st, 0) + 1
    s.sampled = len(extra)
    s.replays = len(_REPLAYED) - before
    return s


# ---------------------------------------------------------------- command line

PROFILES: dict[str, tuple[Bound, Bound]] = {
    "small": (ALG1_SMALL, ALG10_SMALL),
    "large": (ALG1_LARGE, ALG10_LARGE),
}


def main(argv: list[str] | None = None) -> int:
    """``python -m kmr_proofs.exhaustive [small|large] [--no-replay] [--sample N] [--seed S]``:
    exit 0 when every world passes, 3 on the first violation (printed)."""
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="python -m kmr_proofs.exhaustive")
    ap.add_argument("profile", nargs="?", default="small", choices=sorted(PROFILES))
    ap.add_argument("--no-replay", action="store_true", help="skip the Z3 replay (check 4)")
    ap.add_argument("--sample", type=int, default=0, help="random worlds beyond the bound, per algorithm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--everywhere", action="store_true", help="also raise at every line (sys.settrace)")
    a = ap.parse_args(argv)
    b1, b10 = PROFILES[a.profile]
    t0 = time.perf_counter()
    try:
        for name, b, comp in (("Algorithm 1", b1, False), ("Algorithm 10", b10, True)):
            t = time.perf_counter()
            s = check_all(b, comp, replay=not a.no_replay, sample=a.sample, seed=a.seed)
            print(f"{name}: {s.line()}; {s.sampled} sampled beyond the bound (seed {a.seed}); "
                  f"{time.perf_counter() - t:.1f} s")
        if a.everywhere:
            from kmr_proofs import everywhere

            for mode in everywhere.MODES:
                ta = everywhere.check_all(mode)
                print(f"{mode} at every line: {ta.points} points, {ta.handled} handled, {ta.escaped} outside a try")
    except Violation as e:
        print(f"VIOLATION {e}")
        return 3
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    import sys as _sys

    _sys.exit(main())
