"""KMR reference implementation: the executable companion of ``spec/`` (spec version 0.1.0).

``kmr_ref.core`` holds the framework (knobs, meters, rules, policies, Algorithm 1) and imports no
torch; ``kmr_ref.methods`` holds the torch instantiations written as the spec states them;
``kmr_ref.kernels`` holds fast kernels proven equal to ``methods`` by the tests.
"""

SPEC_VERSION = "0.1.0"
__version__ = "0.1.0"


def load(run_dir: object, model: object = None) -> object:
    """``KMR.compress.load``: the compressed model of a ``kmr compress`` run directory (an
    ``nn.Module``); see :func:`kmr_ref.compress.artifacts.load`. Imported lazily, so that
    ``import kmr_ref.core`` stays free of torch."""
    from kmr_ref.compress.artifacts import load as _load

    return _load(run_dir, model)  # type: ignore[arg-type]
