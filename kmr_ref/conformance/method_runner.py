"""The part of the method runners (``prune-magnitude``, ``quant-uniform``) that does not depend on
the kind: call the adapter twice, check its input arrays are unchanged, compare with ``expected``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kmr_ref.conformance.adapters import NotSupported, SkipVector, describe, error_clause
from kmr_ref.conformance.vectors import compare

Json = Any


def call_encoded(fn: Callable[[], Json], with_message: bool = False) -> Json:
    """``fn()``'s encoded result, or ``{"error": <clause>}`` when it raises an error naming a clause
    (with ``"message"`` too when ``with_message``). An error without a clause is reported as
    ``{"error": "<no clause: ...>"}`` (never equal to a clause ID, so it fails); NotSupported and
    SkipVector propagate."""
    try:
        return fn()
    except (NotSupported, SkipVector):
        raise
    except Exception as e:  # a crash is a reported failure, not an exception of the runner
        clause = error_clause(e)
        out = {"error": clause if clause is not None else f"<no clause: {describe(e)}>"}
        return {**out, "message": str(e)} if with_message else out



def again(call: Callable[[], Json]) -> Json:
    """The encoded result once more, for a runner's diagnosis (None if the adapter declines now)."""
    try:
        return call_encoded(call)
    except (NotSupported, SkipVector):
        return None

def run_checked(vec: Mapping[str, Json], inputs: Sequence[np.ndarray[Any, Any]], checks_input: bool,
                fn: Callable[[], Json]) -> tuple[bool, str]:
    """Run one method vector: ``fn`` calls the adapter on ``inputs`` and encodes its result.

    Checks ``KMR.rule.deterministic`` (two calls, equal results), ``KMR.rule.no-mutation`` (the input
    arrays' bytes are unchanged) and the comparison with ``expected`` (exact unless the vector gives
    a tolerance). An adapter with ``checks_input`` False is not run on error vectors (``skip``)."""
    expected = vec["expected"]
    if "error" in expected and not checks_input:
        raise SkipVector("this implementation assumes validated input (no input checks)")
    before = [a.tobytes() for a in inputs]
    try:
        got = call_encoded(fn)
        again = call_encoded(fn)
    except SkipVector as e:
        if "error" in expected:
            raise
        # only error vectors may be skipped: an adapter must not dodge the vectors it would fail
        return False, f"SkipVector on a non-error vector ({e}); use NotSupported for a whole feature"
    diffs: list[str] = []
    if [a.tobytes() for a in inputs] != before:
        diffs.append("KMR.rule.no-mutation: the implementation modified the arrays it was given")
    if again != got:
        diffs.append("KMR.rule.deterministic: a second call on the same input gave a different result")
    diffs += compare(expected, got, vec.get("tolerance"))
    return not diffs, "\n".join(diffs)
