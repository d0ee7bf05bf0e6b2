"""The run (``KMR.compress.phases``): Algorithm 10 over the built phases, the streamed trace
(``KMR.compress.outputs``), resume after a kill (``KMR.compress.resume``) and the progress events
(``KMR.compress.progress``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from kmr_ref.compress.artifacts import DENSE_FILE, MANIFEST_FILE, MODEL_FILE, model_digest, save_run
from kmr_ref.compress.build import build_meter, build_policy, build_rule, import_object
from kmr_ref.compress.config import (
    CONFIG,
    OUTPUTS,
    SPEC_VERSION,
    CompressConfig,
    ConfigError,
    GreedyConfig,
    config_budget,
)
from kmr_ref.core.compose import Phase, PhaseOutcome, composed_kmr
from kmr_ref.core.exact import Exact, to_exact
from kmr_ref.core.meters import CostMeter, QualityMeter
from kmr_ref.core.policy import Policy, PolicyState, Proposal, Stop
from kmr_ref.core.rules import Rule, reusing
from kmr_ref.core.trace import Status, StepRecord, json_value

RESUME = "KMR.compress.resume"
TRACE_FILE, REPORT_FILE, HEADER_FILE = "trace.jsonl", "report.json", "run.json"
OUTPUT_FILES = (HEADER_FILE, TRACE_FILE, MODEL_FILE, MANIFEST_FILE, REPORT_FILE, DENSE_FILE)
RESULT_FILES = (MODEL_FILE, MANIFEST_FILE, REPORT_FILE, DENSE_FILE)

QualityFn = Callable[[nn.Module], float]
M = TypeVar("M")


class ProgressSink(Protocol):
    """``KMR.compress.progress``: what a run reports while it runs (informative)."""

    def measuring(self) -> None: ...

    def started(self, *, meter: str, unit: str, budget: Exact, cost: Exact, quality: float | None,
                max_steps: int, resumed: int) -> None: ...

    def step(self, phase: str, record: StepRecord, replayed: bool) -> None: ...

    def finished(self, report: CompressReport) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CompressReport:
    """What ``compress`` returns (and writes as ``report.json``)."""

    status: Status
    model: nn.Module  # the last accepted model (Algorithm 10's output)
    meter: str
    unit: str
    budget: Exact
    cost_initial: Exact
    cost_final: Exact
    quality_initial: float | None
    quality_final: float | None
    steps: tuple[StepRecord, ...]
    step_phases: tuple[str, ...]  # the phase of each step
    phases: tuple[PhaseOutcome, ...]  # phases that ran, in order
    seconds: float
    config: CompressConfig
    out_dir: Path | None
    resumed_steps: int = 0  # records replayed from trace.jsonl (KMR.compress.resume)
    files: tuple[str, ...] = ()

    @property
    def accepted_steps(self) -> int:
        return sum(1 for r in self.steps if r.accepted)

    def step_json(self) -> list[dict[str, Any]]:
        """The trace records as written to ``trace.jsonl`` (one object per line)."""
        return [record_json(r, ph) for r, ph in zip(self.steps, self.step_phases, strict=True)]

    def to_json(self) -> dict[str, Any]:
        methods = dict(zip(self.config.phase_names(), (p.method.method for p in self.config.phases), strict=True))
        return {
            "kmr_spec": SPEC_VERSION, "status": self.status.value,
            "meter": self.meter, "unit": self.unit, "budget": json_value(self.budget),
            "initial": {"cost": json_value(self.cost_initial), "quality": self.quality_initial},
            "final": {"cost": json_value(self.cost_final), "quality": self.quality_final},
            "accepted_steps": self.accepted_steps, "resumed_steps": self.resumed_steps,
            "phases": [{"name": p.name, "method": methods[p.name], "status": p.status.value, "steps": p.steps}
                       for p in self.phases],
            "steps": self.step_json(),
            "config": self.config.to_json(),
            "outputs": None if self.out_dir is None else {"dir": str(self.out_dir), "files": list(self.files)},
            "seconds": round(self.seconds, 3),
        }


def record_json(r: StepRecord, phase: str) -> dict[str, Any]:
    return {**r.to_json(), "phase": phase}


def record_from_json(d: object) -> tuple[StepRecord, str]:
    """A ``trace.jsonl`` line back as (record, phase); ``ValueError`` when it is not one."""
    if not isinstance(d, dict) or set(d) != {"t", "knob", "value", "cost_before", "cost", "quality", "accepted",
                                              "reason", "phase"}:
        raise ValueError("not a trace record")

    def exact(x: object) -> Exact:
        if isinstance(x, bool) or not isinstance(x, int | str):
            raise ValueError(f"not an exact value: {x!r}")
        return to_exact(x, clause=RESUME, error=ConfigError, what="value")

    value = d["value"]
    v: Any = value if isinstance(value, int) and not isinstance(value, bool) else Fraction(str(value))
    q = d["quality"]
    if q is not None and (isinstance(q, bool) or not isinstance(q, int | float)):
        raise ValueError("quality must be a number or null")
    if not isinstance(d["accepted"], bool) or not isinstance(d["t"], int) or not isinstance(d["knob"], str):
        raise ValueError("bad field types")
    rec = StepRecord(d["t"], d["knob"], v, exact(d["cost_before"]), exact(d["cost"]), None if q is None else float(q),
                     d["accepted"], str(d["reason"]))
    return rec, str(d["phase"])


class _Quality:
    """``KMR.compress.config``: the user's quality function under ``torch.no_grad()``, evaluated at
    most once per model object among the start model and the two last ones (a rule never mutates
    its input, so the value cannot change)."""

    def __init__(self, fn: QualityFn) -> None:
        self.fn = fn
        self.pinned: tuple[nn.Module, float] | None = None
        self.recent: list[tuple[nn.Module, float]] = []

    def __call__(self, m: nn.Module) -> float:
        for mm, v in ([self.pinned] if self.pinned else []) + self.recent:
            if mm is m:
                return v
        with torch.no_grad():
            v = self.fn(m)
        self.recent = [*self.recent, (m, v)][-2:]
        return v

    def pin(self, m: nn.Module, v: float) -> None:
        self.pinned = (m, v)


@dataclass(frozen=True)
class _Positioned(Generic[M]):
    """``KMR.compress.resume``: the policy of a phase resumed after ``prior`` records (phase-local
    t): it sees the iteration index and history the uninterrupted phase would have seen."""

    inner: Policy[M]
    prior: tuple[StepRecord, ...]

    def __call__(self, state: PolicyState[M]) -> Proposal | Stop:
        k = len(self.prior)
        hist = self.prior + tuple(replace(r, t=r.t + k) for r in state.history)
        return self.inner(replace(state, t=state.t + k, history=hist))


def _fsync_line(log: IO[str], line: str) -> None:
    log.write(line)
    log.flush()
    os.fsync(log.fileno())  # KMR.compress.resume: a record counts once it is on disk


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_trace(path: Path) -> tuple[list[tuple[StepRecord, str]], int]:
    """``KMR.compress.resume``: the complete records of ``trace.jsonl`` and the byte length they
    span; a last line without its newline (a write cut by a kill) is not a record. A complete line
    that is not a record raises ``ConfigError``."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    out: list[tuple[StepRecord, str]] = []
    for i, line in enumerate(data[:end].split(b"\n")[:-1]):
        try:
            out.append(record_from_json(json.loads(line)))
        except (ValueError, ConfigError) as e:
            raise ConfigError(RESUME, f"{path}: line {i + 1} is not a trace record ({e}); "
                                      "the run directory is damaged") from None
    return out, end


