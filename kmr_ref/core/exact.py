"""Exact numbers for knob values, costs and budgets (``KMR.exact.*``)."""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Rational, Real

from kmr_ref.core.errors import KMRError

Exact = int | Fraction


def to_exact(x: object, *, clause: str, error: type[KMRError], what: str) -> Exact:
    """Convert ``x`` to an exact rational.

    ``KMR.exact.binary64``: a binary64 float denotes the rational written by its shortest
    round-trip decimal representation (Python ``repr``), so ``0.7`` is ``7/10``, never
    ``0.6999999999999999555910790149937...``. Booleans, NaN and infinities are refused.
    """
    if isinstance(x, bool):
        raise error(clause, f"{what} must be a number, got bool {x!r}")
    if isinstance(x, (int, Fraction)) and type(x) not in (int, Fraction):  # KMR.exact.plain
        raise error("KMR.exact.plain", f"{what} must be a plain int or Fraction, got the subclass "
                                       f"{type(x).__name__} (it may redefine comparison)")
    if isinstance(x, int):
        return x
    if isinstance(x, Fraction):
        return x if x.denominator != 1 else int(x.numerator)
    if isinstance(x, Rational):  # e.g. numpy integers
        r = Fraction(int(x.numerator), int(x.denominator))
        return r if r.denominator != 1 else int(r.numerator)
    if isinstance(x, Real) and not isinstance(x, float):  # e.g. numpy.float32: converted to binary64 (exact)
        x = float(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise error(clause, f"{what} must be finite, got {x!r}")
        q = Fraction(float.__repr__(x))  # KMR.exact.binary64 (float.__repr__: numpy subclasses too)
        return q if q.denominator != 1 else int(q.numerator)
    if isinstance(x, str):
        try:
            q = Fraction(x)
        except (ValueError, ZeroDivisionError) as e:
            raise error(clause, f"{what} {x!r} is not a rational literal") from e
        return q if q.denominator != 1 else int(q.numerator)
    raise error(clause, f"{what} must be int, Fraction, float or a rational string, got {type(x).__name__}")


def is_exact(x: object) -> bool:
    """True for the exact cost types of ``KMR.meter.cost-exact``: plain int and Fraction, never
    bool nor any other subclass (``KMR.exact.plain``)."""
    return type(x) is int or type(x) is Fraction


def fmt_exact(x: Exact) -> str:
    """Canonical text of an exact number: ``7``, ``7/10``."""
    return str(x)
