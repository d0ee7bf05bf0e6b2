"""``kmr demo``: train a small CNN on digits, then Budgeted-KMR with magnitude pruning under the
scheduled and the greedy policy (the paper's experiments 1 and 2), and Composed-KMR of pruning
and quantization in both orders under one storage budget (experiment 3)."""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from kmr_ref.compress import save_model
from kmr_ref.core import (
    GreedyPolicy,
    KMRResult,
    KMRTriple,
    Policy,
    Proposal,
    ScheduledPolicy,
    StepRecord,
    budgeted_kmr,
)
from kmr_ref.core.compose import ComposedResult, Phase, composed_kmr
from kmr_ref.core.policy import ladder_candidates
from kmr_ref.core.trace import json_value
from kmr_ref.examples import digits
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable, prunable_nonzero_meter
from kmr_ref.methods.quantization import UniformQuantization
from kmr_ref.methods.storage import composed_storage_meter


def scheduled_policy(top: int = 9) -> Policy[nn.Module]:
    """Global sparsity 1/10, 2/10, ..., top/10: one knob, fixed schedule."""
    return ScheduledPolicy(tuple(Proposal("sparsity", Fraction(i, 10)) for i in range(1, top + 1)))


def greedy_policy(rule: MagnitudePruning) -> Policy[nn.Module]:
    """Per-layer knobs: each step raises one layer's sparsity by 1/20; best quality per unit cost."""
    return GreedyPolicy(ladder_candidates([f"sparsity@{n}" for n in rule.tensor_names]))


def quant_schedule() -> Policy[nn.Module]:
    """Bit-width 16, 8, 4 (the int8 and packed 4-bit formats), symmetric per-channel."""
    return ScheduledPolicy(tuple(Proposal("bits", b) for b in (16, 8, 4)))


def run(args: argparse.Namespace) -> int:
    con = Console(stderr=args.json)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    data = digits.load(args.seed)
    retrain = args.train or args.fast or args.seed != digits.PRETRAINED_SEED
    # the shipped weights by default: the README's figures do not depend on this CPU's BLAS
    model = digits.train(data, epochs=3 if args.fast else 30, seed=args.seed) if retrain else digits.pretrained()
    train_s = time.perf_counter() - t0
    base_test = digits.accuracy(model, data.test)
    n0 = nonzero_prunable(model)
    budget = Fraction(args.budget) * n0
    how = f"trained in {train_s:.1f} s" if retrain else f"shipped weights ({digits.PRETRAINED_FILE})"
    con.print(f"[bold]digits CNN[/]: {how}, test accuracy {base_test:.4f}, "
              f"{n0} nonzero prunable weights; budget B = {budget} ({args.budget} of them)")
    rule = MagnitudePruning.for_model(model)
    triple = KMRTriple("magnitude-pruning", rule, prunable_nonzero_meter(), digits.accuracy_meter(data.val))
    policies: dict[str, Policy[nn.Module]] = {"scheduled": scheduled_policy(), "greedy": greedy_policy(rule)}
    names = list(policies) if args.policy == "all" else [args.policy] if args.policy != "compose" else []
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for name in names:
        t1 = time.perf_counter()
        res = _run_one(con, name, model, triple, policies[name], budget, args)
        seconds = time.perf_counter() - t1
        test_acc = digits.accuracy(res.model, data.test)
        runs.append(_report(name, res, base_test, test_acc, train_s, seconds))
        if args.out is not None:
            save_model(res.model, args.out / f"{name}.safetensors")  # atomic
        if not args.json:
            _print_table(con, name, res, test_acc, seconds)
    if args.policy in ("compose", "all"):
        runs += _compositions(con, model, data, rule, base_test, train_s, args)
    if args.json:
        print(json.dumps(runs, indent=1))
    return 0


