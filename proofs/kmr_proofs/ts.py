"""A small toolkit for transition systems over Z3 terms: guarded commands, induction, ranking
functions, bounded model checking and concrete counterexample traces.

A *state* is a dict ``field name -> Z3 term``. A *command* is a guard and a deterministic update,
both functions of the pre-state and of the step's *inputs* (the free values the environment
chooses: the policy's answer, the proposal's model, an interrupt). The transition relation is
the disjunction over commands of ``guard(s, i) and s' = update(s, i)`` (fields not updated keep
their value). Algorithm 1 (``alg1.py``) is one such system; Algorithm 10 (composition,
``alg10.py``) is another, built from the same commands and checked by the same obligations
(``prop1.py``, ``prop10.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import z3

Expr = Any  # a z3 term (z3 has no type stubs)
State = Mapping[str, Expr]
Inputs = Mapping[str, Expr]
StatePred = Callable[[State], Expr]
StepPred = Callable[[State, Inputs, State], Expr]

_fresh = itertools.count()


@dataclass(frozen=True)
class Command:
    """A guarded command: when ``guard(s, i)`` holds, the next state is ``s`` updated by ``update(s, i)``."""

    name: str
    clauses: tuple[str, ...]
    guard: Callable[[State, Inputs], Expr]
    update: Callable[[State, Inputs], dict[str, Expr]]


@dataclass(frozen=True)
class System:
    """Fields (name -> sort), inputs (name -> sort), initial-state predicate, commands."""

    name: str
    fields: Mapping[str, Any]
    inputs: Mapping[str, Any]
    init: StatePred
    commands: tuple[Command, ...]
    terminal: StatePred  # states with no successor (the return of the algorithm)
    show: Callable[[Callable[[Expr], Any], State], str] = field(default=lambda ev, s: "")
    show_inputs: Callable[[Callable[[Expr], Any], Sequence[str], Inputs], str] = field(
        default=lambda ev, fired, i: "")
    # environment assumptions on a step's inputs that the induction proofs do NOT need (they
    # hold without them) but that runs searched by BMC and replay respect (e.g. costs >= 0)
    assume: Callable[[State, Inputs], Expr] = field(default=lambda s, i: z3.BoolVal(True))
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def state(self, tag: str) -> dict[str, Expr]:
        n = next(_fresh)
        return {f: z3.Const(f"{f}!{tag}!{n}", srt) for f, srt in self.fields.items()}

    def input(self, tag: str) -> dict[str, Expr]:
        n = next(_fresh)
        return {f: z3.Const(f"in_{f}!{tag}!{n}", srt) for f, srt in self.inputs.items()}

    def step_by(self, cmd: Command, s: State, i: Inputs, s2: State) -> Expr:
        upd = cmd.update(s, i)
        unknown = set(upd) - set(self.fields)
        if unknown:
            raise KeyError(f"command {cmd.name} updates unknown fields {sorted(unknown)}")
        eqs = [s2[f] == upd.get(f, s[f]) for f in self.fields]
        return z3.And(cmd.guard(s, i), *eqs)

    def trans(self, s: State, i: Inputs, s2: State) -> Expr:
        """The transition relation, built once over template states and then instantiated by
        substitution (building z3 terms in Python is the slow part of replaying long traces)."""
        if "trans" not in self._cache:
            ta, ti, tb = self.state("ta"), self.input("ti"), self.state("tb")
            rel = z3.Or(*[self.step_by(c, ta, ti, tb) for c in self.commands])
            self._cache["trans"] = (ta, ti, tb, rel)
        ta, ti, tb, rel = self._cache["trans"]
        pairs = ([(ta[f], s[f]) for f in self.fields] + [(ti[f], i[f]) for f in self.inputs]
                 + [(tb[f], s2[f]) for f in self.fields])
        return z3.substitute(rel, *pairs)


def check_valid(claim: Expr, timeout_ms: int = 20000) -> tuple[str, z3.ModelRef | None]:
    """``('proved', None)`` if ``claim`` is valid, ``('failed', model)`` with a counterexample,
    or ``('unknown', None)``."""
    s = z3.Solver()
    s.set("timeout", timeout_ms)
    s.add(z3.Not(claim))
    r = s.check()
    if r == z3.unsat:
        return "proved", None
    if r == z3.sat:
        return "failed", s.model()
    return "unknown", None


@dataclass
class Check:
    """One discharged verification condition."""

    name: str
    result: str  # proved | failed | unknown
    detail: str = ""


def induction(sys: System, invariant: Sequence[tuple[str, StatePred]],
              state_props: Sequence[tuple[str, StatePred]] = (),
              step_props: Sequence[tuple[str, StepPred]] = ()) -> list[Check]:
    """Unbounded proof by induction over ALL states (not only reachable ones):

    initiation   init(s) => I(s)
    consecution  I(s) and T(s, i, s') => I(s')           (one check per conjunct of I)
    implication  I(s) => P(s);  I(s) and T(s, i, s') => R(s, i, s')
    """
    return inductive(sys, invariant) + implications(sys, invariant, state_props, step_props)


def inductive(sys: System, invariant: Sequence[tuple[str, StatePred]]) -> list[Check]:
    """Initiation and consecution of ``invariant`` (one check per conjunct)."""
    out: list[Check] = []
    s, i, s2 = sys.state("s"), sys.input("i"), sys.state("s2")
    inv_s = z3.And(*[p(s) for _, p in invariant])
    for name, p in invariant:
        r, m = check_valid(z3.Implies(sys.init(s), p(s)))
        out.append(Check(f"initiation[{name}]", r, _cti(sys, m, s) if m is not None else ""))
    tr = sys.trans(s, i, s2)
    for name, p in invariant:
        r, m = check_valid(z3.Implies(z3.And(inv_s, tr), p(s2)))
        out.append(Check(f"consecution[{name}]", r, _cti(sys, m, s, s2) if m is not None else ""))
    return out


def implications(sys: System, invariant: Sequence[tuple[str, StatePred]],
                 state_props: Sequence[tuple[str, StatePred]] = (),
                 step_props: Sequence[tuple[str, StepPred]] = ()) -> list[Check]:
    """``I(s) => P(s)`` and ``I(s) and T(s, i, s') => R(s, i, s')``: sound once ``inductive``
    proved I."""
    out: list[Check] = []
    s, i, s2 = sys.state("s"), sys.input("i"), sys.state("s2")
    inv_s = z3.And(*[p(s) for _, p in invariant])
    for name, p in state_props:
        r, m = check_valid(z3.Implies(inv_s, p(s)))
        out.append(Check(f"implies[{name}]", r, _cti(sys, m, s) if m is not None else ""))
    tr = sys.trans(s, i, s2)
    for name, q in step_props:
        r, m = check_valid(z3.Implies(z3.And(inv_s, tr), q(s, i, s2)))
        out.append(Check(f"implies-step[{name}]", r, _cti(sys, m, s, s2) if m is not None else ""))
    return out


def ranking(sys: System, invariant: Sequence[tuple[str, StatePred]],
            rank: Callable[[State], Expr]) -> list[Check]:
    """Termination: under the invariant, the integer ``rank`` is >= 0 and every transition
    decreases it strictly; every non-terminal state has a successor for every input (no
    deadlock: the guards cover), and a terminal state has none."""
    s, i, s2 = sys.state("s"), sys.input("i"), sys.state("s2")
    inv_s = z3.And(*[p(s) for _, p in invariant])
    out: list[Check] = []
    r, m = check_valid(z3.Implies(inv_s, rank(s) >= 0))
    out.append(Check("rank-nonnegative", r, _cti(sys, m, s) if m is not None else ""))
    r, m = check_valid(z3.Implies(z3.And(inv_s, sys.trans(s, i, s2)), rank(s2) < rank(s)))
    out.append(Check("rank-decreases", r, _cti(sys, m, s, s2) if m is not None else ""))
    guards = z3.Or(*[c.guard(s, i) for c in sys.commands])
    r, m = check_valid(z3.Implies(z3.And(inv_s, z3.Not(sys.terminal(s))), guards))
    out.append(Check("no-deadlock", r, _cti(sys, m, s) if m is not None else ""))
    r, m = check_valid(z3.Implies(sys.terminal(s), z3.Not(guards)))
    out.append(Check("terminal-is-final", r, _cti(sys, m, s) if m is not None else ""))
    return out


def deterministic(sys: System) -> Check:
    """The guards are pairwise disjoint: given the inputs, at most one command fires."""
    s, i = sys.state("s"), sys.input("i")
    pairs = [z3.Not(z3.And(a.guard(s, i), b.guard(s, i)))
             for a, b in itertools.combinations(sys.commands, 2)]
    r, m = check_valid(z3.And(*pairs))
    return Check("deterministic-given-inputs", r, _cti(sys, m, s) if m is not None else "")


@dataclass
class BmcResult:
    result: str  # 'proved' (no violation up to depth) | 'failed' (violation found) | 'unknown'
    depth: int
    trace: str = ""


def bmc(sys: System, depth: int, state_props: Sequence[tuple[str, StatePred]] = (),
        step_props: Sequence[tuple[str, StepPred]] = ()) -> BmcResult:
    """Bounded model checking: search every run of at most ``depth`` transitions from an initial
    state for a state violating a state property or a transition violating a step property.
    A violation is returned as a concrete, printed trace (a genuine run, not an induction CTI)."""
    solver = z3.Solver()
    solver.set("timeout", 20000)
    states = [sys.state("b0")]
    ins: list[dict[str, Expr]] = []
    solver.add(sys.init(states[0]))
    for k in range(depth + 1):
        s = states[k]
        bad = [z3.Not(p(s)) for _, p in state_props]
        if k > 0:
            bad += [z3.Not(q(states[k - 1], ins[k - 1], s)) for _, q in step_props]
        solver.push()
        solver.add(z3.Or(*bad) if bad else z3.BoolVal(False))
        r = solver.check()
        if r == z3.sat:
            m = solver.model()
            return BmcResult("failed", k, render_trace(sys, m, states, ins, state_props, step_props))
        solver.pop()
        if r != z3.unsat:
            return BmcResult("unknown", k)
        if k == depth:
            break
        i, s2 = sys.input(f"b{k}"), sys.state(f"b{k + 1}")
        solver.add(sys.trans(s, i, s2), sys.assume(s, i))
        ins.append(i)
        states.append(s2)
    return BmcResult("proved", depth)


def cover(sys: System, depth: int, goals: Sequence[tuple[str, StepPred]]) -> dict[str, int | None]:
    """For each goal (a step predicate), the length of the shortest run of <= depth transitions
    whose last transition satisfies it, or None: shows the encoding is not vacuous (every
    command can fire, every exit status is reachable)."""
    found: dict[str, int | None] = {n: None for n, _ in goals}
    solver = z3.Solver()
    solver.set("timeout", 20000)
    states = [sys.state("c0")]
    solver.add(sys.init(states[0]))
    for k in range(depth):
        i, s2 = sys.input(f"c{k}"), sys.state(f"c{k + 1}")
        solver.add(sys.trans(states[k], i, s2), sys.assume(states[k], i))
        for name, g in goals:
            if found[name] is None:
                solver.push()
                solver.add(g(states[k], i, s2))
                if solver.check() == z3.sat:
                    found[name] = k + 1
                solver.pop()
        states.append(s2)
    return found


def render_trace(sys: System, m: z3.ModelRef, states: Sequence[State], ins: Sequence[Inputs],
                 state_props: Sequence[tuple[str, StatePred]] = (),
                 step_props: Sequence[tuple[str, StepPred]] = ()) -> str:
    """A concrete run: each state, and between states the command that fired with its inputs."""

    def ev(e: Expr) -> Any:
        return m.eval(e, model_completion=True)

    lines = [f"s0: {sys.show(ev, states[0])}"]
    for k in range(1, len(states)):
        s, i, s2 = states[k - 1], ins[k - 1], states[k]
        fired = [c.name for c in sys.commands if z3.is_true(ev(sys.step_by(c, s, i, s2)))]
        shown_in = sys.show_inputs(ev, fired, i)
        lines.append(f"  --{'/'.join(fired) or '?'}({shown_in})-->")
        lines.append(f"s{k}: {sys.show(ev, s2)}")
    last = len(states) - 1
    broken = [n for n, p in state_props if z3.is_false(ev(p(states[last])))]
    if last > 0:
        broken += [n for n, q in step_props if z3.is_false(ev(q(states[last - 1], ins[last - 1], states[last])))]
    lines.append(f"violates: {', '.join(broken)}")
    return "\n".join(lines)


def _cti(sys: System, m: z3.ModelRef | None, *states: State) -> str:
    """A counterexample to induction: the (possibly unreachable) state(s) Z3 found."""
    if m is None:
        return ""

    def ev(e: Expr) -> Any:
        return m.eval(e, model_completion=True)

    return " ; ".join(sys.show(ev, s) for s in states)
