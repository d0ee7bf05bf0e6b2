"""The adapter protocol: what another implementation provides to be checked against the vectors.

One small Protocol per vector ``kind``. The runner decodes a vector's ``input`` into plain Python and
numpy values, calls the adapter (twice: ``KMR.rule.deterministic``), checks that the arrays it
passed are unchanged afterwards (``KMR.rule.no-mutation``), encodes the result in the vector's
language-neutral shape and compares it with ``expected``, exactly.

Errors: when the vector expects ``{"error": "<clause ID>"}``, the adapter must raise an exception
whose ``clause`` attribute is that clause ID (``kmr_ref``'s ``KMRError`` has one; a third-party
library wraps its own error in :class:`RuleError`). Any other exception is a failure.

Outcomes other than pass/fail: raise :class:`NotSupported` (the feature is not implemented: the
vector reports ``not-supported``) or :class:`SkipVector` (this vector does not apply: ``skip``;
allowed on error vectors only — raised on any other vector it counts as a failure). A report is
``ok`` only when nothing failed and at least one vector passed.
An adapter whose ``checks_input`` attribute is False (e.g. a bare kernel that assumes validated
input) is not called on error vectors: they report ``skip``.

This module imports no torch: a third-party adapter needs numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

Json = Any
Scope = Literal["global", "per-tensor"]
Scheme = Literal["symmetric", "asymmetric"]
F32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class RuleError(Exception):
    """An error a third-party adapter raises to report the clause its library refused the input by."""

    def __init__(self, clause: str, message: str = "") -> None:
        super().__init__(f"[{clause}] {message}")
        self.clause = clause


class NotSupported(Exception):
    """The implementation does not provide this feature: the vector reports ``not-supported``."""


class SkipVector(Exception):
    """The vector does not apply to this implementation: it reports ``skip``."""


# --- prune-magnitude -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PruneOutput:
    """The pruned tensors (same order, shapes and dtype as the input) and the cost meter's value
    (``KMR.prune.cost-meter``: the number of nonzero prunable entries, over all input tensors)."""

    tensors: Sequence[F32Array]
    cost: int


class PruneMagnitudeAdapter(Protocol):
    """``kind: prune-magnitude`` (``spec/methods/pruning.md``).

    ``tensors``: the model's prunable tensors in tensor order (``KMR.prune.tensor-order``), as
    (qualified name, float32 array) pairs. ``knob``: ``"sparsity"`` or ``"sparsity@<name>"``.
    ``scope``: the rule's setting for ``sparsity``. ``sparsity``: the value as the caller spells it:
    a ``Fraction`` (the vector's ``"p/q"`` string), an ``int``, a binary64 ``float`` (which denotes
    its shortest decimal, ``KMR.exact.binary64``) or, in error vectors, anything else (e.g. a bool).
    Must not modify the arrays it is given."""

    checks_input: bool

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope,
              sparsity: Any) -> PruneOutput: ...


# --- quant-uniform -------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantOutput:
    """Algorithm Q's results for a (G, L) weight: integer ``codes`` (G, L), float32 ``scale`` (G,),
    integer ``zp`` (G,) and float32 ``dequantized`` (G, L)."""

    codes: npt.ArrayLike
    scale: npt.ArrayLike
    zp: npt.ArrayLike
    dequantized: npt.ArrayLike


class QuantUniformAdapter(Protocol):
    """``kind: quant-uniform`` (``spec/methods/quantization.md``, Algorithm Q): quantize each row
    of the float32 array ``w`` (G, L) as one group with ``bits`` and ``scheme``, and dequantize.
    ``bits`` is passed as the vector spells it (error vectors pass out-of-range values). Must not
    modify ``w``."""

    checks_input: bool

    def quantize(self, w: F32Array, bits: Any, scheme: Scheme) -> QuantOutput: ...


# --- decoding and encoding (shared by the runners) -----------------------------------------------

def f32_array(bits: Sequence[str], shape: Sequence[int]) -> F32Array:
    """Binary32 bit patterns (8 hex digits each, row-major) as a float32 array of ``shape``."""
    raw = np.array([int(b, 16) for b in bits], dtype=np.uint32)
    return raw.view(np.float32).reshape(tuple(int(d) for d in shape))


def bit_patterns(a: npt.ArrayLike) -> list[str]:
    """Row-major bit patterns of a float32 array (any other dtype is refused, not converted)."""
    arr = np.asarray(a)
    if arr.dtype != np.float32:
        raise TypeError(f"expected a float32 array, got {arr.dtype}")
    return [f"{int(x):08x}" for x in np.ascontiguousarray(arr).reshape(-1).view(np.uint32)]


def int_list(a: npt.ArrayLike) -> list[Any]:
    """An integer array as (nested) JSON integers; a float array is refused."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"expected an integer array, got {arr.dtype}")
    out: list[Any] = arr.astype(np.int64).tolist()
    return out


def decode_spelling(x: Json) -> Any:
    """A knob value as the vector spells it: ``"p/q"`` strings become ``Fraction``; JSON numbers,
    booleans and other strings pass unchanged (their normalization is what is tested)."""
    if isinstance(x, str):
        try:
            return Fraction(x) if "/" in x or x.lstrip("-").isdigit() else x
        except (ValueError, ZeroDivisionError):
            return x
    return x


def error_clause(e: BaseException) -> str | None:
    c = getattr(e, "clause", None)
    return c if isinstance(c, str) else None


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"

