"""Code mutants of ``kmr_ref/core`` that the code-level checks must kill.

Each mutant is one textual edit of ``budgeted.py`` or ``compose.py``. ``run_mutant`` copies the
``kmr_ref`` package to a scratch folder (never the working tree), applies the edit there and runs
the code-level checks of this package in a child process with that copy first on ``PYTHONPATH``:
the exhaustive small worlds (``exhaustive``: interpreter, faults, Proposition 1, no Z3) and then
an interrupt and an error at every line (``everywhere``). A mutant is *killed* when a check
reports a violation (exit status 3); any other outcome (passes, crashes on import, times out)
is a survivor. The three mutants named by issue 8 are the first three.

``python -m kmr_proofs.code_mutants [NAME ...]`` runs them (all by default) and prints one line
per mutant; ``python -m kmr_proofs.code_mutants --check`` is the child's entry point.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# name: (file under kmr_ref/core, old text, new text, what it breaks)
MUTANTS: dict[str, tuple[str, str, str, str]] = {
    "compose-phase-limit-N": (
        "compose.py", "max_steps - acc.used,  # KMR.alg10.phase-run", "max_steps,  # KMR.alg10.phase-run",
        "each phase gets the whole step limit N instead of N - used (KMR.alg10.phase-run, P1b)"),
    "compose-no-carry": (
        "compose.py", "res = budgeted_kmr(acc.model,", "res = budgeted_kmr(model,",
        "each phase starts from M_0 instead of the last accepted model (KMR.alg10.phase-run, P1a/P1e)"),
    "budgeted-no-reconcile": (
        "budgeted.py",
        "            if trace and trace[-1].accepted and trace[-1].cost_after != c_cur:\n"
        "                m_cur, c_cur, q_cur = m_new, c_new, q_new  # interrupted between recording and accepting\n",
        "            pass\n",
        "the interrupt-reconcile branch deleted (KMR.alg1.interrupt, P1e)"),
    "budgeted-no-after-loop-partial": (
        "budgeted.py",
        "        attach_partial(e, KMRResult(m_cur, Status.INTERRUPTED, tuple(trace), B, c0, c_cur, q0, q_cur))\n"
        "        raise\n",
        "        raise\n",
        "no partial result after the loop (KMR.alg1.after-loop)"),
    "budgeted-le-for-lt": ("budgeted.py", "if c_new < c_cur:", "if c_new <= c_cur:", "strict progress weakened"),
    "budgeted-t-gt-N": ("budgeted.py", "if t >= N:", "if t > N:", "one step too many (P1b)"),
    "budgeted-keep-rejected": ("budgeted.py", "status = Status.STALLED", "m_cur = m_new; status = Status.STALLED",
                               "a rejected proposal becomes the current model (P1e)"),
    "budgeted-policy-sees-new": (
        "budgeted.py", "PolicyState(m_cur, c_cur, q_cur, t, B,", "PolicyState(m_cur, c_cur, q_cur, t + 1, B,",
        "the policy is shown the wrong t (KMR.policy.state)"),
    "budgeted-quality-stale": (
        "budgeted.py", "m_cur, c_cur, q_cur = m_new, c_new, q_new  # KMR.alg1.accept",
        "m_cur, c_cur = m_new, c_new  # KMR.alg1.accept", "the final quality is not the model's"),
    "compose-status-first": (
        "compose.py", "status = res.status  # KMR.alg10.phase-break",
        "status = res.status if i == 0 else status  # KMR.alg10.phase-break", "status of the first phase"),
    "compose-stall-ends": (
        "compose.py", "        if status is Status.INTERRUPTED:\n                break",
        "        if status in (Status.INTERRUPTED, Status.STALLED):\n                break",
        "a stalled phase ends the pipeline (KMR.alg10.phase-break)"),
    "compose-no-merge-on-interrupt": (
        "compose.py",
        "                if res is not None and not merged:  # the phase so far is kept: no record lost\n"
        "                    acc = acc.merged(ph.name, res)\n",
        "", "an interrupt or error after a phase returned drops the phase (KMR.alg1.interrupt)"),
    "compose-skip-ignores-used": (
        "compose.py", "if acc.cost <= B or acc.used >= max_steps:", "if acc.cost <= B:",
        "a phase runs with no steps left (KMR.alg10.skip)"),
}


def _bounds() -> tuple[Any, Any]:
    from kmr_proofs import exhaustive as ex

    return (dataclasses.replace(ex.ALG1_SMALL, costs=(0, 1, 3), budgets=(0, 1), fault_calls=(0, 1)),
            dataclasses.replace(ex.ALG10_SMALL, fault_kinds=("ki-policy", "ki-record", "err-rule")))


@dataclass(frozen=True)
class Outcome:
    name: str
    killed: bool
    seconds: float
    detail: str


def core_dir() -> Path:
    import kmr_ref.core

    return Path(kmr_ref.core.__file__).resolve().parent


def _proofs_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def run_mutant(name: str, timeout: float = 300.0) -> Outcome:
    """Apply mutant ``name`` to a scratch copy of ``kmr_ref`` and run the checks there."""
    fname, old, new, _ = MUTANTS[name]
    t0 = time.perf_counter()
    src_pkg = core_dir().parent
    with tempfile.TemporaryDirectory(prefix=f"kmr-mut-{name}-") as tmp:
        dst = Path(tmp) / "kmr_ref"
        shutil.copytree(src_pkg, dst, ignore=shutil.ignore_patterns("__pycache__", "_spec"))
        target = dst / "core" / fname
        text = target.read_text(encoding="utf-8")
        if text.count(old) != 1:
            return Outcome(name, False, 0.0, f"mutation site found {text.count(old)} times in {fname}")
        target.write_text(text.replace(old, new), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([tmp, str(_proofs_dir())])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            p = subprocess.run([sys.executable, "-m", "kmr_proofs.code_mutants", "--check", str(dst)],
                               capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return Outcome(name, False, round(time.perf_counter() - t0, 2), "timed out")
    out = (p.stdout + p.stderr).strip().splitlines()
    last = out[-1] if out else ""
    return Outcome(name, p.returncode == 3, round(time.perf_counter() - t0, 2),
                   last[:400] if p.returncode == 3 else f"exit {p.returncode}: {last[:300]}")


def check(expect_root: str | None = None) -> int:
    """The child: the code-level checks, fast ones first; 3 on the first violation."""
    from kmr_proofs import everywhere
    from kmr_proofs import exhaustive as ex

    ALG1, ALG10 = _bounds()
    if expect_root is not None and not str(core_dir()).startswith(str(Path(expect_root).resolve())):
        print(f"wrong kmr_ref imported: {core_dir()}")
        return 2
    try:  # fastest first; the bounds of tests/test_exhaustive.py, without Z3
        ex.check_all(ALG10, True, replay=False)
        for mode in everywhere.MODES:
            everywhere.check_all(mode, replay=False)
        ex.check_all(ALG1, False, replay=False)
    except ex.Violation as e:
        print(f"VIOLATION {e}")
        return 3
    print("all checks passed")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--check":
        return check(argv[1] if len(argv) > 1 else None)
    names = argv or list(MUTANTS)
    survived = 0
    if not argv:  # the harness itself: an unmutated scratch copy must pass every check
        MUTANTS["identity"] = ("budgeted.py", "# KMR.alg1.loop-guard", "# KMR.alg1.loop-guard", "no change")
        o = run_mutant("identity")
        del MUTANTS["identity"]
        print(f"{'ok' if o.detail.startswith('exit 0') else 'HARNESS FAILS'} unmutated copy ({o.seconds:.1f} s)")
        survived += not o.detail.startswith("exit 0")
    for n in names:
        o = run_mutant(n)
        survived += not o.killed
        print(f"{'killed  ' if o.killed else 'SURVIVED'} {n} ({o.seconds:.1f} s): {o.detail}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
