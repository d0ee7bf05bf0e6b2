"""``kmr bench``: our kernels side by side with torch's peers and with a plain copy (informative,
``KMR.meter.informative``: timings are never normative).

``models`` builds the benchmark model; ``worker`` measures one (case, implementation) in a fresh
process (``python -m kmr_ref.bench.worker``) so that its peak memory is isolated; ``runner`` starts
the workers and assembles the report.
"""

from kmr_ref.bench.runner import CASES, PEAK_EXTRA_DEFINITION, run_bench

__all__ = ["CASES", "PEAK_EXTRA_DEFINITION", "run_bench"]
