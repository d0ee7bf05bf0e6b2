"""Code mutants of kmr_ref/core must be killed by the code-level checks
(``proofs/kmr_proofs/code_mutants.py``; each runs in a scratch copy of ``kmr_ref``, never the
working tree).

The default suite runs the three mutants named by issue 8 (each phase given N instead of N - used,
each phase started from M_0, the interrupt-reconcile branch deleted); ``make mutation`` and
``kmr prove --mutation`` run all of them, and mutmut over all of ``kmr_ref/core``.
"""

from __future__ import annotations

import pytest

from kmr_proofs import code_mutants


@pytest.mark.parametrize("name", ["compose-phase-limit-N", "compose-no-carry", "budgeted-no-reconcile"])
def test_named_mutant_is_killed(name: str) -> None:
    """KMR.alg10.phase-run KMR.alg1.interrupt KMR.prop1.last-accepted KMR.alg10.prop1: the mutant
    makes a code-level check report a violation (exit 3), not a crash."""
    o = code_mutants.run_mutant(name)
    assert o.killed, o
    assert "VIOLATION [KMR." in o.detail, o


def test_every_mutation_site_exists() -> None:
    """A mutant whose text no longer occurs in the code would survive silently: each occurs once."""
    root = code_mutants.core_dir()
    for name, (fname, old, _new, _why) in code_mutants.MUTANTS.items():
        assert (root / fname).read_text(encoding="utf-8").count(old) == 1, name