def _check_trace(recs: Sequence[tuple[StepRecord, str]], names: Sequence[str], path: Path) -> None:
    """``KMR.compress.resume``: the records are a prefix of an Algorithm 10 trace of these phases."""
    used, last_phase, closed = 0, -1, False
    for r, ph in recs:
        if ph not in names:
            raise ConfigError(RESUME, f"{path}: record of unknown phase {ph!r}")
        i = names.index(ph)
        if i < last_phase or (i == last_phase and closed):
            raise ConfigError(RESUME, f"{path}: record t={r.t} of phase {ph!r} out of order")
        if i > last_phase:
            closed = False
        last_phase = i
        if r.t != used:
            raise ConfigError(RESUME, f"{path}: record t={r.t}, expected t={used}")
        used += 1 if r.accepted else 0
        closed = not r.accepted


def compress(model: nn.Module, config: CompressConfig, *, quality: QualityFn | None = None,
             example_input: object = None, out_dir: str | Path | None = None, overwrite: bool = False,
             resume: bool = False, save_dense: bool = False, progress: ProgressSink | None = None) -> CompressReport:
    """Compress ``model`` as ``config`` says (``spec/compress.md``); ``model`` is never modified.

    ``quality`` (a function of the model, higher is better) and ``example_input`` (for the
    ``macs`` meter) override the config's import paths; ``out_dir`` overrides ``config.out_dir``;
    ``overwrite`` (or ``config.overwrite``) lets existing results in the folder be replaced;
    ``resume`` continues the run recorded in ``out_dir`` (``KMR.compress.resume``);
    ``save_dense`` also writes the dense fp32 export; ``progress`` receives the run's events.
    """
    try:
        return _compress(model, config, quality, example_input, out_dir, overwrite, resume, save_dense, progress)
    finally:
        if progress is not None:
            progress.close()  # KMR.compress.progress: the display ends, also on an error


