"""E4: one trace, many budgets (``KMR.trace.select``). One ``kmr compress`` run of the digits CNN to
a low budget is a family of models; ``kmr select`` rebuilds the model for each of several budgets
by replaying the trace prefix, and a separate ``kmr compress`` run per budget gives the same
model (byte-identical ``model.safetensors``, equal cost and quality) at the price of re-running
the greedy search. The table counts rule applications and quality evaluations; wall times are in
``e4.json`` only."""

from __future__ import annotations

import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from kmr_ref.experiments.common import machine, md_table, write_outputs

COMMAND = "kmr experiment e4"
RUN_BUDGET = Fraction(3, 5)  # the one run: to 3/5 of the trained CNN's nonzeros
# of C(M_0), for select and separate runs; the last is the run's own budget (its separate run is the run)
BUDGETS = (Fraction(9, 10), Fraction(4, 5), Fraction(7, 10), RUN_BUDGET)
MAX_STEPS = 60


def _config(budget: Fraction) -> dict[str, Any]:
    return {
        "model": "kmr_ref.examples.digits_factory:trained_cnn",
        "quality": "kmr_ref.examples.digits_factory:val_accuracy",
        "meter": "nonzeros", "budget_fraction": f"{budget.numerator}/{budget.denominator}", "max_steps": MAX_STEPS,
        "phases": [{"method": "prune", "scope": "per-tensor", "policy": {"type": "greedy", "knobs": "per-layer"}}],
    }


class _Counted:
    """Rule applications and quality evaluations of one run (counted by wrapping
    ``MagnitudePruning.apply`` and the quality function: the same rule, the same outputs)."""

    def __init__(self) -> None:
        self.rule = 0
        self.quality = 0


def _compress(budget: Fraction, out: Path) -> tuple[Any, _Counted, float]:
    from kmr_ref.compress import CompressConfig, compress, load_model
    from kmr_ref.examples import digits_factory
    from kmr_ref.methods.pruning import MagnitudePruning

    counts = _Counted()
    cfg = CompressConfig.from_dict(_config(budget))

    def quality(m: Any) -> float:
        counts.quality += 1
        return digits_factory.val_accuracy(m)

    orig = MagnitudePruning.apply

    def apply(self: MagnitudePruning, model: Any, knob: str, value: Any) -> Any:
        counts.rule += 1
        return orig(self, model, knob, value)

    MagnitudePruning.apply = apply  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        rep = compress(load_model(cfg), cfg, quality=quality, out_dir=out)
        return rep, counts, time.perf_counter() - t0
    finally:
        MagnitudePruning.apply = orig  # type: ignore[method-assign]


