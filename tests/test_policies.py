"""Search policies (spec/policies.md): random, allocation (exact knapsack), TPE (Optuna)."""

from __future__ import annotations

import hashlib
import itertools
import math
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmr_ref.core import KMRTriple, budgeted_kmr
from kmr_ref.core.errors import PolicyError
from kmr_ref.core.knobs import Knob, KnobValue, real_knob
from kmr_ref.core.meters import CostMeter, QualityMeter
from kmr_ref.core.policy import PolicyState, ladder_candidates
from kmr_ref.core.trace import Status
from kmr_ref.policies import AllocationPolicy, Option, RandomPolicy, TPEPolicy, solve_allocation, uniform_index

ROOT = Path(__file__).resolve().parent.parent


# --- a toy layered model: per-layer sparsity, cost = kept entries, quality = -sum(w * s^2) -------

@dataclass(frozen=True)
class Layers:
    sizes: tuple[int, ...]
    weights: tuple[float, ...]
    s: tuple[Fraction, ...]


class LayerRule:
    def __init__(self, n: int, step: str = "1/4") -> None:
        self.ks = tuple(real_knob(f"sparsity@{i}", 0, 1, step) for i in range(n))
        self.applied = 0

    def knobs(self) -> Sequence[Knob]:
        return self.ks

    def apply(self, m: Layers, knob: str, value: KnobValue) -> Layers:
        self.applied += 1
        i = int(knob.split("@")[1])
        assert isinstance(value, int | Fraction)
        return replace(m, s=(*m.s[:i], Fraction(value), *m.s[i + 1:]))


def kept(m: Layers) -> int:
    return sum(n - math.floor(s * n) for n, s in zip(m.sizes, m.s, strict=True))


def quality(m: Layers) -> float:
    return -sum(w * float(s) ** 2 for w, s in zip(m.weights, m.s, strict=True))


def triple(n: int) -> tuple[KMRTriple[Layers], LayerRule]:
    r = LayerRule(n)
    return KMRTriple("toy", r, CostMeter("kept", kept), QualityMeter("q", quality)), r


def model(sizes: Sequence[int], weights: Sequence[float]) -> Layers:
    return Layers(tuple(sizes), tuple(weights), tuple(Fraction(0) for _ in sizes))


def names(n: int) -> list[str]:
    return [f"sparsity@{i}" for i in range(n)]


# --- KMR.policy.random-draw ------------------------------------------------------------------------

def _draw_as_spec_says(seed: int, t: int, n: int) -> int:
    # transcribed from the clause text: hex digest, first 16 hex digits, rejection
    j = 0
    while True:
        u = int(hashlib.sha256(f"kmr-random:{seed}:{t}:{j}".encode()).hexdigest()[:16], 16)
        if u < (1 << 64) - ((1 << 64) % n):
            return u % n
        j += 1


@given(st.integers(-5, 10**6), st.integers(0, 1000), st.integers(1, 10**6))
def test_random_draw_follows_the_clause(seed: int, t: int, n: int) -> None:
    """KMR.policy.random-draw"""
    assert uniform_index(seed, t, n) == _draw_as_spec_says(seed, t, n)


def test_random_draw_rejects_empty_and_is_roughly_uniform() -> None:
    """KMR.policy.random-draw: n < 1 is an error; 3 000 draws over 3 values are near 1/3 each."""
    with pytest.raises(PolicyError) as e:
        uniform_index(0, 0, 0)
    assert e.value.clause == "KMR.policy.random-draw"
    counts = [0, 0, 0]
    for t in range(3000):
        counts[uniform_index(7, t, 3)] += 1
    assert all(900 < c < 1100 for c in counts), counts


def test_random_policy_only_proposes_cost_lowering_candidates_and_is_reproducible() -> None:
    """KMR.policy.random: under Algorithm 1 the run reaches the budget; same seed, same trace."""
    m0 = model([40, 30, 20, 10], [1.0, 2.0, 3.0, 4.0])
    runs = []
    for seed in (0, 0, 1):
        tri, _ = triple(4)
        res = budgeted_kmr(m0, tri, RandomPolicy(ladder_candidates(names(4)), seed), 30, 50)
        assert res.status is Status.FEASIBLE
        assert all(r.accepted for r in res.trace)
        runs.append([(r.knob, r.value) for r in res.trace])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_random_policy_stops_when_nothing_lowers_cost() -> None:
    """KMR.policy.random: a model at the end of every ladder: Stop, status policy-stop."""
    m0 = replace(model([4, 4], [1.0, 1.0]), s=(Fraction(1), Fraction(1)))
    tri, _ = triple(2)
    hist = tuple()  # the ladder starts from grid[0] = 0, but every step keeps cost 0: none lowers
    st0 = PolicyState(m0, kept(m0), quality(m0), 0, -1, tri, hist)
    assert RandomPolicy(ladder_candidates(names(2)), 3)(st0).__class__.__name__ == "Stop"


# --- KMR.policy.allocation-solve against brute force ---------------------------------------------

groups_st = st.lists(
    st.lists(st.tuples(st.integers(1, 20), st.floats(-1, 5, allow_nan=False)), min_size=0, max_size=3),
    min_size=1, max_size=4)


def _groups(raw: list[list[tuple[int, float]]]) -> list[list[Option]]:
    out = []
    for i, g in enumerate(raw):
        opts = [Option(f"k{i}", 0, 0, Fraction(0))]
        opts += [Option(f"k{i}", j + 1, d, Fraction(loss)) for j, (d, loss) in enumerate(g)]
        out.append(opts)
    return out