def _compress(model: nn.Module, config: CompressConfig, quality: QualityFn | None, example_input: object,
              out_dir: str | Path | None, overwrite: bool, resume: bool, save_dense: bool,
              progress: ProgressSink | None) -> CompressReport:
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ConfigError(CONFIG, f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, CompressConfig):
        raise ConfigError(CONFIG, f"config must be a CompressConfig, got {type(config).__name__}")
    if quality is None and config.quality is not None:
        quality = import_object(config.quality, "quality")
    if quality is not None and not callable(quality):
        raise ConfigError(CONFIG, f"quality must be callable, got {type(quality).__name__}")
    if example_input is None and config.example_input is not None:
        example_input = import_object(config.example_input, "example_input")()
    cost = build_meter(config.meter, example_input)  # KMR.compress.meters
    m0 = clone_input(model)  # KMR.compress.outputs: the caller's module objects are never touched
    qfn = None if quality is None else _Quality(quality)
    qmeter = None if qfn is None else QualityMeter("quality", qfn)
    names = config.phase_names()
    phases: list[Phase[nn.Module]] = []
    for i, (pc, name) in enumerate(zip(config.phases, names, strict=True)):  # KMR.compress.phases: file order
        where = f"phases[{i}] ({name})"
        rule = build_rule(pc, m0, where)  # KMR.compress.methods, KMR.compress.select
        if isinstance(pc.policy, GreedyConfig):
            rule = reusing(rule)  # KMR.rule.reuse: Algorithm 1 takes greedy's own T(M, k, v) (trace unchanged)
        pol = build_policy(pc, rule, where, qmeter is not None)  # KMR.compress.policies
        phases.append(Phase(name, rule, pol))
    budget_spec = config_budget(config)  # KMR.compress.budget-units
    out = Path(out_dir) if out_dir is not None else config.out_dir
    if resume and out is None:
        raise ConfigError(RESUME, "resume needs the run directory (out_dir / --resume DIR)")
    header: dict[str, Any] | None = None
    if out is not None and resume and (out / HEADER_FILE).exists():
        header = _read_header(out / HEADER_FILE)
        _check_header(header, config, m0)  # KMR.compress.resume: same config, same weights, same spec
    elif out is not None:
        _check_out_dir(out, overwrite or config.overwrite or resume, config.weights)  # KMR.compress.outputs
    if progress is not None:
        progress.measuring()
    c0 = cost(m0)
    budget = budget_spec.resolve(c0)  # KMR.compress.budget-fraction: B = f x C(M_0), exact
    if header is not None and (header["initial"]["cost"] != json_value(c0) or header["budget"] != json_value(budget)):
        raise ConfigError(RESUME, f"the initial cost is {c0} now, {header['initial']['cost']} in the run directory: "
                                  "the meter or the model is not the same")
    prior: list[tuple[StepRecord, str]] = []
    q0: float | None = None
    interrupted_at_start = False
    if header is not None:
        q0 = header["initial"]["quality"]
        assert out is not None
        prior, good = read_trace(out / TRACE_FILE)  # KMR.compress.resume: a torn last line is dropped
        _check_trace(prior, names, out / TRACE_FILE)
    elif qfn is not None:
        try:
            q0 = float(QualityMeter("quality", qfn)(m0))
            qfn.pin(m0, q0)
        except KeyboardInterrupt:  # KMR.compress.interrupt: during the first measurement
            interrupted_at_start = True
    if progress is not None:
        progress.started(meter=config.meter, unit=cost.unit, budget=budget, cost=c0, quality=q0,
                         max_steps=config.max_steps, resumed=len(prior))
    # KMR.compress.resume: the replay checks every record before any file is touched
    replayed = _replay(m0, phases, cost, prior, c0, q0, progress)
    if header is not None and out is not None and (out / TRACE_FILE).exists():
        with (out / TRACE_FILE).open("r+b") as fh:
            fh.truncate(good)
    log: IO[str] | None = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for f in RESULT_FILES:  # a stale result never sits next to a new trace
            (out / f).unlink(missing_ok=True)
        if header is None:
            _write_json_atomic(out / HEADER_FILE, {  # KMR.compress.resume: the header
                "kmr_spec": SPEC_VERSION, "config_sha256": config.digest(), "model_sha256": model_digest(m0),
                "budget": json_value(budget), "initial": {"cost": json_value(c0), "quality": q0},
                "config": config.to_json()})
            log = (out / TRACE_FILE).open("w", encoding="utf-8")
            os.fsync(log.fileno())
        else:
            log = (out / TRACE_FILE).open("a", encoding="utf-8")
    written: list[tuple[StepRecord, str]] = list(prior)
    try:
        if interrupted_at_start:
            state = _State(m0, c0, q0, Status.INTERRUPTED, [], [])
        else:
            state = _pipeline(replayed, phases, cost, qmeter, budget, config.max_steps, prior, log, written,
                              progress)
    finally:
        if log is not None:
            log.close()
    steps = tuple(r for r, _ in state.trace)
    owners = tuple(p for _, p in state.trace)
    report = CompressReport(state.status, state.model, config.meter, cost.unit, budget, c0, state.cost, q0,
                            state.quality, steps, owners, tuple(state.outcomes), time.perf_counter() - t_start,
                            config, out, len(prior))
    if out is not None:
        man = save_run(state.model, m0, out, config.model, save_dense)  # KMR.compress.artifacts
        files = [HEADER_FILE, TRACE_FILE, MANIFEST_FILE, MODEL_FILE, REPORT_FILE]
        if man["files"]["dense"]:
            files.append(DENSE_FILE)
        report = replace(report, seconds=time.perf_counter() - t_start, files=tuple(files))
        _write_json_atomic(out / REPORT_FILE, report.to_json())
    if progress is not None:
        progress.finished(report)
    return report


