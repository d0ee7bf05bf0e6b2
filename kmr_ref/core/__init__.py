"""The KMR framework, generic over the model type. Imports no torch (``KMR.core.no-torch``)."""

from kmr_ref.core.budgeted import budgeted_kmr
from kmr_ref.core.compose import ComposedResult, Phase, PhaseOutcome, composed_kmr
from kmr_ref.core.errors import (
    BudgetError,
    KMRError,
    KnobDomainError,
    MeterError,
    PolicyError,
    RuleInputError,
)
from kmr_ref.core.exact import Exact, to_exact
from kmr_ref.core.knobs import FiniteDomain, IntRange, Knob, KnobValue, RealInterval, real_knob
from kmr_ref.core.meters import CostMeter, InformativeMeter, QualityMeter
from kmr_ref.core.policy import GreedyPolicy, Policy, PolicyState, Proposal, ScheduledPolicy, Stop
from kmr_ref.core.rules import KMRTriple, Rule
from kmr_ref.core.trace import KMRResult, Status, StepRecord

__all__ = [
    "BudgetError",
    "ComposedResult",
    "CostMeter",
    "Exact",
    "FiniteDomain",
    "GreedyPolicy",
    "InformativeMeter",
    "IntRange",
    "KMRError",
    "KMRResult",
    "KMRTriple",
    "Knob",
    "KnobDomainError",
    "KnobValue",
    "MeterError",
    "Phase",
    "PhaseOutcome",
    "Policy",
    "PolicyError",
    "PolicyState",
    "Proposal",
    "QualityMeter",
    "RealInterval",
    "Rule",
    "RuleInputError",
    "ScheduledPolicy",
    "Status",
    "StepRecord",
    "Stop",
    "budgeted_kmr",
    "composed_kmr",
    "real_knob",
    "to_exact",
]
