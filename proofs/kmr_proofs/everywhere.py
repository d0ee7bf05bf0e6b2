"""An interrupt (or an error) raised at **every line** the code of Algorithm 1 / Algorithm 10
executes, through ``sys.settrace``.

A run of a world (``exhaustive.World``) is first traced to count the line events in the frames
of ``kmr_ref/core/budgeted.py`` and ``kmr_ref/core/compose.py``; then, for each event k, the
world is run again with a tracer that raises ``KeyboardInterrupt`` (or an injected error) just
before the k-th line executes — the same as a Ctrl-C landing between two statements. Each run
must then satisfy ``KMR.alg1.interrupt`` / ``KMR.alg1.error`` / ``KMR.alg10.phase-break``:

* where the raise point lies inside the ``try`` of ``budgeted_kmr`` or ``composed_kmr`` (in
  that frame or a frame it called), the interrupt never escapes: a result comes back (an error
  propagates with ``kmr_partial``);
* the result's trace holds every record streamed to ``on_record`` (at most one more: a record
  appended but not yet streamed), and is a prefix of the fault-free trace;
* its model is the model of the last accepted record (identity, ``M_0`` if none), with that
  record's cost and the model's quality; its status is ``interrupted`` (``feasible`` if
  C(M) <= B), and Proposition 1 holds of it.

This is the check that the interrupt-reconcile branch of ``budgeted.py`` is needed: an interrupt
landing between ``trace.append`` and the accept assignment must still return the recorded model.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmr_proofs import exhaustive as ex
from kmr_ref.core import KMRResult, Status


class Injected(Exception):
    """The error raised at a line (``mode="error"``)."""


class ForeignInjected(Injected):
    """The error raised at a line in ``mode="foreign"``: it already carries a ``kmr_partial`` of some
    other run (as an error from a nested run inside a meter would); no result may pass it on."""

    kmr_partial: object = KMRResult("foreign", Status.FEASIBLE, (), 0, -1, -1, None, None)


MODES = {"interrupt": KeyboardInterrupt, "error": Injected, "foreign": ForeignInjected}


def _source(mod: types.ModuleType) -> ast.Module:
    path = mod.__file__ or ""
    return _parsed(path, os.stat(path).st_mtime_ns)


@functools.cache
def _parsed(path: str, mtime_ns: int) -> ast.Module:
    """The parsed file, once per version (a mutated copy holds hundreds of functions: parsing it for
    every world would cost more than the runs)."""
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read())


def _try_heads(mod: types.ModuleType) -> set[int]:
    """Lines of ``try:`` statements. CPython reports a line event for the ``try:`` (a NOP), but a
    real SIGINT is never delivered there (only at eval-breaker points: calls, backward jumps), and
    an exception raised by a trace function at that NOP bypasses the enclosing handlers, so these
    points are skipped: raising there would test the tracer, not the code."""
    return {n.lineno for n in ast.walk(_source(mod)) if isinstance(n, ast.Try)}


def _base_name(name: str) -> str:
    """A function's name without mutmut's renaming (``x_NAME__mutmut_orig``, ``x_NAME__mutmut_12``),
    so that the checks find the same functions in a mutated copy."""
    if name.startswith("x_") and "__mutmut_" in name:
        return name[2:name.index("__mutmut_")]
    return name


def _stops_interrupt(h: ast.ExceptHandler) -> bool:
    """Does this handler catch KeyboardInterrupt (``except KeyboardInterrupt`` or ``except
    BaseException``) without always re-raising it (its last statement is not a bare ``raise``)?"""
    catches = isinstance(h.type, ast.Name) and h.type.id in ("KeyboardInterrupt", "BaseException")
    return catches and not (isinstance(h.body[-1], ast.Raise) and h.body[-1].exc is None)


def _try_lines(mod: types.ModuleType, fn: str) -> set[int]:
    """Lines of the ``try`` bodies of function ``fn`` whose handlers stop a KeyboardInterrupt (not
    the handlers themselves): an interrupt there must never escape."""
    out: set[int] = set()
    for node in ast.walk(_source(mod)):
        if isinstance(node, ast.FunctionDef) and _base_name(node.name) == fn:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Try) and any(_stops_interrupt(h) for h in sub.handlers):
                    out |= set(range(sub.body[0].lineno, (sub.body[-1].end_lineno or sub.body[-1].lineno) + 1))
    return out


@dataclass
class Target:
    files: frozenset[str]
    skip: frozenset[tuple[str, int]]  # (file, line) of every ``try:`` (see _try_heads)
    guarded: dict[tuple[str, str], set[int]]  # (file, function) -> lines of its try bodies
    # (file, line) of composed_kmr's call of budgeted_kmr: an exception raised there by the tracer
    # stands for one raised by budgeted_kmr before its first line, i.e. only an asynchronous one (a
    # signal), which never carries another run's partial: mode "foreign" does not raise there
    # (every line of budgeted_kmr itself is a point of its own)
    async_only: frozenset[tuple[str, int]] = frozenset()
    # (file, function) of mutmut's machinery in a mutated copy (its trampoline and the wrappers that
    # call it): not traced, so a mutant has the raise points of the original code and no more
    machinery: frozenset[tuple[str, str]] = frozenset()


def target() -> Target:
    from kmr_ref.core import budgeted, compose

    return _target(tuple((m.__file__ or "", os.stat(m.__file__ or "").st_mtime_ns) for m in (budgeted, compose)))


@functools.cache
def _target(versions: tuple[tuple[str, int], ...]) -> Target:
    from kmr_ref.core import budgeted, compose

    files = frozenset({budgeted.__file__ or "", compose.__file__ or ""})
    skip = frozenset({(m.__file__ or "", ln) for m in (budgeted, compose) for ln in _try_heads(m)})
    machinery = frozenset((m.__file__ or "", n) for m in (budgeted, compose) for n in vars(m)
                          if n == "_mutmut_trampoline" or f"x_{n}__mutmut_orig" in vars(m))
    return Target(files, skip, {(budgeted.__file__ or "", "budgeted_kmr"): _try_lines(budgeted, "budgeted_kmr"),
                                (compose.__file__ or "", "composed_kmr"): _try_lines(compose, "composed_kmr")},
                  frozenset((compose.__file__ or "", ln)
                            for ln in _call_lines(compose, "composed_kmr", "budgeted_kmr")), machinery)


def _guarded(frame: types.FrameType | None, tg: Target) -> bool:
    """Is some frame on the stack inside the try body of budgeted_kmr / composed_kmr?"""
    while frame is not None:
        key = (frame.f_code.co_filename, _base_name(frame.f_code.co_name))
        if key in tg.guarded and frame.f_lineno in tg.guarded[key]:
            return True
        frame = frame.f_back
    return False


@dataclass
class Point:
    where: str = ""
    guarded: bool = False


def _call_lines(mod: types.ModuleType, fn: str, callee: str) -> set[int]:
    """Lines of the statements of function ``fn`` that call ``callee`` (the whole statement)."""
    out: set[int] = set()
    for node in ast.walk(_source(mod)):
        if isinstance(node, ast.FunctionDef) and _base_name(node.name) == fn:
            for st in ast.walk(node):
                if isinstance(st, ast.Assign) and any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                                                      and c.func.id == callee for c in ast.walk(st.value)):
                    out |= set(range(st.lineno, (st.end_lineno or st.lineno) + 1))
    return out


def _tracer(tg: Target, raise_at: int | None, exc: type[BaseException], counter: list[int],
            point: Point) -> Callable[[], Any]:
    foreign = issubclass(exc, ForeignInjected)

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        where = (frame.f_code.co_filename, frame.f_lineno)
        if event == "line" and where not in tg.skip and not (foreign and where in tg.async_only):
            k = counter[0]
            counter[0] += 1
            if raise_at is not None and k == raise_at:
                point.where = f"{frame.f_code.co_name}:{frame.f_lineno}"
                point.guarded = _guarded(frame, tg)
                raise exc("raised by sys.settrace at " + point.where)
        return local

    def glob(frame: types.FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in tg.files and (frame.f_code.co_filename,
                                                    frame.f_code.co_name) not in tg.machinery:
            return local
        return None

    def start() -> Any:
        sys.settrace(glob)
        return glob

    return start


def line_events(w: ex.World, exc: type[BaseException] = KeyboardInterrupt) -> int:
    """The raise points of ``w``'s fault-free run for an ``exc`` (the line events, less those
    ``exc`` is never raised at)."""
    counter = [0]
    run = ex.run_code(w, tracer=_tracer(target(), None, exc, counter, Point()))
    assert run.error is None or w.fault.kind != "none", run.error
    return counter[0]


@dataclass
class Tally:
    points: int = 0
    escaped: int = 0  # interrupts that escaped from an unguarded point (allowed)
    handled: int = 0


def check_everywhere(w: ex.World, mode: str = "interrupt", replay: bool = True) -> Tally:
    """Raise at every line event of the fault-free run of ``w``; check every outcome."""
    w = dataclasses.replace(w, fault=ex.Fault())
    tg = target()
    exp = ex.interpret(w)
    exc: type[BaseException] = MODES[mode]
    n = line_events(w, exc)
    tally = Tally()
    for k in range(n):
        point = Point()
        run = ex.run_code(w, tracer=_tracer(tg, k, exc, [0], point))
        tally.points += 1
        here = f"{mode} at line event {k} ({point.where}, guarded={point.guarded})"
        part: KMRResult[ex.Toy] | None = run.result
        if run.error is not None:
            if isinstance(run.error, KeyboardInterrupt) or (mode != "interrupt" and
                                                            getattr(run.error, "kmr_partial", None) is None):
                if point.guarded:
                    raise ex.Violation(f"[KMR.alg1.interrupt] {here}: escaped from a guarded point "
                                       f"({run.error!r}); world {w}")
                tally.escaped += 1
                late = getattr(run.error, "kmr_partial", None)  # KMR.alg1.after-loop
                if late is not None:
                    _check_partial(w, run, late, exp, here, replay)
                elif run.streamed:
                    raise ex.Violation(f"[KMR.alg1.after-loop] {here}: {run.error!r} escaped after "
                                       f"{len(run.streamed)} records without kmr_partial; world {w}")
                continue
            if not isinstance(run.error, exc):
                raise ex.Violation(f"[KMR.alg1.error] {here}: error changed to {run.error!r}; world {w}")
            part = run.error.kmr_partial  # type: ignore[attr-defined]
        elif mode != "interrupt":
            raise ex.Violation(f"[KMR.alg1.error] {here}: the error was swallowed; world {w}")
        tally.handled += 1
        assert part is not None
        _check_partial(w, run, part, exp, here, replay)
    return tally


def _check_partial(w: ex.World, run: ex.Run, part: KMRResult[ex.Toy], exp: ex.Expected, here: str,
                   replay: bool = True) -> None:
    def bad(clause: str, what: str) -> None:
        raise ex.Violation(f"[{clause}] {here}: {what}; world {w}")

    tr = list(part.trace)
    if tr[:len(run.streamed)] != run.streamed or len(tr) - len(run.streamed) > 1:
        bad("KMR.alg1.interrupt", f"trace {ex._recs(tr)} lost streamed records {ex._recs(run.streamed)}")
    if ex._recs(tr) != exp.records[:len(tr)]:
        bad("KMR.alg1.interrupt", f"trace {ex._recs(tr)} is not a prefix of {exp.records}")
    tags = ([int(x[1:]) for x in run.composed.phase_of_record] if run.composed is not None
            else [0] * len(tr) if not w.composed else ex._phases_of_partial(w, part))
    m = ex._path_model(w, tr, tags)
    if part.model != m:
        bad("KMR.prop1.last-accepted", f"model {part.model}, the last accepted is {m}")
    q = ex.quality_of if w.quality else (lambda _m: None)
    if part.cost_final != m.cost or part.quality_final != q(m):
        bad("KMR.prop1.last-accepted", f"final cost/quality {part.cost_final}/{part.quality_final} vs model {m}")
    m0 = ex.Toy(w.c0)
    if (part.cost_initial, part.quality_initial, part.budget) != (m0.cost, q(m0), w.budget):
        bad("KMR.alg1.return", f"initial cost/quality, budget {part.cost_initial}/{part.quality_initial}, "
                               f"{part.budget}: not C(M_0)/Q(M_0), B")
    want = Status.FEASIBLE if m.cost <= w.budget else Status.INTERRUPTED
    if run.error is not None and part.status != want:  # KMR.alg1.after-loop: what an interrupt would give
        bad("KMR.alg1.error", f"the partial's status is {part.status}, not {want}")
    if run.error is None and run.composed is not None:
        _check_phases(w, run.composed, part, exp, bad)
    elif run.error is None and part.status not in (want, exp.status):
        bad("KMR.alg1.interrupt", f"status {part.status}")
    if run.error is None:
        ex.check_prop1(w, part, None if run.composed is None else
                       [(p.status, p.steps) for p in run.composed.phases])
        if replay:
            ex.replay_run(w, run)


def _check_phases(w: ex.World, comp: Any, part: KMRResult[ex.Toy], exp: ex.Expected,
                  bad: Callable[[str, str], None]) -> None:
    """``KMR.alg10.phase-break`` / ``KMR.alg10.status`` after an interrupt, exactly: the phases
    reported are the first ones of the fault-free run, in order and by name, all as they ended
    there but the last, which may instead be ``interrupted`` with fewer records (the phase the
    interrupt ended; ``0`` records: interrupted at its loop head) — never a phase the fault-free
    run does not reach (after a phase that ends at C == B or at N steps, none would run); and the
    status follows from them: ``feasible`` iff C <= B, else ``interrupted`` iff a phase was, else
    ``step-limit`` at N accepted steps, else the last phase's status."""
    got = [(p.name, p.status, p.steps) for p in comp.phases]
    ran = [(f"p{k}", s, n) for k, s, n in exp.phases]
    if [g[0] for g in got] != [f"p{j}" for j in range(len(got))] or len(got) > len(ran):
        bad("KMR.alg10.phase-break", f"phases {got}; the fault-free run has {ran}")
    if got[:-1] != ran[:len(got) - 1] or (got and got[-1] != ran[len(got) - 1] and not (
            got[-1][1] is Status.INTERRUPTED and got[-1][2] <= ran[len(got) - 1][2])):
        bad("KMR.alg10.phase-break", f"phases {got}; the fault-free run has {ran}")
    used = sum(r.accepted for r in part.trace)
    status = (Status.FEASIBLE if part.cost_final <= w.budget else Status.INTERRUPTED
              if any(g[1] is Status.INTERRUPTED for g in got) else Status.STEP_LIMIT if used == w.n
              else got[-1][1] if got else Status.POLICY_STOP)
    if part.status is not status:
        bad("KMR.alg10.status", f"status {part.status} with phases {got}, expected {status}")


