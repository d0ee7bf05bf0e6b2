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
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmr_proofs import exhaustive as ex
from kmr_ref.core import KMRResult, Status


class Injected(Exception):
    """The error raised at a line (``mode="error"``)."""


def _source(mod: types.ModuleType) -> ast.Module:
    with open(mod.__file__ or "", encoding="utf-8") as f:
        return ast.parse(f.read())


def _try_heads(mod: types.ModuleType) -> set[int]:
    """Lines of ``try:`` statements. CPython reports a line event for the ``try:`` (a NOP), but a
    real SIGINT is never delivered there (only at eval-breaker points: calls, backward jumps), and
    an exception raised by a trace function at that NOP bypasses the enclosing handlers, so these
    points are skipped: raising there would test the tracer, not the code."""
    return {n.lineno for n in ast.walk(_source(mod)) if isinstance(n, ast.Try)}


def _try_lines(mod: types.ModuleType, fn: str) -> set[int]:
    """Lines of the ``try`` bodies of function ``fn`` that catch KeyboardInterrupt (not the handlers)."""
    out: set[int] = set()
    for node in ast.walk(_source(mod)):
        if isinstance(node, ast.FunctionDef) and node.name == fn:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Try) and any(
                        isinstance(h.type, ast.Name) and h.type.id == "KeyboardInterrupt" for h in sub.handlers):
                    out |= set(range(sub.body[0].lineno, (sub.body[-1].end_lineno or sub.body[-1].lineno) + 1))
    return out


@dataclass
class Target:
    files: frozenset[str]
    skip: frozenset[tuple[str, int]]  # (file, line) of every ``try:`` (see _try_heads)
    guarded: dict[tuple[str, str], set[int]]  # (file, function) -> lines of its try bodies


def target() -> Target:
    from kmr_ref.core import budgeted, compose

    files = frozenset({budgeted.__file__ or "", compose.__file__ or ""})
    skip = frozenset({(m.__file__ or "", ln) for m in (budgeted, compose) for ln in _try_heads(m)})
    return Target(files, skip, {(budgeted.__file__ or "", "budgeted_kmr"): _try_lines(budgeted, "budgeted_kmr"),
                          (compose.__file__ or "", "composed_kmr"): _try_lines(compose, "composed_kmr")})


def _guarded(frame: types.FrameType | None, tg: Target) -> bool:
    """Is some frame on the stack inside the try body of budgeted_kmr / composed_kmr?"""
    while frame is not None:
        key = (frame.f_code.co_filename, frame.f_code.co_name)
        if key in tg.guarded and frame.f_lineno in tg.guarded[key]:
            return True
        frame = frame.f_back
    return False


@dataclass
class Point:
    where: str = ""
    guarded: bool = False


def _tracer(tg: Target, raise_at: int | None, exc: type[BaseException], counter: list[int],
            point: Point) -> Callable[[], Any]:
    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "line" and (frame.f_code.co_filename, frame.f_lineno) not in tg.skip:
            k = counter[0]
            counter[0] += 1
            if raise_at is not None and k == raise_at:
                point.where = f"{frame.f_code.co_name}:{frame.f_lineno}"
                point.guarded = _guarded(frame, tg)
                raise exc("raised by sys.settrace at " + point.where)
        return local

    def glob(frame: types.FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in tg.files:
            return local
        return None

    def start() -> Any:
        sys.settrace(glob)
        return glob

    return start


def line_events(w: ex.World) -> int:
    counter = [0]
    run = ex.run_code(w, tracer=_tracer(target(), None, KeyboardInterrupt, counter, Point()))
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
    n = line_events(w)
    tally = Tally()
    exc: type[BaseException] = KeyboardInterrupt if mode == "interrupt" else Injected
    for k in range(n):
        point = Point()
        run = ex.run_code(w, tracer=_tracer(tg, k, exc, [0], point))
        tally.points += 1
        here = f"{mode} at line event {k} ({point.where}, guarded={point.guarded})"
        part: KMRResult[ex.Toy] | None = run.result
        if run.error is not None:
            if isinstance(run.error, KeyboardInterrupt) or (mode == "error" and
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
        elif mode == "error":
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
    want = Status.FEASIBLE if m.cost <= w.budget else Status.INTERRUPTED
    if run.error is None and part.status not in (want, exp.status):
        bad("KMR.alg1.interrupt", f"status {part.status}")
    if run.error is None and part.status != exp.status and part.status != want:
        bad("KMR.alg1.interrupt", f"status {part.status}")
    if run.error is None:
        ex.check_prop1(w, part, None if run.composed is None else
                       [(p.status, p.steps) for p in run.composed.phases])
        if replay:
            ex.replay_run(w, run)


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
)


def check_all(mode: str = "interrupt", replay: bool = True) -> Tally:
    total = Tally()
    for w in WORLDS:
        t = check_everywhere(w, mode, replay)
        total.points += t.points
        total.escaped += t.escaped
        total.handled += t.handled
    return total
