"""Run every obligation and mutant; the engine behind ``kmr prove``.

Result vocabulary: an obligation is ``proved``, ``failed`` (Z3 or CrossHair found a
counterexample, or a replay was rejected) or ``unknown`` (a solver timeout, or CrossHair not
installed / not exhaustive in time). A mutant is ``refuted`` (as expected: the table shows
``refuted-as-expected``) or survives. Exit rule (``exit_code``): non-zero if any mutant survives
or any obligation is not ``proved`` — except that a CrossHair obligation that is ``unknown``
(the optional tool is missing, or its path exploration did not finish in time) is reported and
does not fail the run unless ``strict`` is set. CrossHair never weakens the Z3 proofs: it is a
second, independent check that the *code* meets the contracts the encoding proves.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import z3

from kmr_proofs import lemmas, prop1, prop10, replay, replay10, ts
from kmr_proofs.alg1 import LOC_NAMES, RET, STATUS_NAMES, Alg1Options, V, alg1_system

BMC_DEPTH = 8  # transitions: covers N = 0..2 fully, and every exit of the loop
MUTANT_DEPTH = 6
TAMPERS_PER_CASE = 3  # tampered copies replayed per run (the tests replay all of them)
CROSSHAIR_TIMEOUT = 8.0  # CPU seconds per CrossHair condition
CROSSHAIR_TIMEOUT10 = 24.0  # the same for the composed_kmr contract (it confirms in ~9 s here)
CROSSHAIR_WALL = 50.0  # wall-clock limit for the CrossHair child process (it runs beside Z3)
BMC10_DEPTH = 9  # Algorithm 10: a phase stalls, the next accepts twice (or returns)
MUTANT10_DEPTH = 11  # the longest shortest counterexample (no-carry vs P1e) has 11 transitions
COVER10_DEPTH = 12
BUDGET_REPLAYS = 20  # changing-budget runs of the code replayed through the encoding


@dataclass
class ObligationResult:
    id: str
    clause: str
    kind: str  # induction | bounded | replay | crosshair | lemma | exhaustive
    result: str  # proved | failed | unknown
    seconds: float
    detail: str = ""
    checks: str = ""  # model | code | both: what the obligation is checked on (from kind)

    def __post_init__(self) -> None:
        if not self.checks:
            self.checks = CHECKS[self.kind]


# the model (the Z3 encoding or a formula), the code (kmr_ref/core itself), or both (runs of the
# code checked against the model's transition relation)
CHECKS = {"induction": "model", "bounded": "model", "lemma": "model", "crosshair": "code",
          "replay": "both", "exhaustive": "both"}


@dataclass
class MutantResult:
    id: str
    obligation: str
    refuted: bool
    counterexample: str
    mutation: str = ""


@dataclass
class Report:
    obligations: list[ObligationResult] = field(default_factory=list)
    mutants: list[MutantResult] = field(default_factory=list)
    total_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"obligations": [asdict(o) for o in self.obligations],
                "mutants": [asdict(m) for m in self.mutants],
                "total_seconds": round(self.total_seconds, 3)}

    def exit_code(self, strict: bool = False) -> int:
        for o in self.obligations:
            if o.result == "proved":
                continue
            if o.kind == "crosshair" and o.result == "unknown" and not strict:
                continue
            return 1
        return 0 if all(m.refuted for m in self.mutants) else 1


def _timed(rep: Report, id_: str, clause: str, kind: str, fn: Callable[[], tuple[str, str]]) -> None:
    t0 = time.perf_counter()
    try:
        result, detail = fn()
    except Exception as e:  # an obligation that crashes is failed, with the reason
        result, detail = "failed", f"{type(e).__name__}: {e}"
    rep.obligations.append(ObligationResult(id_, clause, kind, result, round(time.perf_counter() - t0, 3),
                                            detail))


def _mutant(rep: Report, ob_id: str, mutation: str, desc: str, fn: Callable[[], tuple[bool, str]]) -> None:
    try:
        refuted, cex = fn()
    except Exception as e:
        refuted, cex = False, f"{type(e).__name__}: {e}"
    rep.mutants.append(MutantResult(f"{ob_id}/{mutation}", ob_id, refuted, cex, desc))


# ---------------------------------------------------------------- Algorithm 1 / Proposition 1

def _alg1(rep: Report) -> None:
    from kmr_proofs.alg1 import MUTATIONS

    for ob in prop1.obligations():
        def ind(ob: prop1.Obligation = ob) -> tuple[str, str]:
            o = prop1.prove_obligation(ob)
            n = len(o.checks)
            return o.result, (o.detail or f"{n} verification conditions: {ob.summary}")
        _timed(rep, ob.id, ob.clause, "induction", ind)
        for mu in ob.mutants:
            def ref(ob: prop1.Obligation = ob, mu: str = mu) -> tuple[bool, str]:
                r = prop1.refute(ob, mu, MUTANT_DEPTH)
                return r.refuted, r.counterexample
            _mutant(rep, ob.id, mu, MUTATIONS[mu], ref)
    for ob in prop1.obligations():
        def bnd(ob: prop1.Obligation = ob) -> tuple[str, str]:
            o = prop1.bounded_obligation(ob, BMC_DEPTH)
            return o.result, (o.detail or f"no violation in any run of <= {BMC_DEPTH} transitions")
        _timed(rep, ob.id.replace("-induction", "-bounded"), ob.clause, "bounded", bnd)
    _timed(rep, "alg1-coverage", "KMR.alg1.status", "bounded", _coverage)


def _coverage() -> tuple[str, str]:
    sys_ = alg1_system(Alg1Options())
    goals: list[tuple[str, ts.StepPred]] = []

    def fires(c: ts.Command) -> ts.StepPred:
        return lambda s, i, s2: sys_.step_by(c, s, i, s2)

    def returns(code: int) -> ts.StepPred:
        return lambda s, i, s2: z3.And(s2[V.pc] == RET, s2[V.status] == code)

    goals += [(f"command {c.name}", fires(c)) for c in sys_.commands]
    goals += [(f"return {STATUS_NAMES[k]}", returns(k)) for k in range(1, len(STATUS_NAMES))]
    found = ts.cover(sys_, BMC_DEPTH, goals)
    missing = [n for n, k in found.items() if k is None]
    if missing:
        return "failed", f"unreachable within {BMC_DEPTH}: {', '.join(missing)}"
    return "proved", (f"all {len(sys_.commands)} commands fire and all 5 statuses are returned "
                      f"in runs of <= {max(k for k in found.values() if k is not None)} transitions "
                      f"(locations {', '.join(LOC_NAMES)})")


def _replay(cases: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    statuses: dict[str, int] = {}
    n_tampered = 0
    for _ in range(cases):
        case = replay.random_case(rng)
        res = replay.run_case(case)
        statuses[str(res.status)] = statuses.get(str(res.status), 0) + 1
        v = replay.replay(res, case.max_steps)
        if not v.legal:
            return "failed", f"genuine run rejected at {v.failed_at}: {case}"
        variants = replay.tampers(res, case.max_steps)
        for name, bad, n in rng.sample(variants, min(TAMPERS_PER_CASE, len(variants))):
            n_tampered += 1
            if replay.replay(bad, n).legal:
                return "failed", f"tampered trace ({name}) accepted: {case}"
    mix = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    return "proved", (f"{cases} runs of kmr_ref.core.budgeted_kmr replayed as legal transitions "
                      f"({mix}); {n_tampered} tampered traces rejected")


# ---------------------------------------------------------------- changing budgets

def _budgets(rep: Report) -> None:
    """``KMR.prop1.changing-budget``: Proposition 1 for every budget sequence (``budgets.py``)."""
    from kmr_proofs import budgets
    from kmr_proofs.alg1 import MUTATIONS

    for ob in budgets.obligations():
        def ind(ob: prop1.Obligation = ob) -> tuple[str, str]:
            o = budgets.prove(ob)
            return o.result, (o.detail or f"{len(o.checks)} verification conditions: {ob.summary}")
        _timed(rep, ob.id, ob.clause, "induction", ind)
        for mu in ob.mutants:
            def ref(ob: prop1.Obligation = ob, mu: str = mu) -> tuple[bool, str]:
                r = budgets.refute(ob, mu, MUTANT_DEPTH)
                return r.refuted, r.counterexample
            _mutant(rep, ob.id, mu, MUTATIONS[mu], ref)
    _timed(rep, "budgets-coverage", budgets.CLAUSE, "bounded", lambda: budgets.coverage(BMC_DEPTH))

    def exhaustive() -> tuple[str, str]:
        from kmr_proofs.exhaustive import Violation

        try:
            s = budgets.check_all(budgets.QUICK, replay_sample=BUDGET_REPLAYS)
        except Violation as e:
            return "failed", str(e)
        return "proved", f"budgeted_kmr with changing budgets: {s.line()}"
    _timed(rep, "budgets-exhaustive", "KMR.budget.read", "exhaustive", exhaustive)


# ---------------------------------------------------------------- Algorithm 10 (composition)

def _alg10(rep: Report) -> None:
    from kmr_proofs.alg1 import MUTATIONS as A1
    from kmr_proofs.alg10 import MUTATIONS as A10

    def desc(mu: str) -> str:
        return A10[mu] if mu in A10 else f"every phase: {A1[mu]}"

    for ob, phase in [*((o, False) for o in prop10.obligations()),
                      *((o, True) for o in prop10.phase_obligations())]:
        def ind(ob: prop1.Obligation = ob, phase: bool = phase) -> tuple[str, str]:
            o = prop10.prove(ob, phase=phase)
            return o.result, (o.detail or f"{len(o.checks)} verification conditions: {ob.summary}")
        _timed(rep, ob.id, ob.clause, "induction", ind)
        for mu in ob.mutants:
            def ref(ob: prop1.Obligation = ob, mu: str = mu) -> tuple[bool, str]:
                r = prop10.refute(ob, mu, MUTANT10_DEPTH)
                return r.refuted, r.counterexample
            _mutant(rep, ob.id, mu, desc(mu), ref)
    for ob in prop10.obligations():
        def bnd(ob: prop1.Obligation = ob) -> tuple[str, str]:
            o = prop10.bounded(ob, BMC10_DEPTH)
            return o.result, (o.detail or f"no violation in any run of <= {BMC10_DEPTH} transitions")
        _timed(rep, ob.id.replace("-induction", "-bounded"), ob.clause, "bounded", bnd)
    _timed(rep, "alg10-coverage", "KMR.alg10.status", "bounded", lambda: prop10.coverage(COVER10_DEPTH))


def _replay10(cases: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    statuses: dict[str, int] = {}
    multi = n_tampered = 0
    for _ in range(cases):
        case = replay10.random_case(rng)
        out = replay10.run_case(case)
        statuses[str(out.result.status)] = statuses.get(str(out.result.status), 0) + 1
        multi += len(out.phases) >= 2
        v = replay10.replay(out, case.max_steps, len(case.phases))
        if not v.legal:
            return "failed", f"genuine run rejected at {v.failed_at}: {case}"
        variants = replay10.tampers(out, case.max_steps)
        for name, bad, n in rng.sample(variants, min(TAMPERS_PER_CASE, len(variants))):
            n_tampered += 1
            if replay10.replay(bad, n, len(case.phases)).legal:
                return "failed", f"tampered trace ({name}) accepted: {case}"
    mix = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    return "proved", (f"{cases} runs of kmr_ref.core.composed_kmr ({multi} with >= 2 phases run) "
                      f"replayed as legal transitions of the Algorithm 10 encoding ({mix}); "
                      f"{n_tampered} tampered traces rejected")


# ---------------------------------------------------------------- CrossHair

def _crosshair_env() -> dict[str, str]:
    roots = []
    for mod in ("kmr_ref", "kmr_proofs"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.origin is not None:
            roots.append(str(Path(spec.origin).resolve().parent.parent))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*roots, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start_crosshair() -> subprocess.Popen[str] | str:
    if importlib.util.find_spec("crosshair") is None:
        return "crosshair-tool is not installed (pip install 'kmr-ref[dev]')"
    return subprocess.Popen([sys.executable, "-m", "kmr_proofs.crosshair_run", str(CROSSHAIR_TIMEOUT),
                             str(CROSSHAIR_TIMEOUT10)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_crosshair_env())


def _finish_crosshair(rep: Report, proc: subprocess.Popen[str] | str, t0: float) -> None:
    from kmr_proofs.crosshair_contracts import CLAUSES, CODE_MUTANTS, CODE_MUTANTS10

    data: dict[str, Any] | None = None
    why = ""
    if isinstance(proc, str):
        why = proc
    else:
        try:
            out, err = proc.communicate(timeout=max(1.0, CROSSHAIR_WALL - (time.perf_counter() - t0)))
            data = json.loads(out) if proc.returncode == 0 and out.strip() else None
            if data is None:
                why = f"CrossHair runner exited {proc.returncode}: {err.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            why = f"CrossHair did not finish within {CROSSHAIR_WALL:.0f} s (wall clock)"
        except json.JSONDecodeError as e:
            why = f"CrossHair runner output unreadable: {e}"
    secs = round(time.perf_counter() - t0, 3)
    ids = {c: f"P1{'abcde'[k]}-crosshair" for k, c in enumerate(CLAUSES)}
    if data is None:
        for c in CLAUSES:
            rep.obligations.append(ObligationResult(ids[c], c, "crosshair", "unknown", secs, why))
        rep.obligations.append(ObligationResult("alg10-crosshair", "KMR.alg10.prop1", "crosshair", "unknown",
                                                secs, why))
        return
    st, msg = data["contract"]["state"], data["contract"]["message"]
    secs = float(data["contract"].get("seconds", secs))
    scope = ("budgeted_kmr on an integer-cost method, unbounded integer costs/budget/deltas, "
             "N <= 4, 4 proposals, Stop and KeyboardInterrupt at any iteration")
    for c in CLAUSES:
        if st == "confirmed":
            res, det = "proved", f"CrossHair explored every path ({scope}; one exploration for P1a-P1e)"
        elif st in ("post_fail", "exec_err", "post_err"):
            res = "failed" if (c in msg or not any(x in msg for x in CLAUSES)) else "unknown"
            det = f"counterexample: {msg}"
        else:
            res, det = "unknown", f"CrossHair {st}: {msg} ({scope})"
        rep.obligations.append(ObligationResult(ids[c], c, "crosshair", res, secs, det))
    for m in data["mutants"]:
        ob = ids.get(m["clause"], "P1-crosshair")
        refuted = m["state"] in ("post_fail", "exec_err", "post_err")
        desc = f"budgeted.py: {CODE_MUTANTS[m['name']][0]!r} -> {CODE_MUTANTS[m['name']][1]!r}"
        rep.mutants.append(MutantResult(f"{ob}/code:{m['name']}", ob, refuted, m["message"], desc))
    c10 = data.get("contract10", {"state": "error", "message": "no composed_kmr contract run"})
    scope10 = ("composed_kmr on the same method, two phases (1 and 2 proposals), unbounded integer "
               "costs/budget/deltas, N <= 2, KeyboardInterrupt at any policy call")
    if c10["state"] == "confirmed":
        res10, det10 = "proved", f"CrossHair explored every path ({scope10})"
    elif c10["state"] in ("post_fail", "exec_err", "post_err"):
        res10, det10 = "failed", f"counterexample: {c10['message']}"
    else:
        res10, det10 = "unknown", f"CrossHair {c10['state']}: {c10['message']} ({scope10})"
    rep.obligations.append(ObligationResult("alg10-crosshair", "KMR.alg10.prop1", "crosshair", res10,
                                            float(c10.get("seconds", secs)), det10))
    for m in data.get("mutants10", []):
        refuted = m["state"] in ("post_fail", "exec_err", "post_err")
        old, new, _ = CODE_MUTANTS10[m["name"]]
        rep.mutants.append(MutantResult(f"alg10-crosshair/code:{m['name']}", "alg10-crosshair", refuted,
                                        m["message"], f"compose.py: {old!r} -> {new!r}"))


# ---------------------------------------------------------------- lemmas

def _lemmas(rep: Report) -> None:
    for lem in lemmas.LEMMAS:
        _timed(rep, lem.id, lem.clause, "lemma", functools.partial(lemmas.prove_lemma, lem))
        for mu, desc in lem.mutants.items():
            _mutant(rep, lem.id, mu, desc, functools.partial(lemmas.refute_lemma, lem, mu))
    _timed(rep, "quant-rounding-model", "KMR.quant.error-bound", "lemma", lemmas.rounding_checks)


def _exhaustive(composed: bool) -> tuple[str, str]:
    """Every small world through the code, against the interpreter and Proposition 1 (the quick
    bound of tests/test_exhaustive.py; Algorithm 1's runs replayed through the encoding too)."""
    import dataclasses

    from kmr_proofs import exhaustive as ex

    b1 = dataclasses.replace(ex.ALG1_SMALL, costs=(0, 1, 3), budgets=(0, 1), fault_calls=(0, 1), max_proposals=2)
    b10 = dataclasses.replace(ex.ALG10_SMALL, steps=(0, 1, 2), fault_calls=(0,),
                              fault_kinds=("ki-policy", "ki-record", "err-rule"))
    try:
        s = ex.check_all(b10, True, replay=False) if composed else ex.check_all(b1, False, replay=True)
    except ex.Violation as e:
        return "failed", str(e)
    return "proved", f"{'composed_kmr' if composed else 'budgeted_kmr'}: {s.line()}"


def _everywhere() -> tuple[str, str]:
    from kmr_proofs import everywhere
    from kmr_proofs import exhaustive as ex

    try:
        a, b, c = (everywhere.check_all(mode, replay=False) for mode in everywhere.MODES)
    except ex.Violation as e:
        return "failed", str(e)
    return "proved", (f"an interrupt at each of {a.points}, an error at each of {b.points} and an error carrying a "
                      f"foreign partial at each of {c.points} line events of budgeted.py/compose.py "
                      f"({len(everywhere.WORLDS)} worlds): every result keeps what was accepted")


def code_mutants(rep: Report) -> None:
    """``kmr prove --mutation``: every code mutant of kmr_ref/core (a scratch copy each) must be killed."""
    from kmr_proofs import code_mutants as cm

    t0 = time.perf_counter()
    n_ok = 0
    for name, (fname, _old, _new, why) in cm.MUTANTS.items():
        o = cm.run_mutant(name)
        n_ok += o.killed
        rep.mutants.append(MutantResult(f"code-mutants/{name}", "code-mutants", o.killed, o.detail,
                                        f"{fname}: {why}"))
    rep.obligations.append(ObligationResult("code-mutants", "KMR.alg10.prop1", "exhaustive",
                                            "proved" if n_ok == len(cm.MUTANTS) else "failed",
                                            round(time.perf_counter() - t0, 3),
                                            f"{n_ok}/{len(cm.MUTANTS)} code mutants killed by the checks above"))


def run_all(*, cases: int = 30, seed: int = 0, crosshair: bool = True, alg10: bool = True) -> Report:
    """Every obligation and mutant (``alg10=False`` leaves out Algorithm 10's). CrossHair runs in
    a child process, in parallel."""
    t0 = time.perf_counter()
    rep = Report()
    proc: subprocess.Popen[str] | str = (_start_crosshair() if crosshair
                                         else "CrossHair disabled (--no-crosshair)")
    try:
        _alg1(rep)
        _timed(rep, "alg1-replay", "KMR.trace.record", "replay", lambda: _replay(cases, seed))
        _budgets(rep)
        if alg10:
            _alg10(rep)
            _timed(rep, "alg10-replay", "KMR.alg10.phase-trace", "replay",
                   lambda: _replay10(max(1, cases * 2 // 3), seed))
        _lemmas(rep)
        _timed(rep, "alg1-exhaustive", "KMR.alg1.return", "exhaustive", lambda: _exhaustive(False))
        if alg10:
            _timed(rep, "alg10-exhaustive", "KMR.alg10.return", "exhaustive", lambda: _exhaustive(True))
        _timed(rep, "interrupt-every-line", "KMR.alg1.interrupt", "exhaustive", _everywhere)
    except BaseException:
        if not isinstance(proc, str):
            proc.kill()
        raise
    _finish_crosshair(rep, proc, t0)
    rep.total_seconds = time.perf_counter() - t0
    return rep
