"""E1 (the paper's first experiment): cost and accuracy of the digits CNN versus global sparsity;
the cost must fall monotonically (``KMR.prune.monotone``)."""

from __future__ import annotations

import itertools
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from kmr_ref.experiments.common import digits_bed, machine, md_table, write_outputs
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable

COMMAND = "kmr experiment e1"


def run(out: Path) -> list[Path]:
    t0 = time.perf_counter()
    bed = digits_bed()
    rule = MagnitudePruning.for_model(bed.model)
    val = bed.val()
    rows: list[dict[str, Any]] = []
    for i in range(20):
        s = Fraction(i, 20)
        m = rule.apply(bed.model, "sparsity", s)
        rows.append({"sparsity": s, "cost": nonzero_prunable(m), "val_accuracy": val(m),
                     "test_accuracy": bed.test_accuracy(m)})
    monotone = all(a["cost"] > b["cost"] for a, b in itertools.pairwise(rows))
    md = ("# E1 — cost and accuracy versus global sparsity (digits CNN)\n\n"
          f"Regenerate: `{COMMAND}` (shipped weights, `kmr_ref/examples/digits_cnn.safetensors`; "
          "magnitude pruning, global scope, `KMR.prune.count`: k = floor(s·n)).\n\n"
          + md_table(["sparsity", "nonzero prunable weights", "val acc", "test acc"],
                     [[f"{r['sparsity']}", str(r["cost"]), f"{r['val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}"]
                      for r in rows])
          + f"\nCost strictly decreasing in sparsity: **{'yes' if monotone else 'NO'}** "
          "(`KMR.prune.monotone`).\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [float(r["sparsity"]) for r in rows]
    ax.plot(xs, [r["cost"] for r in rows], "o-", color="tab:blue", label="nonzeros")
    ax.set_xlabel("global sparsity s")
    ax.set_ylabel("nonzero prunable weights", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["val_accuracy"] for r in rows], "s--", color="tab:red", label="val acc")
    ax2.plot(xs, [r["test_accuracy"] for r in rows], "^:", color="tab:orange", label="test acc")
    ax2.set_ylabel("accuracy", color="tab:red")
    ax2.legend(loc="lower left")
    ax.set_title("E1: digits CNN, magnitude pruning")
    fig.tight_layout()
    payload = {"experiment": "e1", "rows": rows, "monotone": monotone,
               "seconds": round(time.perf_counter() - t0, 3), "machine": machine()}
    paths = write_outputs(out, "e1", md, payload, fig)
    plt.close(fig)
    return paths
