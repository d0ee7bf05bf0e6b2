"""``KMR.policy.allocation``: a per-layer sensitivity profile measured once, then an exact
multiple-choice knapsack (one value per knob) under the budget, solved by ``scipy.optimize.milp``
(HiGHS), applied one knob at a time (``KMR.policy.plan``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from kmr_ref.core.errors import PolicyError
from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import KnobValue, find_knob
from kmr_ref.core.policy import PolicyState
from kmr_ref.policies.plan import PlannedPolicy, knob_grid

M = TypeVar("M")


@dataclass(frozen=True)
class Option:
    """One value of one knob in the profile: its cost decrease and quality loss when applied to
    M_0 alone (``KMR.policy.allocation-profile``)."""

    knob: str
    value: KnobValue
    decrease: Exact  # C(M_0) - C(T(M_0, k, v)), > 0 except for the keep option (0)
    loss: Fraction  # Q(M_0) - Q(T(M_0, k, v)), exact on the binary64 qualities


@dataclass(frozen=True)
class AllocationSolution:
    """The chosen option per group, and how good the choice is on the additive proxy."""

    choice: tuple[int, ...]
    feasible: bool  # sum of decreases >= need, exactly
    objective: float  # the summed loss of the choice
    bound: float  # the solver's dual bound (= objective when proved optimal)
    gap: float  # objective - bound (0 when proved optimal)


def solve_allocation(groups: Sequence[Sequence[Option]], need: Exact) -> AllocationSolution:
    """``KMR.policy.allocation-solve``: one option per group minimizing the summed ``loss`` subject
    to the summed ``decrease`` >= ``need``, checked in exact arithmetic.

    Each group's option 0 is the keep option. When no choice meets ``need`` the most decreasing
    option of each group is chosen (earliest on ties) and ``feasible`` is false: the solver is never
    asked a question without a solution. A MILP answer that misses ``need`` only by the solver's
    tolerance is re-solved with ``need`` raised by that shortfall, up to 8 times, then replaced by
    the most-decreasing choice (feasible by construction)."""
    if not groups or any(not g for g in groups):
        raise PolicyError("KMR.policy.allocation-solve", "every knob needs at least its keep option")
    most = tuple(max(range(len(g)), key=lambda j, g=g: (g[j].decrease, -j)) for g in groups)  # type: ignore[misc]
    top = sum((g[j].decrease for g, j in zip(groups, most, strict=True)), Fraction(0))
    if top < need:  # KMR.policy.allocation-solve: infeasible in the grid
        return _solution(groups, most, need, None)
    sizes = [len(g) for g in groups]
    n = sum(sizes)
    loss = np.array([float(o.loss) for g in groups for o in g])
    dec = np.array([float(o.decrease) for g in groups for o in g])
    one = np.zeros((len(groups), n))
    k = 0
    for i, s in enumerate(sizes):
        one[i, k:k + s] = 1.0
        k += s
    target = float(need)
    for _ in range(8):
        res = milp(loss, integrality=np.ones(n), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one, 1, 1), LinearConstraint(dec[None, :], target, np.inf)],
                   options={"mip_rel_gap": 0.0, "presolve": True})
        if res.x is None:  # pragma: no cover - a feasible instance always has a solution
            break
        x = np.asarray(res.x) > 0.5
        choice, k = [], 0
        for s in sizes:
            choice.append(int(np.argmax(x[k:k + s])))
            k += s
        got = sum((g[j].decrease for g, j in zip(groups, choice, strict=True)), Fraction(0))
        if got >= need:
            return _solution(groups, tuple(choice), need, float(getattr(res, "mip_dual_bound", res.fun)))
        target += float(need - got) + 1e-9 * max(1.0, abs(target))  # a tolerance shortfall: tighten
    return _solution(groups, most, need, None)


def _solution(groups: Sequence[Sequence[Option]], choice: tuple[int, ...], need: Exact,
              bound: float | None) -> AllocationSolution:
    obj = float(sum((g[j].loss for g, j in zip(groups, choice, strict=True)), Fraction(0)))
    got = sum((g[j].decrease for g, j in zip(groups, choice, strict=True)), Fraction(0))
    b = obj if bound is None else min(bound, obj)
    return AllocationSolution(choice, got >= need, obj, b, obj - b)


class AllocationPolicy(PlannedPolicy[M]):
    """``KMR.policy.allocation``: see ``spec/policies.md``. ``solution`` and ``profile`` hold what
    the plan was made from (for reports)."""

    def __init__(self, knob_names: Sequence[str]) -> None:
        super().__init__(knob_names)
        self.profile: tuple[tuple[Option, ...], ...] = ()
        self.solution: AllocationSolution | None = None

    def plan(self, state: PolicyState[M]) -> Mapping[str, KnobValue]:
        tri = state.triple
        groups: list[tuple[Option, ...]] = []
        for name in self.knob_names:  # KMR.policy.allocation-profile
            grid = knob_grid(find_knob(tri.knobs, name))
            opts = [Option(name, grid[0], 0, Fraction(0))]
            for v in grid[1:]:
                m = tri.rule.apply(state.model, name, v)
                c = tri.cost(m)
                if not c < state.cost:
                    continue  # cannot be applied as a strictly-lowering step
                loss = Fraction(0)
                if tri.quality is not None and state.quality is not None:
                    loss = Fraction(state.quality) - Fraction(tri.quality(m))
                opts.append(Option(name, v, state.cost - c, loss))
            groups.append(tuple(opts))
        self.profile = tuple(groups)
        self.solution = solve_allocation(groups, state.cost - state.budget)  # KMR.policy.allocation-solve
        return {g[0].knob: g[j].value for g, j in zip(groups, self.solution.choice, strict=True)}