def clone_input(model: nn.Module) -> nn.Module:
    from kmr_ref.methods.modules import clone_tree

    return clone_tree(model)


@dataclass
class _State:
    model: nn.Module
    cost: Exact
    quality: float | None
    status: Status
    trace: list[tuple[StepRecord, str]]
    outcomes: list[PhaseOutcome]


@dataclass(frozen=True)
class _Replayed:
    model: nn.Module
    cost: Exact
    quality: float | None
    used: int


def _replay(m0: nn.Module, phases: Sequence[Phase[nn.Module]], cost: CostMeter[nn.Module],
            prior: Sequence[tuple[StepRecord, str]], c0: Exact, q0: float | None,
            progress: ProgressSink | None) -> _Replayed:
    """``KMR.compress.resume``: the state the prior records reach, their accepted steps
    re-applied from M_0 (``KMR.rule.deterministic``), each cost checked against the record."""
    rules: dict[str, Rule[nn.Module]] = {p.name: p.rule for p in phases}
    m, c, q, used = m0, c0, q0, 0
    for r, ph in prior:  # KMR.compress.resume: replay
        if progress is not None:
            progress.step(ph, r, True)
        if r.cost_before != c:
            raise ConfigError(RESUME, f"record t={r.t}: cost before {r.cost_before}, replay has {c}")
        if not r.accepted:
            continue
        m = rules[ph].apply(m, r.knob, r.value)
        c = cost(m)
        if c != r.cost_after:
            raise ConfigError(RESUME, f"replaying t={r.t} ({ph}: {r.knob} = {r.value}) gives cost {c}, the trace "
                                      f"says {r.cost_after}: the rule or meter is not deterministic here")
        q, used = r.quality, used + 1
    return _Replayed(m, c, q, used)


