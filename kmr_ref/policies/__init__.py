"""Search policies beyond the paper's scheduled and greedy ones (``spec/policies.md``): the
paper's open question 1. Generic over the model type and torch-free, like ``kmr_ref.core``; every
one runs under Algorithm 1's acceptance logic unchanged (a policy only proposes)."""

from kmr_ref.policies.allocation import AllocationPolicy, Option, solve_allocation
from kmr_ref.policies.plan import PlannedPolicy, knob_grid
from kmr_ref.policies.random_choice import RandomPolicy, uniform_index
from kmr_ref.policies.tpe import TPEPolicy

__all__ = ["AllocationPolicy", "Option", "PlannedPolicy", "RandomPolicy", "TPEPolicy", "knob_grid",
           "solve_allocation", "uniform_index"]
