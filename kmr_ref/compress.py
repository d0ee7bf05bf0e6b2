"""Compress your own ``torch.nn.Module`` to a budget (``spec/compress.md``).

One concept: the practitioner's entry point. A typed :class:`CompressConfig` (built in Python, by
:meth:`CompressConfig.from_dict`, or from a TOML file by :func:`load_config`) names the methods
(phases), their policies, one cost meter, the budget and the step limit; :func:`compress` builds
the phases and runs Algorithm 10 (``kmr_ref.core.compose``; one phase = Algorithm 1), streams the
trace, and writes the compressed weights and a report.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch import nn

from kmr_ref.core.compose import Phase, PhaseOutcome, composed_kmr
from kmr_ref.core.errors import KMRError
from kmr_ref.core.exact import Exact, to_exact
from kmr_ref.core.knobs import FiniteDomain, IntRange, Knob, RealInterval
from kmr_ref.core.meters import CostMeter, QualityMeter
from kmr_ref.core.policy import GreedyPolicy, Policy, Proposal, ScheduledPolicy, ladder_candidates
from kmr_ref.core.rules import Rule
from kmr_ref.core.trace import Status, StepRecord, json_value
from kmr_ref.methods.lowrank import LowRank
from kmr_ref.methods.meters import macs_meter, nonzero_meter, parameter_meter
from kmr_ref.methods.modules import clone_tree
from kmr_ref.methods.pruning import MagnitudePruning
from kmr_ref.methods.quantization import UniformQuantization
from kmr_ref.methods.storage import composed_storage_meter, storage_meter
from kmr_ref.methods.structured import StructuredPruning

SPEC_VERSION = "0.1.0"
CONFIG = "KMR.compress.config"
METHODS = "KMR.compress.methods"
METERS = "KMR.compress.meters"
POLICIES = "KMR.compress.policies"
BUDGET_FRACTION = "KMR.compress.budget-fraction"
OUTPUTS = "KMR.compress.outputs"
TOML = "KMR.compress.toml"

TRACE_FILE, MODEL_FILE, REPORT_FILE = "trace.jsonl", "model.safetensors", "report.json"
OUTPUT_FILES = (TRACE_FILE, MODEL_FILE, REPORT_FILE)
METER_NAMES = ("nonzeros", "params", "storage_bits", "composed_storage_bits", "macs")
MAX_LADDER = 4096  # KMR.compress.policies: a greedy knob's grid must not be longer than this

QualityFn = Callable[[nn.Module], float]
MeterName = Literal["nonzeros", "params", "storage_bits", "composed_storage_bits", "macs"]


class ConfigError(KMRError, ValueError):
    """A compress config (or its TOML file, or its output folder) the reference refuses; the
    message names the clause and the offending key."""


# ---------------------------------------------------------------------------------------------
# The typed config (KMR.compress.config)


@dataclass(frozen=True)
class PruneMethod:
    """``prune``: :class:`~kmr_ref.methods.pruning.MagnitudePruning` (knobs ``sparsity``,
    ``sparsity@<param>``)."""

    scope: Literal["global", "per-tensor"] = "global"
    kernel: bool = False
    method: Literal["prune"] = field(default="prune", init=False)

    def __post_init__(self) -> None:
        _one_of("scope", self.scope, ("global", "per-tensor"), "prune")
        _is_bool("kernel", self.kernel, "prune")


@dataclass(frozen=True)
class QuantizeMethod:
    """``quantize``: :class:`~kmr_ref.methods.quantization.UniformQuantization` (knobs ``bits`` and,
    for ``granularity = "group"``, ``group_size``; the knob not applied keeps this value)."""

    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int = 128
    bits: int = 8
    method: Literal["quantize"] = field(default="quantize", init=False)

    def __post_init__(self) -> None:
        _one_of("scheme", self.scheme, ("symmetric", "asymmetric"), "quantize")
        _one_of("granularity", self.granularity, ("tensor", "channel", "group"), "quantize")
        _int_in("group_size", self.group_size, 1, 2**31, "quantize")
        _int_in("bits", self.bits, 2, 16, "quantize")


@dataclass(frozen=True)
class StructuredMethod:
    """``structured``: :class:`~kmr_ref.methods.structured.StructuredPruning` (knobs ``fraction``,
    ``fraction@<layer>``)."""

    p: int = 2
    scope: Literal["per-layer", "global"] = "per-layer"
    method: Literal["structured"] = field(default="structured", init=False)

    def __post_init__(self) -> None:
        _one_of("p", self.p, (1, 2), "structured")
        _one_of("scope", self.scope, ("per-layer", "global"), "structured")


@dataclass(frozen=True)
class LowRankMethod:
    """``lowrank``: :class:`~kmr_ref.methods.lowrank.LowRank` (knobs ``rank``, ``energy``,
    ``rank@<layer>``, ``energy@<layer>``)."""

    method: Literal["lowrank"] = field(default="lowrank", init=False)


MethodConfig = PruneMethod | QuantizeMethod | StructuredMethod | LowRankMethod
_METHOD_TYPES: dict[str, type[MethodConfig]] = {
    "prune": PruneMethod, "quantize": QuantizeMethod, "structured": StructuredMethod, "lowrank": LowRankMethod,
}
# KMR.compress.policies: the knob a scheduled policy drives when it names none
DEFAULT_KNOB = {"prune": "sparsity", "quantize": "bits", "structured": "fraction", "lowrank": "energy"}
# KMR.compress.policies: greedy "per-layer" = these knobs, one per layer (quantize has none)
PER_LAYER_PREFIX = {"prune": "sparsity@", "structured": "fraction@", "lowrank": "energy@"}


@dataclass(frozen=True)
class ScheduledConfig:
    """``{type = "scheduled", knob = ..., values = [...]}``: ``KMR.policy.scheduled`` over
    (knob, v) for v in ``values``; ``knob`` defaults to the method's main knob."""

    values: Sequence[object]  # a list is stored as a tuple
    knob: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.values, list):  # Python callers write lists
            object.__setattr__(self, "values", tuple(self.values))
        if not isinstance(self.values, tuple) or not self.values:
            raise ConfigError(CONFIG, f"scheduled policy: values must be a non-empty list, got {self.values!r}")
        if self.knob is not None and not isinstance(self.knob, str):
            raise ConfigError(CONFIG, f"scheduled policy: knob must be a string, got {self.knob!r}")


