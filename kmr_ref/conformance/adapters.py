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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral
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

    ``tensors``: the model's prunable tensors as (qualified name, float32 array) pairs, in the
    vector's order. ``tree``: the module tree in registration order, a list of ``{"name", "type"}``
    (a Linear / Conv1d / Conv2d / Conv3d leaf holding ``<path>.weight``) or ``{"name", "children"}``
    nodes; the tensor order of the tie-break (``KMR.prune.tensor-order``) is the depth-first order of
    its leaves, which need not be the order of ``tensors`` (vectors list them by name on purpose).
    Return the tensors in the order they were given. ``knob``: ``"sparsity"`` or ``"sparsity@<name>"``.
    ``scope``: the rule's setting for ``sparsity``. ``sparsity``: the value as the caller spells it:
    a ``Fraction`` (the vector's ``"p/q"`` string), an ``int``, a binary64 ``float`` (which denotes
    its shortest decimal, ``KMR.exact.binary64``) or, in error vectors, anything else (e.g. a bool).
    Must not modify the arrays it is given."""

    checks_input: bool

    def prune(self, tensors: Sequence[tuple[str, F32Array]], knob: str, scope: Scope,
              sparsity: Any, tree: Sequence[Mapping[str, Any]]) -> PruneOutput: ...


def tree_of(names: Sequence[str], ndims: Sequence[int]) -> list[dict[str, Any]]:
    """The module tree whose depth-first leaf order is ``names`` (``<path>.weight``; a leaf's type
    from its number of dimensions), for vectors that list their tensors in tensor order."""
    root: list[dict[str, Any]] = []
    kinds = {2: "Linear", 3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}
    for name, nd in zip(names, ndims, strict=True):
        *path, _leaf = name.split(".")
        level = root
        for part in path[:-1]:
            node = next((n for n in level if n["name"] == part and "children" in n), None)
            if node is None:
                node = {"name": part, "children": []}
                level.append(node)
            level = node["children"]
        level.append({"name": path[-1] if path else name, "type": kinds.get(nd, "Linear")})
    return root


def tree_order(tree: Sequence[Mapping[str, Any]], prefix: str = "") -> list[str]:
    """``KMR.prune.tensor-order``: the ``<path>.weight`` names of the leaves, depth-first."""
    out: list[str] = []
    for node in tree:
        path = prefix + str(node["name"])
        if "children" in node:
            out += tree_order(node["children"], path + ".")
        else:
            out.append(path + ".weight")
    return out


def exact_cost(c: Any) -> tuple[Any, str]:
    """``KMR.meter.cost-exact`` for a returned cost, as the reference's ``CostMeter`` treats it: an
    integer of any integral type (``numpy.int64`` included) is converted to ``int``; a ``Fraction``
    passes; a float (``5.0`` too), a bool or anything else is refused. Returns (cost, problem)."""
    if isinstance(c, bool):
        return c, f"KMR.meter.cost-exact: the cost is a bool ({c!r}), not an exact number"
    if isinstance(c, Integral):
        return int(c), ""
    if isinstance(c, Fraction):
        return (int(c) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"), ""
    return c, f"KMR.meter.cost-exact: the cost is {type(c).__name__} {c!r}; costs are exact integers or rationals"


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

