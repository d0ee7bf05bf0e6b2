"""Exhaustive small-world checking of the code of Algorithm 1 and Algorithm 10
(``proofs/kmr_proofs/exhaustive.py``, ``everywhere.py``; bounds in ``proofs/README.md``).

Default bounds (``make test``): every world below is run through ``budgeted_kmr`` /
``composed_kmr`` and compared with an independent interpreter of the spec boxes (model, status,
trace, quality, what the policy was shown, phase outcomes), checked under every fault against
the fault-free run, and checked for Proposition 1; distinct observations are replayed through
the Z3 transition relation. ``make exhaustive`` runs the large bounds. A sample of worlds beyond
the bound is drawn from a seed that changes from run to run (``KMR_EXHAUSTIVE_SEED`` fixes it;
the seed is in every failure message).
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from kmr_proofs import everywhere
from kmr_proofs import exhaustive as ex

SEED = int(os.environ.get("KMR_EXHAUSTIVE_SEED", str(int(time.time()) % 100_000)))

# the default bounds: Algorithm 1 over 38 760 worlds, Algorithm 10 over 20 496 (counted below)
ALG1 = dataclasses.replace(ex.ALG1_SMALL, costs=(0, 1, 3), budgets=(0, 1), fault_calls=(0, 1))
ALG10 = dataclasses.replace(ex.ALG10_SMALL, fault_kinds=("ki-policy", "ki-record", "err-rule"))
# replayed through the Algorithm 10 encoding (Z3, ~0.2 s per distinct observation): a sub-bound
ALG10_REPLAY = dataclasses.replace(ALG10, costs=(3,), budgets=(1,), steps=(1, 2, 3), fault_kinds=("ki-record",),
                                   fault_calls=(0,))
N1, N10, NR = 38760, 20496, 1098
# KMR_EXHAUSTIVE_QUICK=1 (the mutation run, `make mutation`, where each mutant reruns these
# tests): smaller bounds, the same checks, no Z3 replay
QUICK = os.environ.get("KMR_EXHAUSTIVE_QUICK") == "1"
if QUICK:
    ALG1 = dataclasses.replace(ALG1, max_proposals=2)
    ALG10 = dataclasses.replace(ALG10, steps=(0, 1, 2), fault_calls=(0,))
    ALG10_REPLAY = dataclasses.replace(ALG10_REPLAY, steps=(2,), max_phases=1)
    N1, N10, NR = ex.count(ALG1, False), ex.count(ALG10, True), ex.count(ALG10_REPLAY, True)


def test_world_counts_are_stated() -> None:
    """The bounds are what proofs/README.md states."""
    assert (ex.count(ALG1, False), ex.count(ALG10, True), ex.count(ALG10_REPLAY, True)) == (N1, N10, NR)
    assert QUICK or (N1, N10, NR) == (38760, 20496, 1098)
    assert sum(1 for _ in ex.worlds(ALG10_REPLAY, True)) == NR


def test_alg1_every_small_world() -> None:
    """KMR.alg1.init KMR.alg1.loop-guard KMR.alg1.step-limit KMR.alg1.propose KMR.alg1.policy-stop
    KMR.alg1.apply KMR.alg1.measure KMR.alg1.strict-progress KMR.alg1.accept KMR.alg1.early-break
    KMR.alg1.step KMR.alg1.feasible KMR.alg1.return KMR.alg1.interrupt KMR.alg1.error
    KMR.policy.state KMR.prop1.monotone KMR.prop1.termination KMR.prop1.status-truthful
    KMR.prop1.integer-bound KMR.prop1.last-accepted: every world of the bound, and every run is a
    legal run of the encoding."""
    s = ex.check_all(ALG1, False, replay=not QUICK, sample=300, seed=SEED)
    assert s.worlds == N1 + 300, (s.line(), SEED)
    assert set(s.statuses) >= {"feasible", "stalled", "step-limit", "policy-stop", "interrupted"}
    assert s.faults_struck > (1000 if QUICK else 10000)


def test_alg10_every_small_world() -> None:
    """KMR.alg10.init KMR.alg10.phases KMR.alg10.skip KMR.alg10.shared-cost KMR.alg10.phase-run
    KMR.alg10.phase-trace KMR.alg10.phase-break KMR.alg10.status KMR.alg10.return KMR.alg10.prop1:
    every pipeline world of the bound against the interpreter of §9, faults and Proposition 1."""
    s = ex.check_all(ALG10, True, replay=False, sample=300, seed=SEED)
    assert s.worlds == N10 + 300, (s.line(), SEED)
    assert set(s.statuses) >= {"feasible", "stalled", "step-limit", "policy-stop", "interrupted"}


def test_alg10_small_worlds_replayed_through_the_encoding() -> None:
    """KMR.alg10.phase-trace: every run of the replay sub-bound is a legal run of alg10.py."""
    s = ex.check_all(ALG10_REPLAY, True, replay=not QUICK)
    assert s.worlds == NR and (QUICK or s.replays > 10), s.line()


@pytest.mark.parametrize("mode", ["interrupt", "error", "foreign"])
def test_raise_at_every_line(mode: str) -> None:
    """KMR.alg1.interrupt KMR.alg1.error KMR.alg1.after-loop KMR.alg10.phase-break KMR.alg10.status:
    an interrupt (or an error, or an error that already carries another run's partial) raised by
    sys.settrace before every line budgeted.py and compose.py execute on worlds that reach every
    branch: never escapes the loop's try, keeps every streamed record, returns the last accepted
    model with its cost and quality, C(M_0), Q(M_0) and B (the interrupt-reconcile branch is what
    makes this hold); a partial's status is what an interrupt there gives, a pipeline's phases and
    status are exactly those KMR.alg10.phase-break and KMR.alg10.status prescribe."""
    t = everywhere.check_all(mode, replay=not QUICK)
    assert t.points > 500 and t.handled > 400, t


def test_interpreter_is_not_vacuous() -> None:
    """The interpreter and the checks reject wrong results: a model, a status, a record and what
    the policy was shown, each altered, are each refused."""
    w = ex.World(5, 1, 3, ((-1, -2, 0),))
    run = ex.run_code(w)
    exp = ex.interpret(w)
    ex.check_run(w, run, exp)
    assert run.result is not None
    bad = [
        dataclasses.replace(run, result=dataclasses.replace(run.result, model=ex.Toy(2))),
        dataclasses.replace(run, result=dataclasses.replace(run.result, status=ex.Status.POLICY_STOP)),
        dataclasses.replace(run, result=dataclasses.replace(run.result, trace=run.result.trace[:-1])),
        dataclasses.replace(run, shown=run.shown[:-1]),
        dataclasses.replace(run, result=dataclasses.replace(run.result, quality_final=0.0)),
    ]
    for b in bad:
        with pytest.raises(ex.Violation):
            ex.check_run(w, b, exp)


def test_guarded_points_cover_both_loops() -> None:
    """The every-line check knows where an interrupt must not escape: the try bodies whose handler
    stops a KeyboardInterrupt. They hold Algorithm 1's policy call and Algorithm 10's call of a
    phase, and not the set-up before either loop (whose handlers re-raise), so a change in how the
    handlers are written cannot silently turn the check off."""
    import linecache

    from kmr_ref.core import budgeted, compose

    tg = everywhere.target()

    def lines(mod: object, fn: str, text: str) -> set[int]:
        f = mod.__file__  # type: ignore[attr-defined]
        return {n for n in range(1, 400) if text in linecache.getline(f, n)}

    g1 = tg.guarded[(budgeted.__file__ or "", "budgeted_kmr")]
    g10 = tg.guarded[(compose.__file__ or "", "composed_kmr")]
    assert lines(budgeted, "budgeted_kmr", "p = policy(PolicyState(") <= g1
    assert lines(compose, "composed_kmr", "res = budgeted_kmr(") <= g10
    assert not lines(budgeted, "budgeted_kmr", "triple.cost(model)  # KMR.alg1.init") & g1
    assert not lines(compose, "composed_kmr", "c0 = cost(model)  # KMR.alg10.init") & g10