@given(groups_st, st.integers(-3, 70))
def test_allocation_solution_is_the_brute_force_optimum(raw: list[list[tuple[int, float]]], need: int) -> None:
    """KMR.policy.allocation-solve: feasible exactly when some choice is, and then optimal."""
    groups = _groups(raw)
    best: Fraction | None = None
    for choice in itertools.product(*(range(len(g)) for g in groups)):
        if sum(g[j].decrease for g, j in zip(groups, choice, strict=True)) >= need:
            loss = sum((g[j].loss for g, j in zip(groups, choice, strict=True)), Fraction(0))
            best = loss if best is None or loss < best else best
    sol = solve_allocation(groups, need)
    got = sum(g[j].decrease for g, j in zip(groups, sol.choice, strict=True))
    assert sol.feasible == (best is not None)
    if best is None:  # the most decreasing option everywhere
        assert got == sum(max(o.decrease for o in g) for g in groups)
    else:
        assert got >= need
        assert sol.objective == pytest.approx(float(best), abs=1e-9)
        assert sol.gap == pytest.approx(0.0, abs=1e-7)


def test_allocation_needs_keep_options() -> None:
    """KMR.policy.allocation-solve: an empty group is refused."""
    with pytest.raises(PolicyError) as e:
        solve_allocation([[]], 1)
    assert e.value.clause == "KMR.policy.allocation-solve"


def test_allocation_policy_reaches_the_budget_and_spares_sensitive_layers() -> None:
    """KMR.policy.allocation, KMR.policy.allocation-profile, KMR.policy.plan: the profile is one
    build per (knob, value); the plan is applied one knob at a time, each step lowering cost."""
    m0 = model([40, 40, 40], [10.0, 1.0, 0.1])
    tri, _rule = triple(3)
    pol: AllocationPolicy[Layers] = AllocationPolicy(names(3))
    res = budgeted_kmr(m0, tri, pol, 60, 20)
    assert res.status is Status.FEASIBLE and res.cost_final <= 60
    assert all(r.accepted for r in res.trace)
    assert len(pol.profile) == 3 and all(len(g) == 5 for g in pol.profile)  # keep + 1/4, 2/4, 3/4, 1
    assert pol.solution is not None and pol.solution.feasible
    final = res.model.s
    assert final[0] <= final[1] <= final[2]  # the least sensitive layer is pruned most
    # brute force over the 5^3 grid: no assignment meeting the budget has a higher quality
    grid = [Fraction(i, 4) for i in range(5)]
    best = max(quality(replace(m0, s=c)) for c in itertools.product(grid, repeat=3)
               if kept(replace(m0, s=c)) <= 60)
    assert res.quality_final == pytest.approx(best)  # additive here, so the proxy is exact


def test_planned_policy_refuses_a_reused_object() -> None:
    """KMR.policy.plan: the first call must be at t = 0 (empty history)."""
    m0 = model([8, 8], [1.0, 1.0])
    tri, _ = triple(2)
    pol: AllocationPolicy[Layers] = AllocationPolicy(names(2))
    res = budgeted_kmr(m0, tri, pol, 4, 10)
    fresh: AllocationPolicy[Layers] = AllocationPolicy(names(2))
    with pytest.raises(PolicyError) as e:
        fresh(PolicyState(res.model, res.cost_final, res.quality_final, 1, 4, tri, res.trace))
    assert e.value.clause == "KMR.policy.plan"
    with pytest.raises(PolicyError):
        AllocationPolicy(["a", "a"])


# --- KMR.policy.tpe ------------------------------------------------------------------------------

def test_tpe_is_reproducible_and_picks_its_best_feasible_trial() -> None:
    """KMR.policy.tpe: same seed and trial count, same plan; the plan is the best feasible trial."""
    m0 = model([40, 40, 40], [10.0, 1.0, 0.1])
    plans = []
    for _ in range(2):
        tri, _ = triple(3)
        pol: TPEPolicy[Layers] = TPEPolicy(names(3), trials=25, seed=3)
        res = budgeted_kmr(m0, tri, pol, 60, 20)
        assert res.cost_final <= 60 and res.status is Status.FEASIBLE
        assert pol.best is not None and pol.best["trials"] == 25
        assert Fraction(pol.best["cost"]) <= 60
        assert res.quality_final == pytest.approx(pol.best["quality"])
        plans.append(pol.best)
    assert plans[0] == plans[1]
    with pytest.raises(PolicyError):
        TPEPolicy(names(3), trials=0)


def test_tpe_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    """KMR.policy.tpe-shared: two processes on one SQLite study fill it to `trials` together."""
    db = tmp_path / "study.db"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from test_policies import model, triple, names
        from kmr_ref.core import budgeted_kmr
        from kmr_ref.policies import TPEPolicy
        tri, _ = triple(3)
        pol = TPEPolicy(names(3), trials=20, seed=int(sys.argv[1]), storage="sqlite:///{db}", study_name="s")
        res = budgeted_kmr(model([40, 40, 40], [10.0, 1.0, 0.1]), tri, pol, 60, 20)
        print(pol.best["trials"], res.cost_final)
    """))
    import optuna

    # the storage's schema is created once before the workers start (concurrent first use of one
    # SQLite file races on Optuna's schema table)
    optuna.create_study(storage=f"sqlite:///{db}", study_name="s", direction="maximize")
    procs = [subprocess.Popen([sys.executable, str(script), str(s)], stdout=subprocess.PIPE, text=True)
             for s in (1, 2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 20 <= len(done) <= 21  # each worker stops once 20 are complete (one may be in flight)
    assert all(int(o[0]) >= 20 and int(o[1]) <= 60 for o in outs), outs
