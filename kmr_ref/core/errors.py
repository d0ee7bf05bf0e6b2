"""Typed errors. Every error names the spec clause it enforces (``KMR.error.names-clause``)."""

from __future__ import annotations


class KMRError(Exception):
    """Base class: ``clause`` is the stable ID of the violated spec clause."""

    def __init__(self, clause: str, message: str) -> None:
        self.clause = clause
        self.message = message
        super().__init__(f"[{clause}] {message}")


class KnobDomainError(KMRError, ValueError):
    """A knob value outside the knob's domain, or an unknown knob."""


class RuleInputError(KMRError, ValueError):
    """A model a rule cannot transform (NaN/inf weights, integer dtypes, empty tensors, ...)."""


class MeterError(KMRError, TypeError):
    """A meter returned a value of the wrong kind (e.g. a float from a normative cost meter)."""


class BudgetError(KMRError, ValueError):
    """A budget or step limit that is not an exact, finite, admissible value."""


class PolicyError(KMRError, TypeError):
    """A policy returned something that is neither a Proposal nor Stop."""


class ContractError(KMRError, RuntimeError):
    """A callback broke an assumption of Proposition 1 (found by ``kmr_ref.core.checked``): it
    modified a model it was shown, or a meter gave two values for the same model."""
