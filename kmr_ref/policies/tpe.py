"""``KMR.policy.tpe``: an Optuna TPE study over one value per knob, with a fixed trial count and
seed, whose best feasible trial becomes the plan (``KMR.policy.plan``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, TypeVar

import optuna

from kmr_ref.core.errors import PolicyError
from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import KnobValue, find_knob
from kmr_ref.core.policy import PolicyState
from kmr_ref.policies.plan import PlannedPolicy, knob_grid

M = TypeVar("M")


class TPEPolicy(PlannedPolicy[M]):
    """``KMR.policy.tpe``: see ``spec/policies.md``.

    ``storage`` is an Optuna storage URL (``"sqlite:///study.db"``, any RDB URL such as PostgreSQL)
    or ``None`` for an in-memory study. Several processes given the same ``storage`` and
    ``study_name`` share one study and stop together when it holds ``trials`` complete trials
    (``KMR.policy.tpe-shared``); only a single process is reproducible trial for trial.
    """

    def __init__(self, knob_names: Sequence[str], trials: int = 40, seed: int = 0, storage: str | None = None,
                 study_name: str = "kmr-tpe") -> None:
        super().__init__(knob_names)
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise PolicyError("KMR.policy.tpe", f"trials must be an integer >= 1, got {trials!r}")
        self.trials, self.seed, self.storage, self.study_name = trials, seed, storage, study_name
        self.best: dict[str, Any] | None = None

    def plan(self, state: PolicyState[M]) -> Mapping[str, KnobValue]:
        tri = state.triple
        grids = {n: knob_grid(find_knob(tri.knobs, n)) for n in self.knob_names}

        def build(idx: Mapping[str, int]) -> M:
            m = state.model
            for n in self.knob_names:  # KMR.policy.tpe: knobs applied to M_0 in knob order
                if idx[n] != 0:
                    m = tri.rule.apply(m, n, grids[n][idx[n]])
            return m

        def objective(trial: optuna.Trial) -> float:
            idx = {n: trial.suggest_int(n, 0, len(grids[n]) - 1) for n in self.knob_names}
            m = build(idx)
            c: Exact = tri.cost(m)
            q = tri.quality(m) if tri.quality is not None else 0.0
            trial.set_user_attr("cost", str(c))  # exact, as "p/q" or an integer
            trial.set_constraint("budget", float(c - state.budget))  # feasible when <= 0
            return q

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=self.seed)  # constraint-aware through set_constraint
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, sampler=sampler,
                                    direction="maximize", load_if_exists=True)
        stop = optuna.study.MaxTrialsCallback(self.trials, states=(optuna.trial.TrialState.COMPLETE,))
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if done < self.trials:
            study.optimize(objective, n_trials=self.trials - done, callbacks=[stop])
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        best = _best(trials, state.budget)
        self.best = {"number": best.number, "cost": best.user_attrs["cost"], "quality": best.value,
                     "params": dict(best.params), "trials": len(trials)}
        return {n: grids[n][int(best.params[n])] for n in self.knob_names}


def _best(trials: Sequence[optuna.trial.FrozenTrial], budget: Exact) -> optuna.trial.FrozenTrial:
    """``KMR.policy.tpe``: the feasible trial (exact cost <= B) of highest quality, earliest on
    ties; with none feasible, the trial of least cost, then highest quality, then earliest."""
    if not trials:
        raise PolicyError("KMR.policy.tpe", "the study holds no complete trial")

    def cost(t: optuna.trial.FrozenTrial) -> Fraction:
        return Fraction(t.user_attrs["cost"])

    feas = [t for t in trials if cost(t) <= budget]
    if feas:
        return min(feas, key=lambda t: (-float(t.value or 0.0), t.number))
    return min(trials, key=lambda t: (cost(t), -float(t.value or 0.0), t.number))
