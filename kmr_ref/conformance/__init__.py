"""Conformance kit: language-neutral vectors, their runners and the per-clause report.

- ``vectors``: ``load_vectors(path)``, the runner registry (file ``kind`` -> runner, per
  implementation), primary-clause blame, features, strict expected failures (``XFail``).
- ``report``: ``python -m kmr_ref.conformance`` / ``kmr conform`` (selection, ``--json``,
  ``--junit``, reproductions that run as printed).
- ``adapters``: the Python adapter protocols (numpy only); ``subprocess_impl``: the JSON-lines
  protocol for any language (``--exec``).
- ``alg1_table`` / ``alg10_table`` / ``prune_runner`` / ``quant_runner``: the runners and the
  reference adapters; ``torch_impl``: torch's own pruning and quantization (``--impl torch``),
  audited by ``torch_audit``.
- ``generated``: the Hypothesis tier; ``coverage``: clause -> vectors, or the reason there are none.

Submodules are not imported here, so that ``python -m kmr_ref.conformance.vectors`` runs cleanly.
Vector files are validated against ``spec/vectors/<version>/schema.json`` with ``jsonschema``.
"""
