"""Conformance kit: language-neutral vectors, their schema checker and runners.

- ``vectors``: ``load_vectors(path)``, the runner registry ``RUNNERS`` (file ``kind`` -> runner),
  ``run_alg1_vector``, per-vector and per-clause results (pass / fail / not-supported), and a
  copy-paste reproduction for every failure (``python -m kmr_ref.conformance.vectors FILE --id ID``).
- ``alg1_table``: the adapter that drives the reference Algorithm 1 on the table worlds of
  ``alg1`` vectors (the shape another implementation provides to be checked).
- ``jsonschema_mini``: validates vector files against ``spec/vectors/<version>/schema.json``
  without third-party packages.

Submodules are not imported here, so that ``python -m kmr_ref.conformance.vectors`` runs cleanly.
"""
