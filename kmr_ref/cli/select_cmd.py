"""``kmr select RUN_DIR --budget B [--out DIR]``: the first accepted model of a run with cost <= B
(``KMR.trace.select``, spec/compress.md).

Every accepted record of a trace is a model and their costs strictly decrease
(``KMR.prop1.monotone``), so a ``kmr compress`` run directory is a family of models. The selected
step is found by binary search over the recorded costs; the model is rebuilt by re-applying the
trace's accepted steps from M_0 up to that step (rules are deterministic:
``KMR.rule.deterministic``), each re-measured cost checked against the record.

Exit codes: 0 selected (and written with ``--out``); 1 no model of the run meets B; 2 the run
directory, its config or the budget is refused (the message names the clause); 3 the user's code
(model factory, quality function) failed.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmr_ref.core.errors import KMRError
from kmr_ref.core.exact import Exact

SELECT = "KMR.trace.select"
SELECT_FILE = "select.json"


class NoFeasibleModel(KMRError):
    """``KMR.trace.select``: no model of the run (M_0 or an accepted step) has cost <= B."""


@dataclass(frozen=True)
class Selection:
    """The selected model of a run directory and where it sits in the trace."""

    model: Any  # nn.Module
    budget: Exact
    step: int  # accepted steps replayed (0: M_0)
    record: int | None  # index in trace.jsonl of the selected accepted record (None: M_0)
    cost: Exact
    quality: float | None
    costs: tuple[Exact, ...]  # C(M_0) and the cost after each accepted record
    rule_applications: int
    phase: str | None

    def to_json(self) -> dict[str, Any]:
        from kmr_ref.core.trace import json_value

        return {"budget": json_value(self.budget), "step": self.step, "record": self.record, "phase": self.phase,
                "cost": json_value(self.cost), "quality": self.quality, "rule_applications": self.rule_applications,
                "accepted_steps_in_run": len(self.costs) - 1}


def first_within(costs: tuple[Exact, ...], budget: Exact) -> int | None:
    """``KMR.trace.select``: the least i with ``costs[i] <= budget`` in a strictly decreasing
    sequence (binary search), or None."""
    i = bisect.bisect_left(costs, True, key=lambda c: c <= budget)
    return i if i < len(costs) else None


def select(run_dir: Path, budget: object, *, model: Any = None) -> Selection:
    """``KMR.trace.select``: rebuild the first model of ``run_dir``'s trace with cost <= ``budget``
    (an exact number in the run's meter unit, or a budget string such as ``"10%"`` / ``"18kB"``,
    ``KMR.compress.budget-units``, relative to the run's C(M_0)). ``model``: M_0 (default: built
    from the run's config). Raises :class:`NoFeasibleModel` when none is within the budget."""
    from kmr_ref.compress.artifacts import model_digest
    from kmr_ref.compress.build import build_meter, build_rule, import_object, load_model
    from kmr_ref.compress.config import CompressConfig, ConfigError, parse_budget
    from kmr_ref.compress.run import HEADER_FILE, TRACE_FILE, _check_trace, clone_input, read_trace
    from kmr_ref.core.rules import Rule
    from kmr_ref.core.trace import json_value

    run_dir = Path(run_dir)
    try:
        header = json.loads((run_dir / HEADER_FILE).read_text(encoding="utf-8"))
        cfg = CompressConfig.from_dict(header["config"])
        c0_rec = header["initial"]["cost"]
        q0 = header["initial"]["quality"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(SELECT, f"{run_dir / HEADER_FILE} is missing or unreadable: not a kmr compress "
                                  "run directory") from None
    recs, _ = read_trace(run_dir / TRACE_FILE)
    names = cfg.phase_names()
    _check_trace(recs, names, run_dir / TRACE_FILE)
    acc = [(j, r, ph) for j, (r, ph) in enumerate(recs) if r.accepted]
    c0 = _exact(c0_rec)
    costs: tuple[Exact, ...] = (c0, *(r.cost_after for _, r, _ in acc))
    if any(b >= a for a, b in itertools.pairwise(costs)):  # KMR.prop1.monotone holds for every run
        raise ConfigError(SELECT, f"{run_dir / TRACE_FILE}: accepted costs do not strictly decrease; "
                                  "the run directory is damaged")
    B = parse_budget(budget, cfg.meter, "budget").resolve(c0)  # KMR.compress.budget-units
    k = first_within(costs, B)  # KMR.trace.select: binary search over the recorded costs
    if k is None:
        raise NoFeasibleModel(SELECT, f"no model of this run has cost <= {json_value(B)}: the last accepted "
                                      f"step reached {json_value(costs[-1])} (C(M_0) = {json_value(costs[0])})")
    m0 = load_model(cfg) if model is None else model
    m0 = clone_input(m0)  # the caller's model is never touched
    if model_digest(m0) != header.get("model_sha256"):
        raise ConfigError(SELECT, "M_0 differs from the model the run started with (model_sha256 in run.json)")
    example = import_object(cfg.example_input, "example_input")() if cfg.example_input is not None else None
    cost = build_meter(cfg.meter, example)
    if cost(m0) != costs[0]:
        raise ConfigError(SELECT, f"C(M_0) is {cost(m0)} now, {costs[0]} in the run directory")
    rules: dict[str, Rule[Any]] = {}
    for i, (pc, name) in enumerate(zip(cfg.phases, names, strict=True)):
        rules[name] = build_rule(pc, m0, f"phases[{i}] ({name})")
    m, q, phase, rec_index = m0, q0, None, None
    for j, r, ph in acc[:k]:  # KMR.trace.select: replay the trace prefix (KMR.rule.deterministic)
        m = rules[ph].apply(m, r.knob, r.value)
        c = cost(m)
        if c != r.cost_after:
            raise ConfigError(SELECT, f"replaying record {j} ({ph}: {r.knob} = {r.value}) gives cost {c}, the trace "
                                      f"says {r.cost_after}: the rule or meter is not deterministic here")
        q, phase, rec_index = r.quality, ph, j
    if cost(m) != costs[k]:  # KMR.trace.select: the rebuilt model's cost is the recorded one
        raise ConfigError(SELECT, f"the rebuilt model measures {cost(m)}, the trace says {costs[k]}")
    return Selection(m, B, k, rec_index, costs[k], q, costs, k, phase)


def _exact(x: object) -> Exact:
    from kmr_ref.compress.config import ConfigError
    from kmr_ref.core.exact import to_exact

    return to_exact(x, clause=SELECT, error=ConfigError, what="initial cost")


def write(sel: Selection, run_dir: Path, out: Path, overwrite: bool = False) -> list[Path]:
    """``KMR.trace.select``: the selected model as a run directory ``kmr eval`` and ``kmr_ref.load``
    read: ``model.safetensors``, ``manifest.json`` (``KMR.compress.artifacts``), ``report.json``
    (status ``feasible``, the selection's cost and quality as ``final``) and ``select.json``."""
    from kmr_ref.compress.artifacts import save_run
    from kmr_ref.compress.build import load_model
    from kmr_ref.compress.config import CompressConfig, ConfigError
    from kmr_ref.compress.run import HEADER_FILE, REPORT_FILE, _write_json_atomic, clone_input
    from kmr_ref.core.trace import json_value

    header = json.loads((run_dir / HEADER_FILE).read_text(encoding="utf-8"))
    cfg = CompressConfig.from_dict(header["config"])
    files = [out / f for f in (REPORT_FILE, SELECT_FILE, "model.safetensors", "manifest.json")]
    if out.resolve() == run_dir.resolve() or (not overwrite and any(f.exists() for f in files)):
        raise ConfigError(SELECT, f"output folder {str(out)!r} already holds results (or is the run directory); "
                                  "choose another folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    save_run(sel.model, clone_input(load_model(cfg)), out, cfg.model)
    _write_json_atomic(out / SELECT_FILE, {"run_dir": str(run_dir), **sel.to_json()})
    _write_json_atomic(out / REPORT_FILE, {
        "kmr_spec": header.get("kmr_spec"), "status": "feasible", "meter": cfg.meter, "budget": json_value(sel.budget),
        "initial": header["initial"], "final": {"cost": json_value(sel.cost), "quality": sel.quality},
        "accepted_steps": sel.step, "selected_from": str(run_dir), "config": cfg.to_json()})
    return files


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "select", help="rebuild the first model of a kmr compress run whose cost is within a budget")
    p.add_argument("run_dir", type=Path, help="the output folder of kmr compress")
    p.add_argument("--budget", required=True,
                   help="B in the run's meter unit (or as in the config: '10%%', '18kB', '1/8' of C(M_0) as '12.5%%')")
    p.add_argument("--out", type=Path, default=None, help="write the selected model there (kmr eval reads it)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--json", action="store_true", help="print the selection as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kmr_ref.core.trace import json_value

    try:
        sel = select(args.run_dir, args.budget)
        if args.out is not None:
            write(sel, args.run_dir, args.out, args.overwrite)
    except NoFeasibleModel as e:  # KMR.trace.select: exit 1, the message names the clause
        print(f"kmr select: {e}", file=sys.stderr)
        return 1
    except KMRError as e:
        print(f"kmr select: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"kmr select: the user's code failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(sel.to_json()))
    else:
        where = ("M_0" if sel.record is None
                 else f"accepted step {sel.step} (trace.jsonl line {sel.record + 1}, {sel.phase})")
        print(f"{where}: cost {json_value(sel.cost)} <= {json_value(sel.budget)}, quality {sel.quality}"
              + (f"; written to {args.out}" if args.out is not None else ""))
    return 0
