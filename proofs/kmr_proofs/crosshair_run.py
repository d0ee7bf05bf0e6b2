"""Run CrossHair on the contracts of ``crosshair_contracts`` (a child process of ``kmr prove``).

``python -m kmr_proofs.crosshair_run TIMEOUT`` prints one JSON object:
``{"contract": {"state", "message", "seconds"}, "mutants": [{"name", "clause", "state", "message"}],
"contract10": ..., "mutants10": [...]}`` (the second pair for ``composed_kmr``)
where ``state`` is CrossHair's verdict: ``confirmed`` (every path explored, no failure),
``cannot_confirm`` (time ran out, no failure found), ``post_fail`` / ``exec_err`` (a
counterexample; the message names the failed clause), or ``error`` (the runner itself failed).

Code mutants are ``kmr_ref/core/budgeted.py`` with one textual edit, loaded as a fresh module;
each must make the contract fail at the clause it targets.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from typing import Any

from kmr_proofs import crosshair_contracts as cc


def _analyze(fn: Any, timeout: float) -> tuple[str, str, float]:
    t0 = time.perf_counter()
    state, msg = _analyze_states(fn, timeout)
    return state, msg, round(time.perf_counter() - t0, 3)


def _analyze_states(fn: Any, timeout: float) -> tuple[str, str]:
    import crosshair.core_and_libs  # noqa: F401  (registers CrossHair's models of the stdlib)
    from crosshair.core import analyze_function
    from crosshair.options import AnalysisKind, AnalysisOptionSet

    opts = AnalysisOptionSet(analysis_kind=[AnalysisKind.asserts], per_condition_timeout=timeout,
                             report_all=True, max_uninteresting_iterations=10**6)
    states: list[tuple[str, str]] = []
    for checkable in analyze_function(fn, opts):
        for msg in checkable.analyze():
            states.append((msg.state.value, msg.message))
    if not states:
        return "error", "CrossHair found no checkable contract"
    fails = [s for s in states if s[0] in ("post_fail", "exec_err", "post_err")]
    if fails:
        return fails[0]
    if all(s[0] == "confirmed" for s in states):
        return "confirmed", "all paths explored"
    return "cannot_confirm", "; ".join(m for _, m in states)


def _mutant_impl(old: str, new: str, module: str = "budgeted") -> Any:
    """``kmr_ref.core.<module>`` with one textual edit, loaded as a fresh module; its entry point."""
    spec = importlib.util.find_spec(f"kmr_ref.core.{module}")
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        src = f.read()
    if src.count(old) != 1:
        raise LookupError(f"mutation site {old!r} found {src.count(old)} times in {module}.py")
    name = f"kmr_mutant_{module}"
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    try:
        exec(compile(src.replace(old, new), f"<mutant of {module}.py>", "exec"), mod.__dict__)
    finally:
        del sys.modules[name]
    return mod.budgeted_kmr if module == "budgeted" else mod.composed_kmr


def main(argv: list[str]) -> int:
    timeout = float(argv[0]) if argv else 8.0
    timeout10 = float(argv[1]) if len(argv) > 1 else 3 * timeout  # composed_kmr has more paths
    out: dict[str, Any] = {}
    original = cc.IMPL
    try:
        state, msg, secs = _analyze(cc.p1_contract, timeout)
    except Exception as e:  # report, never crash the proof run
        state, msg, secs = "error", f"{type(e).__name__}: {e}", 0.0
    out["contract"] = {"state": state, "message": msg, "seconds": secs}
    out["mutants"] = []
    for mname, (old, new, clause) in cc.CODE_MUTANTS.items():
        try:
            cc.IMPL = _mutant_impl(old, new)
            state, msg, _ = _analyze(cc.p1_contract, timeout)
        except Exception as e:
            state, msg = "error", f"{type(e).__name__}: {e}"
        finally:
            cc.IMPL = original
        out["mutants"].append({"name": mname, "clause": clause, "state": state, "message": msg})
    try:
        state, msg, secs = _analyze(cc.p10_contract, timeout10)
    except Exception as e:
        state, msg, secs = "error", f"{type(e).__name__}: {e}", 0.0
    out["contract10"] = {"state": state, "message": msg, "seconds": secs}
    out["mutants10"] = []
    original10 = cc.IMPL10
    for mname, (old, new, clause) in cc.CODE_MUTANTS10.items():
        try:
            cc.IMPL10 = _mutant_impl(old, new, "compose")
            state, msg, _ = _analyze(cc.p10_contract, timeout10)
        except Exception as e:
            state, msg = "error", f"{type(e).__name__}: {e}"
        finally:
            cc.IMPL10 = original10
        out["mutants10"].append({"name": mname, "clause": clause, "state": state, "message": msg})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