# worlds whose runs pass every line of both loops (accept, reject, step limit, policy stop,
# several phases, a phase after a stall)
WORLDS: tuple[ex.World, ...] = (
    ex.World(5, 1, 3, ((-1, -2, 0),)),  # accepts twice, then stalls
    ex.World(5, 0, 2, ((-1, -1, -1),)),  # step limit
    ex.World(5, 3, 4, ((-1,),)),  # policy stop
    ex.World(4, 2, 3, ((-2,),), quality=False),  # feasible, no quality meter
    ex.World(6, 1, 4, ((-1, 0), (-2, -1), (-1,)), composed=True),  # stall, accept, step-limit
    ex.World(6, 4, 3, ((-1,), (-2,)), composed=True),  # policy-stop, then feasible
    ex.World(6, 0, 2, ((-1,), (-1, -1)), composed=True, quality=False),  # the step limit across phases
    ex.World(6, 0, 4, ((-1,), (-1,), (-1,)), composed=True),  # three policy stops: the next phase by name
    ex.World(6, 5, 3, ((-1,), (-1,)), composed=True),  # the first phase ends at C == B: no next phase
    ex.World(6, 0, 1, ((-1, -1), (-1,)), composed=True),  # the first phase ends at N: no next phase
)


def check_all(mode: str = "interrupt", replay: bool = True) -> Tally:
    total = Tally()
    for w in WORLDS:
        t = check_everywhere(w, mode, replay)
        total.points += t.points
        total.escaped += t.escaped
        total.handled += t.handled
    return total
