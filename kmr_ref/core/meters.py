"""Meters: functions of a model that measure cost or quality (``KMR.meter.*``)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Generic, Literal, TypeVar

from kmr_ref.core.errors import MeterError
from kmr_ref.core.exact import Exact, is_exact

M = TypeVar("M")
MeterKind = Literal["cost", "quality", "informative"]


@dataclass(frozen=True)
class CostMeter(Generic[M]):
    """``KMR.meter.cost-exact``: a normative cost is an exact int or Fraction, >= 0."""

    name: str
    fn: Callable[[M], Exact]
    unit: str = ""

    def __call__(self, model: M) -> Exact:
        c = self.fn(model)
        if isinstance(c, Integral) and not isinstance(c, (bool, int)):  # e.g. numpy.int64
            c = int(c)
        if isinstance(c, (int, Fraction)) and not isinstance(c, bool) and not is_exact(c):  # KMR.exact.plain
            raise MeterError("KMR.exact.plain",
                             f"cost meter {self.name!r} returned an instance of {type(c).__name__}, a subclass "
                             "of int/Fraction (it may redefine comparison); return a plain int or Fraction")
        if not is_exact(c):  # KMR.meter.cost-exact
            raise MeterError("KMR.meter.cost-exact",
                             f"cost meter {self.name!r} returned {type(c).__name__} {c!r}; "
                             "normative costs are exact (int or Fraction)")
        if c < 0:
            raise MeterError("KMR.meter.cost-exact", f"cost meter {self.name!r} returned {c} < 0")
        return c


@dataclass(frozen=True)
class QualityMeter(Generic[M]):
    """``KMR.meter.quality``: a real number, higher is better. Never used for acceptance in
    Algorithm 1; used by policies (greedy) and reported in the trace."""

    name: str
    fn: Callable[[M], float]

    def __call__(self, model: M) -> float:
        q = self.fn(model)
        if isinstance(q, Real) and not isinstance(q, (bool, int, float)):  # e.g. numpy.float32
            q = float(q)
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise MeterError("KMR.meter.quality", f"quality meter {self.name!r} returned {type(q).__name__}")
        if not math.isfinite(q):
            raise MeterError("KMR.meter.quality",
                             f"quality meter {self.name!r} returned {q!r}; a finite real is required")
        return float(q)


@dataclass(frozen=True)
class InformativeMeter(Generic[M]):
    """``KMR.meter.informative``: e.g. wall time. Reported only; never normative."""

    name: str
    fn: Callable[[M], float]
    kind: MeterKind = "informative"

    def __call__(self, model: M) -> float:
        return float(self.fn(model))


def as_cost_meter(m: CostMeter[M] | Callable[[M], Exact]) -> CostMeter[M]:
    """A CostMeter as is; a plain callable wrapped (``KMR.meter.cost-exact`` applies to it)."""
    return m if isinstance(m, CostMeter) else CostMeter(getattr(m, "__name__", "cost"), m)


def as_quality_meter(m: QualityMeter[M] | Callable[[M], float]) -> QualityMeter[M]:
    """A QualityMeter as is; a plain callable wrapped (``KMR.meter.quality`` applies to it)."""
    return m if isinstance(m, QualityMeter) else QualityMeter(getattr(m, "__name__", "quality"), m)


# KMR.meter.delta: id(child) -> (weak ref to child, weak ref to parent, changed names)
_DERIVED: dict[int, tuple[weakref.ref[Any], weakref.ref[Any], frozenset[str]]] = {}


def record_derivation(child: object, parent: object, changed: Iterable[str]) -> None:
    """``KMR.meter.delta``: record that the rule output ``child`` is ``parent`` with only the
    parameters named in ``changed`` replaced (same tree, same other parameter objects). The record
    holds neither model (weak references); it vanishes with ``child``. A model that cannot be
    weakly referenced gets no record (meters then measure it in full)."""
    key = id(child)

    def drop(r: weakref.ref[Any]) -> None:
        e = _DERIVED.get(key)
        if e is not None and e[0] is r:
            del _DERIVED[key]

    try:
        entry = (weakref.ref(child, drop), weakref.ref(parent), frozenset(changed))
    except TypeError:  # not weak-referenceable (e.g. an int or a tuple model)
        return
    _DERIVED[key] = entry


def derivation(child: object) -> tuple[Any, frozenset[str]] | None:
    """``KMR.meter.delta``: ``(parent, changed names)`` recorded for ``child``, or None (no record,
    or the parent no longer exists)."""
    e = _DERIVED.get(id(child))
    if e is None or e[0]() is not child:
        return None
    parent = e[1]()
    return None if parent is None else (parent, e[2])
