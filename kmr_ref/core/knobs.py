"""Knobs: named controls with an ordered domain (``KMR.knob.*``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from kmr_ref.core.errors import KnobDomainError
from kmr_ref.core.exact import Exact, to_exact

KnobValue = int | Fraction | str
Direction = Literal["increasing", "decreasing"]


@dataclass(frozen=True)
class FiniteDomain:
    """``KMR.knob.domain-finite``: a finite, ordered tuple of distinct values (order = listing order)."""

    values: tuple[KnobValue, ...]

    def __post_init__(self) -> None:
        if len(self.values) == 0 or len(set(self.values)) != len(self.values):
            raise KnobDomainError("KMR.knob.domain-finite", "a finite domain needs >= 1 distinct values")

    def normalize(self, v: object) -> KnobValue:
        for u in self.values:
            if type(u) is type(v) and u == v:
                return u
        if not isinstance(v, str):
            q = _exact_or_none(v)
            for u in self.values:
                if not isinstance(u, str) and q is not None and u == q:
                    return u
        raise KnobDomainError("KMR.knob.domain-finite", f"{v!r} is not one of {list(self.values)!r}")

    def grid(self) -> Iterator[KnobValue]:
        yield from self.values


@dataclass(frozen=True)
class IntRange:
    """``KMR.knob.domain-int``: the integers ``lo..hi`` inclusive."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise KnobDomainError("KMR.knob.domain-int", f"empty range {self.lo}..{self.hi}")

    def normalize(self, v: object) -> KnobValue:
        if isinstance(v, bool) or not isinstance(v, int):
            q = _exact_or_none(v)
            if not isinstance(q, int):
                raise KnobDomainError("KMR.knob.domain-int", f"{v!r} is not an integer")
            v = q
        if not self.lo <= v <= self.hi:
            raise KnobDomainError("KMR.knob.domain-int", f"{v} is outside [{self.lo}, {self.hi}]")
        return v

    def grid(self) -> Iterator[KnobValue]:
        yield from range(self.lo, self.hi + 1)


@dataclass(frozen=True)
class RealInterval:
    """``KMR.knob.domain-real``: rationals in ``[lo, hi]`` (an end may be open: ``lo_open``,
    ``hi_open``); ``step`` (if set) is the policy grid ``lo, lo+step, ...`` without open ends
    (the grid guides policies; any exact value in the interval is admissible)."""

    lo: Fraction
    hi: Fraction
    step: Fraction | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __post_init__(self) -> None:
        if self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open)):
            raise KnobDomainError("KMR.knob.domain-real", f"empty interval {self.lo}, {self.hi}")

    def contains(self, q: Fraction | int) -> bool:
        above = self.lo < q if self.lo_open else self.lo <= q
        below = q < self.hi if self.hi_open else q <= self.hi
        return above and below

    def normalize(self, v: object) -> KnobValue:
        q = to_exact(v, clause="KMR.knob.domain-real", error=KnobDomainError, what="knob value")
        if not self.contains(q):
            raise KnobDomainError("KMR.knob.domain-real", f"{q} is outside {'(' if self.lo_open else '['}"
                                  f"{self.lo}, {self.hi}{')' if self.hi_open else ']'}")
        return q

    def grid(self) -> Iterator[KnobValue]:
        if self.step is None or self.step <= 0:
            raise KnobDomainError("KMR.knob.domain-real", "this interval has no grid step")
        x = self.lo
        while x <= self.hi:
            if self.contains(x):
                yield x if x.denominator != 1 else int(x.numerator)
            x += self.step


Domain = FiniteDomain | IntRange | RealInterval


@dataclass(frozen=True)
class Knob:
    """``KMR.knob.def``: a name, a domain, and which direction is more aggressive (lowers cost)."""

    name: str
    domain: Domain
    more_aggressive: Direction = "increasing"

    def check(self, value: object) -> KnobValue:
        """``KMR.knob.domain``: the normalized value, or KnobDomainError."""
        return self.domain.normalize(value)

    def grid(self) -> list[KnobValue]:
        return list(self.domain.grid())


def real_knob(name: str, lo: object, hi: object, step: object | None = None,
              more_aggressive: Direction = "increasing") -> Knob:
    """A RealInterval knob from float/str/Fraction bounds (converted by ``KMR.exact.binary64``)."""
    c = "KMR.knob.domain-real"
    flo = Fraction(to_exact(lo, clause=c, error=KnobDomainError, what="lo"))
    fhi = Fraction(to_exact(hi, clause=c, error=KnobDomainError, what="hi"))
    fst = None if step is None else Fraction(to_exact(step, clause=c, error=KnobDomainError, what="step"))
    if flo > fhi:
        raise KnobDomainError(c, f"empty interval [{flo}, {fhi}]")
    return Knob(name, RealInterval(flo, fhi, fst), more_aggressive)


def find_knob(knobs: Sequence[Knob], name: str) -> Knob:
    """``KMR.knob.unknown``: the knob named ``name`` or KnobDomainError."""
    for k in knobs:
        if k.name == name:
            return k
    raise KnobDomainError("KMR.knob.unknown", f"no knob named {name!r}; known: {[k.name for k in knobs]}")


def _exact_or_none(v: object) -> Exact | None:
    try:
        return to_exact(v, clause="KMR.knob.domain", error=KnobDomainError, what="knob value")
    except KnobDomainError:
        return None
