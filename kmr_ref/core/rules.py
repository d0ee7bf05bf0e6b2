"""Rules and the KMR triple (``KMR.rule.*``, ``KMR.triple.def``)."""

from __future__ import annotations

from collections.abc import Sequence
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
