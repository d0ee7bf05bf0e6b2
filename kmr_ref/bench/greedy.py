"""``kmr bench --case greedy_scaling``: the wall time of one greedy step of Algorithm 1 over L
per-layer pruning knobs (informative, ``KMR.meter.informative``).

The model is a synthetic MLP, ``nn.Sequential`` of L ``Linear(width, width)`` + ``ReLU`` pairs
(2L + 1 modules, L prunable weights); the triple is magnitude pruning with one ``sparsity@<name>``
knob per weight (wrapped by ``reusing``, ``KMR.rule.reuse``), the prunable-nonzero cost meter and
no quality meter (so the time is the framework's: rule applications, cost measurements, the
policy's bookkeeping); the policy is greedy over the ladder of those knobs (L candidates per
step). A step is the time between two consecutive trace records (the policy's L candidate
applications and measurements, Algorithm 1's measurement of the winner, the record). ``step_s``
is the median over ``rounds`` runs of ``steps - 1`` steps per L, the L interleaved round by round
so that they share the machine's background load; ``step_cpu_s`` is the same in process CPU time.
One torch thread. The goal: step(200) / step(50) <= 5, i.e. the step grows about linearly with L
(L candidates, each costing about the same whatever L is: ``KMR.rule.path-copy``,
``KMR.rule.analysis-scope``, ``KMR.meter.delta``).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import torch
from torch import nn

from kmr_ref.core.budgeted import budgeted_kmr
from kmr_ref.core.policy import GreedyPolicy, ladder_candidates
from kmr_ref.core.rules import KMRTriple, reusing
from kmr_ref.core.trace import StepRecord
from kmr_ref.methods.pruning import MagnitudePruning, prunable_nonzero_meter


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (Linux), or None."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


NAME = "greedy_scaling"
LAYERS = (50, 200)
WIDTH = 16
STEPS = 4
ROUNDS = 3
GOAL = 5.0
SEED = 20250814
DEFINITION = (
    "step_s: median wall time between consecutive trace records of Algorithm 1 (greedy over the ladder "
    "of L sparsity@<layer> knobs: L candidate applications + cost measurements, then the winner's, reused "
    "through kmr_ref.core.rules.reusing), on an MLP of L Linear(width, width)+ReLU pairs, prunable-nonzero "
    "cost, no quality meter, one torch thread; rounds x (steps - 1) steps per L, the L interleaved round by "
    "round; step_cpu_s: the same in this process's CPU time; ratio = step_s(L max) / step_s(L min), "
    "goal <= 5 for L = 50 -> 200 (linear growth would be 4)."
)


def mlp(layers: int, width: int = WIDTH, seed: int = SEED) -> nn.Sequential:
    """L ``Linear(width, width)`` + ``ReLU`` pairs with seeded weights (2L + 1 modules)."""
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for _ in range(layers):
        lin = nn.Linear(width, width)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, width, generator=g))
            lin.bias.copy_(torch.randn(width, generator=g))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods)


def greedy_triple(model: nn.Module, reuse: bool = True) -> tuple[KMRTriple[nn.Module], list[str]]:
    """The benchmark's triple and its knob names (``reuse``: Algorithm 1 takes the policy's
    T(M, k, v) instead of applying the rule again, ``KMR.rule.reuse``)."""
    rule = MagnitudePruning.for_model(model)
    names = [f"sparsity@{n}" for n in rule.tensor_names]
    return KMRTriple("prune", reusing(rule) if reuse else rule, prunable_nonzero_meter()), names


def step_times(layers: int, steps: int = STEPS, width: int = WIDTH, reuse: bool = True) -> list[tuple[float, float]]:
    """The ``steps - 1`` intervals between consecutive records of one greedy run, each as
    (wall seconds, this process's CPU seconds)."""
    if steps < 2:
        raise ValueError("steps must be >= 2 (a step is the interval between two records)")
    model = mlp(layers, width)
    tri, names = greedy_triple(model, reuse)
    stamps: list[tuple[float, float]] = []

    def on_record(r: StepRecord) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    res = budgeted_kmr(model, tri, GreedyPolicy(ladder_candidates(names)), 0, steps, on_record=on_record)
    if res.accepted_steps != steps:
        raise RuntimeError(f"greedy accepted {res.accepted_steps} of {steps} steps ({res.status})")
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def greedy_scaling(layers: tuple[int, ...] = LAYERS, steps: int = STEPS, width: int = WIDTH, rounds: int = ROUNDS,
                   threads: int = 1, reuse: bool = True) -> dict[str, Any]:
    """The ``greedy_scaling`` case of the ``kmr bench`` report: ``points`` (one per L: ``layers``,
    ``step_s`` = median wall seconds per step, ``step_cpu_s`` = median CPU seconds, ``times``),
    ``ratio`` = step_s of the largest L / of the smallest (``ratio_cpu`` likewise), ``goal_met``.
    ``rounds`` runs of every L, interleaved, so that all L share the machine's background load."""
    if len(layers) < 2:
        raise ValueError("greedy_scaling needs at least two layer counts")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    load_start = loadavg()
    try:
        step_times(min(layers), 2, width, reuse)  # warm-up (first-call paths, allocator)
        got: dict[int, list[tuple[float, float]]] = {n: [] for n in layers}
        for _ in range(rounds):
            for n in layers:
                got[n] += step_times(n, steps, width, reuse)
    finally:
        torch.set_num_threads(before)
    points: list[dict[str, Any]] = [{"layers": n, "step_s": statistics.median(t for t, _ in ts),
               "step_cpu_s": statistics.median(c for _, c in ts),
               "times": [t for t, _ in ts], "cpu_times": [c for _, c in ts]} for n, ts in got.items()]
    lo = min(points, key=lambda p: p["layers"])
    hi = max(points, key=lambda p: p["layers"])
    ratio = hi["step_s"] / lo["step_s"]
    return {
        "name": NAME, "points": points, "ratio": ratio, "ratio_cpu": hi["step_cpu_s"] / lo["step_cpu_s"],
        "goal": GOAL, "goal_met": ratio <= GOAL, "width": width, "steps": steps, "rounds": rounds,
        "threads": threads, "reuse": reuse, "loadavg_start": load_start, "loadavg_end": loadavg(),
        "definition": DEFINITION,
    }


def table(case: dict[str, Any]) -> Any:
    """The case as a rich table (``kmr bench --case greedy_scaling`` without ``--json``)."""
    from rich.table import Table

    la, lb = case["loadavg_start"], case["loadavg_end"]
    t = Table(title=f"greedy_scaling — one greedy step over L per-layer knobs ({case['threads']} thread, MLP width "
                    f"{case['width']}, {case['rounds']}x{case['steps'] - 1} steps per L; load average "
                    f"{la[0] if la else '?'} -> {lb[0] if lb else '?'})")
    for col in ("layers L", "step s (median)", "CPU s (median)", "per layer ms"):
        t.add_column(col, justify="right")
    for p in case["points"]:
        t.add_row(str(p["layers"]), f"{p['step_s']:.4f}", f"{p['step_cpu_s']:.4f}",
                  f"{1e3 * p['step_s'] / p['layers']:.3f}")
    mark = "met" if case["goal_met"] else "NOT met"
    t.caption = (f"ratio step(L max) / step(L min) = {case['ratio']:.2f} (CPU {case['ratio_cpu']:.2f}); "
                 f"goal <= {case['goal']}: {mark}")
    return t