@dataclass(frozen=True)
class GreedyConfig:
    """``{type = "greedy", knobs = "per-layer" | [...]}``: ``KMR.policy.greedy`` over
    ``KMR.policy.ladder`` candidates of the named knobs; needs a quality meter."""

    knobs: str | Sequence[str] = "per-layer"  # a list is stored as a tuple

    def __post_init__(self) -> None:
        if isinstance(self.knobs, list):
            object.__setattr__(self, "knobs", tuple(self.knobs))
        ok = self.knobs == "per-layer" or (
            isinstance(self.knobs, tuple) and bool(self.knobs) and all(isinstance(k, str) for k in self.knobs))
        if not ok:
            raise ConfigError(CONFIG, f'greedy policy: knobs must be "per-layer" or a non-empty list of knob '
                                      f"names, got {self.knobs!r}")


PolicyConfig = ScheduledConfig | GreedyConfig


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of Algorithm 10: a method and its policy. ``name`` tags the phase's trace records
    (default: the method, ``-2``, ``-3``, ... when a method repeats)."""

    method: MethodConfig
    policy: PolicyConfig
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.method, PruneMethod | QuantizeMethod | StructuredMethod | LowRankMethod):
            raise ConfigError(CONFIG, f"phase method must be one of {sorted(_METHOD_TYPES)}, got {self.method!r}")
        if not isinstance(self.policy, ScheduledConfig | GreedyConfig):
            raise ConfigError(CONFIG, f"phase policy must be scheduled or greedy, got {self.policy!r}")
        if not isinstance(self.name, str):
            raise ConfigError(CONFIG, f"phase name must be a string, got {self.name!r}")


@dataclass(frozen=True)
class CompressConfig:
    """``KMR.compress.config``: what to compress, with which phases, to which budget.

    Exactly one of ``budget`` (absolute, in the meter's unit) and ``budget_fraction`` (of the
    initial cost, ``KMR.compress.budget-fraction``) is given; both are exact (int, Fraction,
    ``"p/q"`` string, or a float read by ``KMR.exact.binary64``). ``model``, ``weights``,
    ``quality`` and ``example_input`` are the TOML's sources (``"module:attr"`` import paths and a
    path); the Python API passes the model and may pass callables to :func:`compress` instead.
    """

    phases: Sequence[PhaseConfig]  # a list is stored as a tuple
    meter: str = "nonzeros"
    budget: object = None
    budget_fraction: object = None
    max_steps: int = 100
    quality: str | None = None
    example_input: str | None = None
    model: str | None = None
    weights: Path | None = None
    out_dir: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:  # KMR.compress.config: refused before anything runs
        if isinstance(self.phases, list):
            object.__setattr__(self, "phases", tuple(self.phases))
        for key in ("weights", "out_dir"):
            if isinstance(getattr(self, key), str):
                object.__setattr__(self, key, Path(getattr(self, key)))
        if not isinstance(self.phases, tuple) or not self.phases:
            raise ConfigError(CONFIG, "at least one phase is required ([[phases]] in TOML)")
        for p in self.phases:
            if not isinstance(p, PhaseConfig):
                raise ConfigError(CONFIG, f"phases must hold PhaseConfig, got {type(p).__name__}")
        names = self.phase_names()
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(CONFIG, f"phase names must be unique; repeated: {dup}")
        if self.meter not in METER_NAMES:  # KMR.compress.meters
            raise ConfigError(METERS, f"unknown meter {self.meter!r}; known: {list(METER_NAMES)}")
        if (self.budget is None) == (self.budget_fraction is None):
            raise ConfigError(CONFIG, "give exactly one of budget (absolute) and budget_fraction (of the "
                                      f"initial cost); got budget={self.budget!r}, "
                                      f"budget_fraction={self.budget_fraction!r}")
        if self.budget is not None:
            b = to_exact(self.budget, clause=CONFIG, error=ConfigError, what="budget")
            if b < 0:
                raise ConfigError(CONFIG, f"budget must be >= 0, got {b}")
        else:
            f = to_exact(self.budget_fraction, clause=BUDGET_FRACTION, error=ConfigError, what="budget_fraction")
            if not 0 <= f <= 1:  # KMR.compress.budget-fraction: a fraction of C(M_0)
                raise ConfigError(BUDGET_FRACTION, f"budget_fraction must be in [0, 1], got {f}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ConfigError(CONFIG, f"max_steps must be an integer >= 0, got {self.max_steps!r}")
        for key in ("quality", "example_input", "model"):
            v = getattr(self, key)
            if v is not None:
                _check_import_path(key, v)
        for key in ("weights", "out_dir"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, Path):
                raise ConfigError(CONFIG, f"{key} must be a pathlib.Path, got {type(v).__name__}")
        _is_bool("overwrite", self.overwrite, "the config")

    def phase_names(self) -> list[str]:
        """Each phase's name: its ``name``, else its method (``-2``, ``-3``, ... on repeats)."""
        out: list[str] = []
        seen: dict[str, int] = {}
        for p in self.phases:
            m = p.method.method
            seen[m] = seen.get(m, 0) + 1
            out.append(p.name or (m if seen[m] == 1 else f"{m}-{seen[m]}"))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> CompressConfig:
        """The config from a TOML-shaped mapping (``KMR.compress.toml``); relative paths are
        resolved against ``base_dir`` (the TOML's folder; default: the working directory)."""
        base = Path.cwd() if base_dir is None else base_dir
        d = dict(_mapping(data, "the config"))
        _no_unknown(d, _TOP_KEYS, "the config")
        raw_phases = d.get("phases")
        if not isinstance(raw_phases, list) or not raw_phases:
            raise ConfigError(CONFIG, "at least one phase is required: [[phases]] tables with method and policy")
        phases = tuple(_phase_from_dict(p, i + 1) for i, p in enumerate(raw_phases))
        paths: dict[str, Path | None] = {}
        for key in ("weights", "out_dir"):
            v = d.get(key)
            if v is not None and not isinstance(v, str):
                raise ConfigError(CONFIG, f"{key} must be a path string, got {v!r}")
            paths[key] = None if v is None else (base / Path(v)).resolve()  # KMR.compress.toml
        for key in ("quality", "example_input", "model", "meter"):
            if key in d and not isinstance(d[key], str):
                raise ConfigError(CONFIG, f"{key} must be a string, got {d[key]!r}")
        return cls(
            phases=phases, meter=d.get("meter", "nonzeros"), budget=d.get("budget"),
            budget_fraction=d.get("budget_fraction"), max_steps=d.get("max_steps", 100),
            quality=d.get("quality"), example_input=d.get("example_input"), model=d.get("model"),
            weights=paths["weights"], out_dir=paths["out_dir"], overwrite=d.get("overwrite", False),
        )

    def to_json(self) -> dict[str, Any]:
        """The config echo of ``report.json``: the same keys :meth:`from_dict` reads (absolute paths)."""
        out: dict[str, Any] = {"meter": self.meter, "max_steps": self.max_steps}
        if self.budget is not None:
            out["budget"] = json_value(to_exact(self.budget, clause=CONFIG, error=ConfigError, what="budget"))
        else:
            out["budget_fraction"] = json_value(
                to_exact(self.budget_fraction, clause=BUDGET_FRACTION, error=ConfigError, what="budget_fraction"))
        for key in ("quality", "example_input", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("weights", "out_dir"):
            if getattr(self, key) is not None:
                out[key] = str(getattr(self, key))
        out["overwrite"] = self.overwrite
        out["phases"] = [_phase_to_json(p, n) for p, n in zip(self.phases, self.phase_names(), strict=True)]
        return out


_TOP_KEYS = ("phases", "meter", "budget", "budget_fraction", "max_steps", "quality", "example_input",
             "model", "weights", "out_dir", "overwrite")
_METHOD_KEYS = {"prune": ("scope", "kernel"), "quantize": ("scheme", "granularity", "group_size", "bits"),
                "structured": ("p", "scope"), "lowrank": ()}


def _phase_from_dict(raw: object, i: int) -> PhaseConfig:
    where = f"[[phases]] #{i}"
    d = dict(_mapping(raw, where))
    method = d.get("method")
    if method not in _METHOD_TYPES:  # KMR.compress.methods
        raise ConfigError(METHODS, f"{where}: unknown method {method!r}; known: {sorted(_METHOD_TYPES)}")
    assert isinstance(method, str)
    _no_unknown(d, ("method", "name", "policy", *_METHOD_KEYS[method]), f"{where} (method {method})")
    opts = {k: d[k] for k in _METHOD_KEYS[method] if k in d}
    try:
        mcfg: MethodConfig = _METHOD_TYPES[method](**opts)
    except ConfigError as e:
        raise ConfigError(e.clause, f"{where}: {e.message}") from None
    pol = dict(_mapping(d.get("policy"), f"{where} policy"))
    kind = pol.get("type")
    if kind == "scheduled":
        _no_unknown(pol, ("type", "knob", "values"), f"{where} policy")
        values = pol.get("values")
        if not isinstance(values, list):
            raise ConfigError(CONFIG, f"{where}: scheduled policy needs values = [...], got {values!r}")
        pcfg: PolicyConfig = ScheduledConfig(tuple(values), pol.get("knob"))
    elif kind == "greedy":
        _no_unknown(pol, ("type", "knobs"), f"{where} policy")
        knobs = pol.get("knobs", "per-layer")
        pcfg = GreedyConfig(tuple(knobs) if isinstance(knobs, list) else knobs)
    else:
        raise ConfigError(POLICIES, f'{where}: policy type must be "scheduled" or "greedy", got {kind!r}')
    name = d.get("name", "")
    return PhaseConfig(mcfg, pcfg, name)


def _phase_to_json(p: PhaseConfig, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "method": p.method.method}
    for k in _METHOD_KEYS[p.method.method]:
        out[k] = getattr(p.method, k)
    if isinstance(p.policy, ScheduledConfig):
        pol: dict[str, Any] = {"type": "scheduled", "values": [_echo_value(v) for v in p.policy.values]}
        if p.policy.knob is not None:
            pol["knob"] = p.policy.knob
    else:
        pol = {"type": "greedy", "knobs": p.policy.knobs if isinstance(p.policy.knobs, str) else list(p.policy.knobs)}
    out["policy"] = pol
    return out


def _echo_value(v: object) -> Any:
    if isinstance(v, str | bool):
        return v
    try:
        return json_value(to_exact(v, clause=CONFIG, error=ConfigError, what="value"))
    except ConfigError:
        return repr(v)


def load_config(path: str | Path) -> CompressConfig:
    """``KMR.compress.toml``: read a TOML config; relative paths resolve against its folder."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(TOML, f"config file {str(p)!r} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(TOML, f"{p}: not valid TOML: {e}") from None
    return CompressConfig.from_dict(data, p.resolve().parent)


def import_object(spec: str, key: str) -> Any:
    """``KMR.compress.toml``: the attribute named by ``"package.module:attr"``."""
    _check_import_path(key, spec)
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(TOML, f"{key} = {spec!r}: cannot import module {mod_name!r} ({e}); "
                                "is it installed or on PYTHONPATH?") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(TOML, f"{key} = {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(TOML, f"{key} = {spec!r} is not callable")
    return obj


def load_model(config: CompressConfig) -> nn.Module:
    """``KMR.compress.toml``: call the ``model`` factory (zero arguments) and, when ``weights`` is
    set, load that safetensors file into it strictly (every key, no extra key, same shapes)."""
    if config.model is None:
        raise ConfigError(TOML, 'no model: the TOML needs model = "package.module:factory"')
    factory = import_object(config.model, "model")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(TOML, f"model = {config.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    if config.weights is not None:
        from safetensors.torch import load_file

        if not config.weights.is_file():
            raise ConfigError(TOML, f"weights file {str(config.weights)!r} not found")
        sd = load_file(str(config.weights))
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ConfigError(TOML, f"weights {str(config.weights)!r} do not match the model: {e}") from None
    return model


# ---------------------------------------------------------------------------------------------
# Building the phases (KMR.compress.methods, KMR.compress.meters, KMR.compress.policies)


def build_rule(method: MethodConfig, model: nn.Module) -> Rule[nn.Module]:
    """``KMR.compress.methods``: the rule of ``method``, with per-layer knobs named from ``model``."""
    if isinstance(method, PruneMethod):
        return MagnitudePruning.for_model(model, scope=method.scope, kernel=method.kernel)
    if isinstance(method, QuantizeMethod):
        return UniformQuantization(scheme=method.scheme, granularity=method.granularity, bits=method.bits,
                                   group_size=method.group_size)
    if isinstance(method, StructuredMethod):
        return StructuredPruning.for_model(model, p=method.p, scope=method.scope)
    return LowRank.for_model(model)


def build_meter(name: str, example_input: object = None) -> CostMeter[nn.Module]:
    """``KMR.compress.meters``: the cost meter named ``name``; ``macs`` needs an example input."""
    if name == "nonzeros":
        return nonzero_meter()
    if name == "params":
        return parameter_meter()
    if name == "storage_bits":
        return storage_meter()
    if name == "composed_storage_bits":
        return composed_storage_meter()
    if name == "macs":
        if example_input is None:
            raise ConfigError(METERS, 'meter "macs" needs an example input (example_input = "module:fn" in TOML, '
                                      "or compress(..., example_input=...))")
        if not (isinstance(example_input, torch.Tensor) or (
                isinstance(example_input, tuple) and all(isinstance(t, torch.Tensor) for t in example_input))):
            raise ConfigError(METERS, f"example input must be a tensor or a tuple of tensors, "
                                      f"got {type(example_input).__name__}")
        return macs_meter(example_input)
    raise ConfigError(METERS, f"unknown meter {name!r}; known: {list(METER_NAMES)}")


def build_policy(pc: PhaseConfig, rule: Rule[nn.Module], where: str, has_quality: bool) -> Policy[nn.Module]:
    """``KMR.compress.policies``: the phase's policy, every knob and value checked up front."""
    knobs = {k.name: k for k in rule.knobs()}
    method = pc.method.method
    if isinstance(pc.policy, ScheduledConfig):
        name = pc.policy.knob or DEFAULT_KNOB[method]
        knob = _known_knob(knobs, name, where)
        props = []
        for v in pc.policy.values:
            if isinstance(v, bool):
                raise ConfigError(POLICIES, f"{where}: value {v!r} for knob {name!r} is a boolean")
            try:
                props.append(Proposal(name, knob.check(v)))  # KMR.knob.domain, checked before anything runs
            except KMRError as e:
                raise ConfigError(POLICIES, f"{where}: value {v!r} for knob {name!r}: {e.message}") from None
        return ScheduledPolicy(tuple(props))
    if not has_quality:
        raise ConfigError(POLICIES, f"{where}: a greedy policy needs a quality meter (quality = \"module:fn\" in "
                                    "TOML, or compress(..., quality=...))")
    if pc.policy.knobs == "per-layer":
        prefix = PER_LAYER_PREFIX.get(method)
        if prefix is None:
            raise ConfigError(POLICIES, f'{where}: method {method!r} has no per-layer knobs; name the knobs, '
                                        f"e.g. knobs = {sorted(knobs)}")
        names = [n for n in knobs if n.startswith(prefix)]
        if not names:
            raise ConfigError(POLICIES, f"{where}: the model has no layers with a {prefix}<layer> knob")
    else:
        names = list(pc.policy.knobs)
    for n in names:
        size = _grid_size(_known_knob(knobs, n, where))
        if size is None or size > MAX_LADDER:
            raise ConfigError(POLICIES, f"{where}: knob {n!r} has no grid of at most {MAX_LADDER} values to "
                                        "climb (use a scheduled policy for it)")
    return GreedyPolicy(ladder_candidates(names))


def _known_knob(knobs: Mapping[str, Knob], name: str, where: str) -> Knob:
    if name not in knobs:
        shown = sorted(knobs)[:12]
        more = f" (and {len(knobs) - len(shown)} more)" if len(knobs) > len(shown) else ""
        raise ConfigError(POLICIES, f"{where}: unknown knob {name!r}; this method has {shown}{more}")
    return knobs[name]


def _grid_size(k: Knob) -> int | None:
    d = k.domain
    if isinstance(d, FiniteDomain):
        return len(d.values)
    if isinstance(d, IntRange):
        return d.hi - d.lo + 1
    assert isinstance(d, RealInterval)
    if d.step is None or d.step <= 0:
        return None
    return math.floor((d.hi - d.lo) / d.step) + 1


# ---------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class CompressReport:
    """What :func:`compress` returns (and writes as ``report.json``)."""

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

    @property
    def accepted_steps(self) -> int:
        return sum(1 for r in self.steps if r.accepted)

    def step_json(self) -> list[dict[str, Any]]:
        """The trace records as written to ``trace.jsonl`` (one object per line)."""
        return [{**r.to_json(), "phase": ph} for r, ph in zip(self.steps, self.step_phases, strict=True)]

    def to_json(self) -> dict[str, Any]:
        methods = dict(zip(self.config.phase_names(), (p.method.method for p in self.config.phases), strict=True))
        return {
            "kmr_spec": SPEC_VERSION, "status": self.status.value,
            "meter": self.meter, "unit": self.unit, "budget": json_value(self.budget),
            "initial": {"cost": json_value(self.cost_initial), "quality": self.quality_initial},
            "final": {"cost": json_value(self.cost_final), "quality": self.quality_final},
            "accepted_steps": self.accepted_steps,
            "phases": [{"name": p.name, "method": methods[p.name], "status": p.status.value, "steps": p.steps}
                       for p in self.phases],
            "steps": self.step_json(),
            "config": self.config.to_json(),
            "outputs": None if self.out_dir is None else
            {"dir": str(self.out_dir), "trace": TRACE_FILE, "model": MODEL_FILE, "report": REPORT_FILE},
            "seconds": round(self.seconds, 3),
        }


def compress(model: nn.Module, config: CompressConfig, *, quality: QualityFn | None = None,
             example_input: object = None, out_dir: str | Path | None = None,
             overwrite: bool = False) -> CompressReport:
    """Compress ``model`` as ``config`` says (``spec/compress.md``); ``model`` is never modified.

    ``quality`` (a function of the model, higher is better) and ``example_input`` (for the
    ``macs`` meter) override the config's import paths; ``out_dir`` overrides ``config.out_dir``;
    ``overwrite`` (or ``config.overwrite``) lets existing results in the folder be replaced.
    """
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
    m0 = clone_tree(model)  # KMR.compress.outputs: the caller's module objects are never touched
    q_of_m0: list[float] = []  # Q(M_0), kept for a report after an interrupt the core did not catch
    qmeter = None if quality is None else QualityMeter("quality", _no_grad(quality, m0, q_of_m0))
    names = config.phase_names()
    phases: list[Phase[nn.Module]] = []
    for i, (pc, name) in enumerate(zip(config.phases, names, strict=True)):  # KMR.compress.phases: file order
        rule = build_rule(pc.method, m0)  # KMR.compress.methods
        pol = build_policy(pc, rule, f"phase {i + 1} ({name})", qmeter is not None)  # KMR.compress.policies
        phases.append(Phase(name, rule, pol))
    out = Path(out_dir) if out_dir is not None else config.out_dir
    if out is not None:
        _check_out_dir(out, overwrite or config.overwrite, config.weights)  # KMR.compress.outputs
    c0 = cost(m0)
    if config.budget is not None:
        budget = to_exact(config.budget, clause=CONFIG, error=ConfigError, what="budget")
    else:  # KMR.compress.budget-fraction: B = fraction * C(M_0), exact
        frac = Fraction(to_exact(config.budget_fraction, clause=BUDGET_FRACTION, error=ConfigError,
                                 what="budget_fraction"))
        budget = to_exact(frac * c0, clause=BUDGET_FRACTION, error=ConfigError, what="budget")
    log: IO[str] | None = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for f in (MODEL_FILE, REPORT_FILE):  # a stale result never sits next to a new trace
            (out / f).unlink(missing_ok=True)
        log = (out / TRACE_FILE).open("w", encoding="utf-8")
    written: list[StepRecord] = []

    def on_record(phase: str, r: StepRecord) -> None:
        written.append(r)
        if log is not None:  # streamed: an interrupted run keeps every record so far
            log.write(json.dumps({**r.to_json(), "phase": phase}) + "\n")
            log.flush()

    try:
        try:
            res = composed_kmr(m0, phases, cost, budget, config.max_steps, quality=qmeter, on_record=on_record)
            final = res.result
            status, steps, owners, outcomes = final.status, final.trace, res.phase_of_record, res.phases
            m_out, c_fin, q0, q_fin = final.model, final.cost_final, final.quality_initial, final.quality_final
        except KeyboardInterrupt:  # KMR.compress.interrupt: while Algorithm 10 measured M_0 itself
            q0 = q_of_m0[0] if q_of_m0 else None
            status, steps, owners, outcomes = Status.INTERRUPTED, (), (), ()
            m_out, c_fin, q_fin = m0, c0, q0
        if log is not None:  # an interrupt between recording and streaming: write what is missing
            for r, ph in zip(steps[len(written):], owners[len(written):], strict=True):
                log.write(json.dumps({**r.to_json(), "phase": ph}) + "\n")
    finally:
        if log is not None:
            log.close()
    report = CompressReport(status, m_out, config.meter, cost.unit, budget, c0, c_fin, q0, q_fin, tuple(steps),
                            tuple(owners), tuple(outcomes), time.perf_counter() - t_start, config, out)
    if out is not None:
        save_model(m_out, out / MODEL_FILE)  # KMR.compress.outputs: atomic
        report = _with_seconds(report, time.perf_counter() - t_start)
        _atomic_write_text(out / REPORT_FILE, json.dumps(report.to_json(), indent=1) + "\n")
    return report


def _no_grad(fn: QualityFn, m0: nn.Module, q_of_m0: list[float]) -> QualityFn:
    """``KMR.compress.config``: the quality function runs without autograd."""

    def q(m: nn.Module) -> float:
        with torch.no_grad():
            v = fn(m)
        if m is m0 and not q_of_m0 and isinstance(v, float | int) and not isinstance(v, bool):
            q_of_m0.append(float(v))
        return v

    return q


def _with_seconds(r: CompressReport, seconds: float) -> CompressReport:
    return replace(r, seconds=seconds)


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


def save_model(model: nn.Module, path: Path) -> None:
    """``KMR.compress.outputs``: the model's ``state_dict`` as safetensors, written to a temporary
    file in the same folder and renamed over ``path`` (an interrupted save leaves no half file).
    Entries that share storage with an earlier entry are stored as copies (safetensors refuses
    shared storage)."""
    from safetensors.torch import save_file

    seen: set[tuple[str, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        t = v.detach().contiguous()
        key = (str(t.device), t.untyped_storage().data_ptr())
        tensors[k] = t.clone() if key in seen and t.numel() > 0 else t
        seen.add(key)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Small validators


def _mapping(x: object, where: str) -> Mapping[str, Any]:
    if not isinstance(x, Mapping):
        raise ConfigError(CONFIG, f"{where} must be a table, got {type(x).__name__}")
    return x


def _no_unknown(d: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    extra = sorted(set(d) - set(known))
    if extra:
        raise ConfigError(CONFIG, f"unknown key(s) {extra} in {where}; known: {sorted(known)}")


def _one_of(key: str, v: object, allowed: Sequence[object], where: str) -> None:
    if isinstance(v, bool) or not any(type(v) is type(a) and v == a for a in allowed):  # 2.0 is not 2
        raise ConfigError(METHODS, f"{where}: {key} must be one of {list(allowed)}, got {v!r}")


def _is_bool(key: str, v: object, where: str) -> None:
    if not isinstance(v, bool):
        raise ConfigError(CONFIG, f"{where}: {key} must be true or false, got {v!r}")


def _int_in(key: str, v: object, lo: int, hi: int, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(METHODS, f"{where}: {key} must be an integer in [{lo}, {hi}], got {v!r}")


def _check_import_path(key: str, v: object) -> None:
    ok = isinstance(v, str) and v.count(":") == 1 and all(v.partition(":")[::2])
    if not ok:
        raise ConfigError(CONFIG, f'{key} must be an import path "package.module:attr", got {v!r}')


__all__ = [
    "CompressConfig", "CompressReport", "ConfigError", "GreedyConfig", "LowRankMethod", "PhaseConfig",
    "PruneMethod", "QuantizeMethod", "ScheduledConfig", "StructuredMethod", "build_meter", "build_policy",
    "build_rule", "compress", "import_object", "load_config", "load_model", "save_model",
]

