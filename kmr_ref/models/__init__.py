"""Real pretrained models for the methods, meters and rules (``spec/models.md``).

One module per model, each with a zero-argument factory ``load()`` (an ``nn.Module`` in eval
mode, loaded offline from the PyPI packages of the ``models`` extra), ``example_input()`` (for the
MACs meter and the forward checks) and a quality meter ``quality(model) -> float`` measured
against the uncompressed model. Importing this package imports no model library.
"""
