"""Checked mode: the assumptions of Proposition 1 checked at every call (``KMR.policy.no-mutation``,
``KMR.rule.no-mutation``, ``KMR.meter.deterministic``).

Algorithm 1 trusts its callbacks: the policy and the meters must not modify the models they are
shown, the rule must not modify its input, and the cost meter must give one value per model.
Copying every model to enforce that would cost a full copy per step, so the reference does not;
``checked`` wraps a triple and a policy so that every call fingerprints the models it is shown
before and after, and every model's cost is remembered by fingerprint. The first call that
breaks an assumption raises :class:`~kmr_ref.core.errors.ContractError` naming the clause.

    triple, policy = checked(triple, policy)            # fingerprint: pickled bytes
    triple, policy = checked(triple, policy, fingerprint=my_tensor_hash)
    budgeted_kmr(model, triple, policy, B, N)

The test suite runs its toy methods through it; use it to debug your own rules and policies
(the default fingerprint pickles the model: slow for a large ``nn.Module``; pass a cheaper one,
e.g. a hash of every tensor's bytes).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kmr_ref.core.errors import ContractError
from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import Knob, KnobValue
from kmr_ref.core.meters import CostMeter, QualityMeter
from kmr_ref.core.policy import Policy, PolicyState, Proposal, Stop
from kmr_ref.core.rules import KMRTriple, Rule

M = TypeVar("M")


def pickled(model: object) -> bytes:
    """The default fingerprint: the model's pickled bytes (equal bytes = the same model)."""
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class _Ledger(Generic[M]):
    fp: Callable[[M], Hashable]
    costs: dict[Hashable, Exact] = field(default_factory=dict)

    def unchanged(self, before: Hashable, model: M, clause: str, who: str) -> None:
        if self.fp(model) != before:
            raise ContractError(clause, f"{who} modified the model it was shown")


@dataclass(frozen=True)
class _CheckedRule(Generic[M]):
    inner: Rule[M]
    ledger: _Ledger[M]

    def knobs(self) -> Sequence[Knob]:
        return self.inner.knobs()

    def apply(self, model: M, knob: str, value: KnobValue) -> M:
        before = self.ledger.fp(model)
        out = self.inner.apply(model, knob, value)
        self.ledger.unchanged(before, model, "KMR.rule.no-mutation", f"rule {type(self.inner).__name__}")
        return out


def checked(triple: KMRTriple[M], policy: Policy[M],
            fingerprint: Callable[[M], Hashable] = pickled) -> tuple[KMRTriple[M], Policy[M]]:
    """``triple`` and ``policy`` wrapped so that every call checks the assumptions of Proposition 1."""
    led: _Ledger[M] = _Ledger(fingerprint)
    cost = triple.cost

    def cost_fn(model: M) -> Exact:
        before = led.fp(model)
        c = cost(model)
        led.unchanged(before, model, "KMR.meter.deterministic", f"cost meter {cost.name!r}")
        seen = led.costs.setdefault(before, c)
        if seen != c:
            raise ContractError("KMR.meter.deterministic",
                                f"cost meter {cost.name!r} measured the same model as {seen}, then as {c}")
        return c

    q = triple.quality
    quality: QualityMeter[M] | None = None
    if q is not None:
        qm = q

        def quality_fn(model: M) -> float:
            before = led.fp(model)
            v = qm(model)
            led.unchanged(before, model, "KMR.policy.no-mutation", f"quality meter {qm.name!r}")
            return v

        quality = QualityMeter(qm.name, quality_fn)
    tri = KMRTriple(triple.name, _CheckedRule(triple.rule, led), CostMeter(cost.name, cost_fn, cost.unit),
                    quality, triple.informative)

    def pol(state: PolicyState[M]) -> Proposal | Stop:
        before = led.fp(state.model)
        out = policy(state)  # (the state and its trace are immutable; the model may not be)
        led.unchanged(before, state.model, "KMR.policy.no-mutation", "the policy")
        return out

    return tri, pol
