"""KMR reference implementation: the executable companion of ``spec/`` (spec version 0.1.0).

``kmr_ref.core`` holds the framework (knobs, meters, rules, policies, Algorithm 1) and imports no
torch; ``kmr_ref.methods`` holds the torch instantiations written as the spec states them;
``kmr_ref.kernels`` holds fast kernels proven equal to ``methods`` by the tests.
"""

SPEC_VERSION = "0.1.0"
__version__ = "0.1.0"