def run(out: Path) -> list[Path]:
    from kmr_ref.cli.select_cmd import select, write
    from kmr_ref.examples import digits_factory
    from kmr_ref.experiments.common import digits_bed
    from kmr_ref.methods.pruning import MagnitudePruning

    digits_bed()  # deterministic algorithms, as every digits experiment
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kmr-e4-") as tmp:
        root = Path(tmp)
        full, full_counts, full_s = _compress(RUN_BUDGET, root / "full")
        for f in BUDGETS:
            orig = MagnitudePruning.apply
            n = [0]

            def apply(self: MagnitudePruning, model: Any, knob: str, value: Any, orig: Any = orig,
                      n: list[int] = n) -> Any:
                n[0] += 1
                return orig(self, model, knob, value)

            MagnitudePruning.apply = apply  # type: ignore[method-assign]
            try:
                t0 = time.perf_counter()
                sel = select(root / "full", f * full.cost_initial)
                sel_s = time.perf_counter() - t0
            finally:
                MagnitudePruning.apply = orig  # type: ignore[method-assign]
            write(sel, root / "full", root / f"sel-{f.numerator}-{f.denominator}")
            sep = root / ("full" if f == RUN_BUDGET else f"sep-{f.numerator}-{f.denominator}")
            rep, counts, sep_s = (full, full_counts, full_s) if f == RUN_BUDGET else _compress(f, sep)
            same = ((root / f"sel-{f.numerator}-{f.denominator}" / "model.safetensors").read_bytes()
                    == (sep / "model.safetensors").read_bytes())
            rows.append({
                "fraction": f, "budget": sel.budget, "step": sel.step,
                "select": {"cost": sel.cost, "quality": sel.quality, "rule_applications": n[0],
                           "quality_evaluations": 0, "seconds": round(sel_s, 3),
                           "test_accuracy": digits_factory.test_accuracy(sel.model)},
                "separate": {"status": rep.status.value, "cost": rep.cost_final, "quality": rep.quality_final,
                             "accepted_steps": rep.accepted_steps, "rule_applications": counts.rule,
                             "quality_evaluations": counts.quality, "seconds": round(sep_s, 3),
                             "test_accuracy": digits_factory.test_accuracy(rep.model)},
                "byte_identical": same,
                "equal": same and sel.cost == rep.cost_final and sel.quality == rep.quality_final,
            })
    table = [[f"{r['fraction']}", str(r["budget"]) if isinstance(r["budget"], int) else f"{float(r['budget']):.1f}",
              str(r["step"]), str(r["select"]["cost"]), f"{r['select']['quality']:.4f}",
              f"{r['select']['test_accuracy']:.4f}", "yes" if r["equal"] else "NO",
              str(r["select"]["rule_applications"]), str(r["separate"]["rule_applications"]),
              str(r["separate"]["quality_evaluations"])] for r in rows]
    sel_rules = sum(r["select"]["rule_applications"] for r in rows)
    sep_rules = sum(r["separate"]["rule_applications"] for r in rows)
    md = ("# E4 — one trace, many budgets (digits CNN)\n\n"
          f"Regenerate: `{COMMAND}`. One `kmr compress` run (magnitude pruning, per-layer greedy ladder, "
          f"cost = nonzero parameters (meter `nonzeros`), budget {RUN_BUDGET} of C(M_0), "
          f"C(M_0) = {full.cost_initial}, N = {MAX_STEPS}; "
          f"{full.accepted_steps} accepted steps, {full_counts.rule} rule applications, "
          f"{full_counts.quality} quality evaluations). For each budget (a fraction of C(M_0)), "
          "`kmr select` rebuilds the first accepted model within it by replaying the trace prefix "
          "(`KMR.trace.select`); a separate `kmr compress` run with that budget searches again (at the "
          "run's own budget, the separate run is the run itself). "
          "*Equal* = byte-identical `model.safetensors`, equal cost and equal validation accuracy. "
          "Wall times are in `e4.json` only.\n\n"
          + md_table(["budget (of C(M_0))", "B", "accepted steps", "cost", "val acc", "test acc", "equal",
                      "select: rule applications", "separate run: rule applications",
                      "separate run: quality evaluations"], table)
          + f"\nAll budgets: `kmr select` applied the rule {sel_rules} times and evaluated quality 0 times; "
          f"the separate runs applied it {sep_rules} times (the one full run: {full_counts.rule}).\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [float(r["fraction"]) for r in rows]
    ax.plot(xs, [r["separate"]["rule_applications"] for r in rows], "o-", label="separate run")
    ax.plot(xs, [r["select"]["rule_applications"] for r in rows], "s--", label="kmr select")
    ax.set_xlabel("budget (fraction of C(M_0))")
    ax.set_ylabel("rule applications")
    ax.invert_xaxis()
    ax.legend()
    ax.set_title("E4: one trace, many budgets")
    fig.tight_layout()
    payload = {"experiment": "e4", "model": "digits", "run": {
        "budget_fraction": RUN_BUDGET, "budget": full.budget, "status": full.status.value,
        "accepted_steps": full.accepted_steps, "rule_applications": full_counts.rule,
        "quality_evaluations": full_counts.quality, "seconds": round(full_s, 3)},
        "rows": rows, "machine": machine()}
    paths = write_outputs(out, "e4", md, payload, fig)
    plt.close(fig)
    return paths
