"""Z3 proofs of Algorithm 1 / Proposition 1 and of per-rule lemmas of the KMR reference.

``kmr prove`` (``kmr_ref.cli.prove_cmd``) runs :func:`kmr_proofs.runner.run_all`. What is
modelled, abstracted and assumed: ``proofs/README.md``.
"""

from kmr_proofs.runner import MutantResult, ObligationResult, Report, run_all

__all__ = ["MutantResult", "ObligationResult", "Report", "run_all"]