def _pipeline(start_state: _Replayed, phases: Sequence[Phase[nn.Module]], cost: CostMeter[nn.Module],
              qmeter: QualityMeter[nn.Module] | None, budget: Exact, max_steps: int,
              prior: Sequence[tuple[StepRecord, str]], log: IO[str] | None,
              written: list[tuple[StepRecord, str]], progress: ProgressSink | None) -> _State:
    """Algorithm 10 from M_0, or (``KMR.compress.resume``) from the replayed state: the finished
    phases' outcomes restored, the phase in progress resumed with its policy positioned after its
    records."""
    names = [p.name for p in phases]
    m, c, q, used = start_state.model, start_state.cost, start_state.quality, start_state.used
    outcomes: list[PhaseOutcome] = []
    start, positioned = 0, tuple[StepRecord, ...]()
    if prior:
        j = names.index(prior[-1][1])
        for i in range(j):
            recs = [r for r, ph in prior if ph == names[i]]
            st = Status.STALLED if recs and not recs[-1].accepted else Status.POLICY_STOP
            outcomes.append(PhaseOutcome(names[i], st, len(recs)))
        mine = tuple(r for r, ph in prior if ph == names[j])
        if mine[-1].accepted:
            base_t = mine[0].t
            start, positioned = j, tuple(replace(r, t=r.t - base_t) for r in mine)
        else:
            outcomes.append(PhaseOutcome(names[j], Status.STALLED, len(mine)))
            start = j + 1
    rest = list(phases[start:])
    if positioned:
        rest[0] = Phase(rest[0].name, rest[0].rule, _Positioned(rest[0].policy, positioned))

    def on_record(phase: str, r: StepRecord) -> None:
        rec = replace(r, t=r.t + used)
        written.append((rec, phase))
        if log is not None:  # KMR.compress.outputs: streamed, fsynced (KMR.compress.resume)
            _fsync_line(log, json.dumps(record_json(rec, phase)) + "\n")
        if progress is not None:
            progress.step(phase, rec, False)

    trace = list(prior)
    if prior and (c <= budget or used >= max_steps or not rest):
        # nothing left to run: the finished pipeline's status (KMR.alg10.status)
        if positioned:
            st = Status.FEASIBLE if c <= budget else Status.STEP_LIMIT
            outcomes.append(PhaseOutcome(names[start], st, len(positioned)))
        status = (Status.FEASIBLE if c <= budget else Status.STEP_LIMIT if used >= max_steps
                  else outcomes[-1].status)
        return _State(m, c, q, status, trace, outcomes)
    try:
        res = composed_kmr(m, rest, cost, budget, max_steps - used, quality=qmeter, on_record=on_record)
    except KeyboardInterrupt:  # KMR.compress.interrupt: while Algorithm 10 measured its start itself
        return _State(m, c, q, Status.INTERRUPTED, list(written), outcomes)
    new = [(replace(r, t=r.t + used), ph) for r, ph in zip(res.result.trace, res.phase_of_record, strict=True)]
    if log is not None:  # an interrupt between recording and streaming: write what is missing
        for rec, ph in new[len(written) - len(prior):]:
            _fsync_line(log, json.dumps(record_json(rec, ph)) + "\n")
    sub = list(res.phases)
    if positioned:
        if sub and sub[0].name == names[start]:
            sub[0] = PhaseOutcome(sub[0].name, sub[0].status, sub[0].steps + len(positioned))
        else:
            st = Status.FEASIBLE if c <= budget else Status.STEP_LIMIT
            sub.insert(0, PhaseOutcome(names[start], st, len(positioned)))
    return _State(res.result.model, res.result.cost_final, res.result.quality_final, res.result.status,
                  trace + new, outcomes + sub)


def _read_header(path: Path) -> dict[str, Any]:
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(RESUME, f"{path}: unreadable run header ({e})") from None
    if not isinstance(h, dict) or not {"kmr_spec", "config_sha256", "model_sha256", "budget", "initial"} <= set(h):
        raise ConfigError(RESUME, f"{path}: not a run header")
    return h


def _check_header(h: dict[str, Any], config: CompressConfig, m0: nn.Module) -> None:
    """``KMR.compress.resume``: refuse another spec version, another config, other weights."""
    if h["kmr_spec"] != SPEC_VERSION:
        raise ConfigError(RESUME, f"the run was made under spec {h['kmr_spec']}, this is {SPEC_VERSION}")
    if h["config_sha256"] != config.digest():
        raise ConfigError(RESUME, "the config differs from the one the run started with "
                                  "(config_sha256 in run.json); resume with the same config")
    if h["model_sha256"] != model_digest(m0):
        raise ConfigError(RESUME, "the model's weights differ from the ones the run started with "
                                  "(model_sha256 in run.json)")


def _check_out_dir(out: Path, overwrite: bool, weights: Path | None) -> None:
    """``KMR.compress.outputs``: refuse a folder holding results (unless ``overwrite``), a path that
    is not a folder, and any output path that is an input (the weights file)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(OUTPUTS, f"output path {str(out)!r} exists and is not a folder")
    targets = [out / f for f in OUTPUT_FILES]
    if weights is not None and any(t.resolve() == weights.resolve() for t in targets):
        raise ConfigError(OUTPUTS, f"the output folder {str(out)!r} would overwrite the input weights "
                                   f"{str(weights)!r}; choose another folder")
    present = [t.name for t in targets if t.exists()]
    if present and not overwrite:
        raise ConfigError(OUTPUTS, f"output folder {str(out)!r} already holds results {present}; "
                                   "pass overwrite=True (--overwrite) or choose another folder")