def _compositions(con: Console, model: nn.Module, data: digits.Digits, rule: MagnitudePruning,
                  base_test: float, train_s: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Algorithm 10 with one storage-bit meter: prune-then-quantize and quantize-then-prune."""
    cost = composed_storage_meter()
    budget = Fraction(args.storage_budget) * cost(model)
    prune = Phase("prune", rule, scheduled_policy(top=5))  # moderate: leave room for quantization
    quant = Phase("quantize", UniformQuantization(scheme="symmetric", granularity="channel"), quant_schedule())
    con.print(f"[bold]composition[/]: storage {cost(model)} bits; budget B = {budget} ({args.storage_budget})")
    runs: list[dict[str, Any]] = []
    for name, phases in (("prune-then-quantize", [prune, quant]), ("quantize-then-prune", [quant, prune])):
        t1 = time.perf_counter()
        log = (args.out / f"{name}.trace.jsonl").open("w") if args.out is not None else None

        def on_record(phase: str, r: StepRecord, log: Any = log) -> None:
            if log is not None:
                log.write(json.dumps({**r.to_json(), "phase": phase}) + "\n")
                log.flush()

        try:
            out: ComposedResult[nn.Module] = composed_kmr(model, phases, cost, budget, args.max_steps,
                                                          quality=digits.accuracy_meter(data.val),
                                                          on_record=on_record)
        finally:
            if log is not None:
                log.close()
        seconds = time.perf_counter() - t1
        res = out.result
        test_acc = digits.accuracy(res.model, data.test)
        rep = _report(name, res, base_test, test_acc, train_s, seconds)
        rep["cost_unit"] = "bit"
        for step, phase in zip(rep["steps"], out.phase_of_record, strict=True):
            step["phase"] = phase
        rep["phases"] = [{"name": p.name, "status": p.status.value, "steps": p.steps} for p in out.phases]
        runs.append(rep)
        if args.out is not None:
            save_model(res.model, args.out / f"{name}.safetensors")  # atomic
        if not args.json:
            _print_table(con, name, res, test_acc, seconds, out.phase_of_record)
            con.print("phases: " + ", ".join(f"{p.name} -> {p.status.value}" for p in out.phases) + "\n")
    return runs


def _run_one(con: Console, name: str, model: nn.Module, triple: KMRTriple[nn.Module],
             policy: Policy[nn.Module], budget: Fraction, args: argparse.Namespace) -> KMRResult[nn.Module]:
    log = (args.out / f"{name}.trace.jsonl").open("w") if args.out is not None else None
    c0 = triple.cost(model)
    with Progress(TextColumn(f"{name:>9}"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=con, transient=True) as bar:
        task = bar.add_task("", total=float(c0 - budget))

        def on_record(r: StepRecord) -> None:
            if log is not None:  # streamed: an interrupted run keeps every record so far
                log.write(json.dumps(r.to_json()) + "\n")
                log.flush()
            bar.update(task, completed=float(c0 - r.cost_after) if r.accepted else None,
                       description=f"t={r.t} cost={r.cost_after}")

        try:
            return budgeted_kmr(model, triple, policy, budget, args.max_steps, on_record=on_record)
        finally:
            if log is not None:
                log.close()


def _report(name: str, res: KMRResult[nn.Module], base_test: float, test_acc: float,
            train_s: float, seconds: float) -> dict[str, Any]:
    return {
        "policy": name, "status": res.status.value, "budget": json_value(res.budget),
        "steps": [r.to_json() for r in res.trace],
        "initial": {"cost": json_value(res.cost_initial), "quality": res.quality_initial,
                    "test_accuracy": base_test},
        "final": {"cost": json_value(res.cost_final), "quality": res.quality_final, "test_accuracy": test_acc},
        "accepted_steps": res.accepted_steps, "train_seconds": round(train_s, 3), "seconds": round(seconds, 3),
    }


def _print_table(con: Console, name: str, res: KMRResult[nn.Module], test_acc: float, seconds: float,
                 phases: tuple[str, ...] | None = None) -> None:
    what = f"Composed-KMR, {name}" if phases else f"Budgeted-KMR, {name} policy"
    tab = Table(title=f"{what} (budget {res.budget})")
    for col in ("t", "knob = value", "cost", "val acc", "accepted"):
        tab.add_column(col, justify="right" if col != "knob = value" else "left")
    for i, r in enumerate(res.trace):
        knob = f"{phases[i]}: {r.knob} = {r.value}" if phases else f"{r.knob} = {r.value}"
        tab.add_row(str(r.t), knob, str(r.cost_after),
                    "" if r.quality is None else f"{r.quality:.4f}", "yes" if r.accepted else f"no ({r.reason})")
    con.print(tab)
    q = "" if res.quality_final is None else f"{res.quality_final:.4f}"
    con.print(f"status [bold]{res.status.value}[/]: cost {res.cost_initial} -> {res.cost_final} "
              f"(budget {res.budget}), val accuracy {q}, test accuracy {test_acc:.4f}, {seconds:.1f} s\n")
