"""Rules and the KMR triple (``KMR.rule.*``, ``KMR.triple.def``)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from kmr_ref.core.knobs import Knob, KnobValue
from kmr_ref.core.meters import CostMeter, InformativeMeter, QualityMeter, as_cost_meter, as_quality_meter

M = TypeVar("M")


class Rule(Protocol[M]):
    """``KMR.rule.def``: ``T(M, k, v) -> M'``.

    ``KMR.rule.deterministic``: equal input bytes and equal (k, v) give equal output bytes.
    ``KMR.rule.no-mutation``: the input model is never modified (untouched tensors may be shared).
    ``KMR.rule.domain-error``: a model the rule cannot transform raises RuleInputError; a value
    outside the knob's domain raises KnobDomainError.
    """

    def knobs(self) -> Sequence[Knob]: ...

    def apply(self, model: M, knob: str, value: KnobValue) -> M: ...


@dataclass(frozen=True)
class KMRTriple(Generic[M]):
    """``KMR.triple.def``: a method = (knobs K, rule T, meters: cost C, quality Q, informative)."""

    name: str
    rule: Rule[M]
    cost: CostMeter[M]
    quality: QualityMeter[M] | None = None
    informative: tuple[InformativeMeter[M], ...] = field(default=())

    def __post_init__(self) -> None:
        # KMR.meter.cost-exact / KMR.meter.quality: a plain callable is wrapped, so its values are
        # validated like any meter's (a float cost can never slip through)
        object.__setattr__(self, "cost", as_cost_meter(self.cost))
        if self.quality is not None:
            object.__setattr__(self, "quality", as_quality_meter(self.quality))

    @property
    def knobs(self) -> Sequence[Knob]:
        return self.rule.knobs()


class AnalysisScope:
    """``KMR.rule.analysis-scope``: what rules and meters computed about model objects during one
    policy call (support checks, parameter order, per-tensor counts), keyed by (kind, object
    identity). It holds each object it is given strongly, so an identity stays valid while the
    scope lives; it is dropped, with all it holds, when the scope ends."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Hashable, int], tuple[object, object]] = {}

    def get(self, kind: Hashable, obj: object) -> object | None:
        """What was put for ``(kind, obj)`` in this scope, else None."""
        e = self._memo.get((kind, id(obj)))
        return e[1] if e is not None and e[0] is obj else None

    def put(self, kind: Hashable, obj: object, value: object) -> None:
        self._memo[(kind, id(obj))] = (obj, value)

    def __len__(self) -> int:
        return len(self._memo)


_SCOPE: ContextVar[AnalysisScope | None] = ContextVar("kmr_analysis_scope", default=None)


@contextmanager
def analysis_scope() -> Iterator[AnalysisScope]:
    """``KMR.rule.analysis-scope``: a block during which the models shown are not modified
    (``KMR.policy.no-mutation``), so rules and meters may keep what they computed about a model
    object for the rest of the block. Nested blocks share the outermost scope. Outside any block
    :func:`current_scope` is None and nothing is kept."""
    outer = _SCOPE.get()
    if outer is not None:
        yield outer
        return
    scope = AnalysisScope()
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current_scope() -> AnalysisScope | None:
    """The innermost active :func:`analysis_scope` of this thread/context, or None."""
    return _SCOPE.get()


class ReusingRule(Generic[M]):
    """``KMR.rule.reuse``: a rule that returns the output it already computed for the same input
    model object and the same (k, v) instead of applying ``rule`` again (valid because rules are
    deterministic, ``KMR.rule.deterministic``, and nothing modifies the models shown,
    ``KMR.policy.no-mutation``; Algorithm 1's trace is unchanged).

    Memory: it keeps the input model object of its latest call and the outputs computed from it,
    at most one per distinct (k, v); a call with another input object drops them all (so it never
    holds more than one state's candidates), :meth:`retain` drops all but one (the greedy policy
    calls it as its best candidate changes, so under greedy it holds at most two outputs), and
    :meth:`clear` drops everything. A failing application keeps nothing. ``applied`` and ``reused``
    count the inner rule's applications and the outputs returned again (informative)."""

    def __init__(self, rule: Rule[M]) -> None:
        self.rule = rule
        self._input: object | None = None
        self._out: dict[tuple[str, type, KnobValue], M] = {}
        self.applied = 0
        self.reused = 0

    def knobs(self) -> Sequence[Knob]:
        return self.rule.knobs()

    def apply(self, model: M, knob: str, value: KnobValue) -> M:
        if model is not self._input:  # KMR.rule.reuse: only the latest input's outputs are kept
            self._input, self._out = model, {}
        key = (knob, type(value), value)
        if key in self._out:
            self.reused += 1
            return self._out[key]
        out = self.rule.apply(model, knob, value)
        self.applied += 1
        self._out[key] = out
        return out

    def retain(self, model: M, knob: str, value: KnobValue) -> None:
        """Drop every kept output except T(model, knob, value) (if it is kept)."""
        key = (knob, type(value), value)
        if model is self._input and key in self._out:
            self._out = {key: self._out[key]}
        else:
            self.clear()

    def clear(self) -> None:
        self._input, self._out = None, {}

    @property
    def held(self) -> int:
        """How many outputs it holds now."""
        return len(self._out)


def reusing(rule: Rule[M]) -> ReusingRule[M]:
    """``KMR.rule.reuse``: ``rule`` wrapped so that Algorithm 1 takes the output a policy already
    computed for the current model (a rule already wrapped is returned as is)."""
    return rule if isinstance(rule, ReusingRule) else ReusingRule(rule)
