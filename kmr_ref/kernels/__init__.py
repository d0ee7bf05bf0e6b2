"""Fast kernels for the reference rules of ``kmr_ref.methods``, equal to them bit for bit.

``prune_select``: global magnitude pruning in one pass (sampled band) or by a top-bits histogram
with a radix fallback (``KMR.prune.*``); ``quant_fused``: per-channel / per-group affine
quantization, observe + quantize fused per cache-sized block (``KMR.quant.*``); ``parallel``: chunk
sizes from the cache, one worker per free core, one intra-op thread per op.
``tests/test_kernels.py`` proves each kernel equal to its reference; ``spec/methods/kernels.md``
says which clauses each implements. The kernels are informative: the spec is normative.
"""

from kmr_ref.kernels.prune_select import magnitude_masks, prune_global, prune_global_, select_threshold
from kmr_ref.kernels.quant_fused import FusedQuant, quantize_groups, quantize_tensor
from kmr_ref.methods.registry import register

register("prune_global", prune_global)  # MagnitudePruning(kernel=True) finds it here

__all__ = ["FusedQuant", "magnitude_masks", "prune_global", "prune_global_", "quantize_groups", "quantize_tensor",
           "select_threshold"]
