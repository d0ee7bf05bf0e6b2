"""The compress config (``KMR.compress.config``): typed dataclasses for the Python API, and the
TOML / mapping reader, which checks the mapping against ``config.schema.json`` with the
``jsonschema`` library before building the dataclasses (errors name the key and the clause).

Budgets with units (``KMR.compress.budget-units``) and the method x meter table
(``KMR.compress.pairs``) are checked here too: all before anything runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]

from kmr_ref.core.errors import KMRError
from kmr_ref.core.exact import Exact, to_exact
from kmr_ref.core.trace import json_value

SPEC_VERSION = "0.1.0"
CONFIG = "KMR.compress.config"
METHODS = "KMR.compress.methods"
METERS = "KMR.compress.meters"
POLICIES = "KMR.compress.policies"
BUDGET_FRACTION = "KMR.compress.budget-fraction"
BUDGET_UNITS = "KMR.compress.budget-units"
PAIRS = "KMR.compress.pairs"
SELECT = "KMR.compress.select"
OUTPUTS = "KMR.compress.outputs"
TOML = "KMR.compress.toml"

METER_NAMES = ("nonzeros", "params", "storage_bits", "composed_storage_bits", "macs",
               "trained_params", "expected_macs")  # the last two: KMR.lora.cost-meter, KMR.exit.cost-meter
BIT_METERS = ("storage_bits", "composed_storage_bits")  # meters whose unit is the bit

# KMR.compress.pairs: (method, meter) -> why that meter cannot see what the method changes
POINTLESS: dict[tuple[str, str], str] = {
    ("prune", "params"): "unstructured pruning zeroes entries but removes none: the parameter count never falls",
    ("prune", "macs"): "MACs count the dense operations of every layer; zeroed entries still count",
    ("prune", "storage_bits"): "storage_bits stores every tensor dense, zeros included "
                               "(use composed_storage_bits, which stores a sparse tensor as bitmap + nonzeros)",
    ("quantize", "params"): "quantization changes no parameter count",
    ("quantize", "nonzeros"): "quantization changes values, not their number (use storage_bits or "
                              "composed_storage_bits)",
    ("quantize", "macs"): "MACs count operations, which quantized weights do not change",
}

# KMR.compress.pairs, the training methods and meters: LoRA adds adapters (only trained_params
# falls), exit heads add parameters and MACs (only expected_macs falls); pruning and quantization
# change neither the parameter count nor the dense MACs.
_ADDS = "LoRA adds adapter parameters and operations: this meter only rises (use trained_params)"
_HEADS = "exit heads add parameters and operations: this meter only rises (use expected_macs)"
POINTLESS |= {("lora", m): _ADDS for m in ("nonzeros", "params", "storage_bits", "composed_storage_bits", "macs",
                                           "expected_macs")}
POINTLESS |= {("early-exit", m): _HEADS for m in ("nonzeros", "params", "storage_bits", "composed_storage_bits",
                                                  "macs", "trained_params")}
POINTLESS |= {
    ("prune", "trained_params"): "unstructured pruning removes no parameter: the parameter count never falls",
    ("quantize", "trained_params"): "quantization changes no parameter count",
    ("prune", "expected_macs"): "expected MACs count the dense operations of every layer; zeroed entries still count",
    ("quantize", "expected_macs"): "MACs count operations, which quantized weights do not change",
    ("lowrank", "expected_macs"): "a factorized layer is not a Conv2d or Linear layer of a Sequential backbone "
                                  "(KMR.exit.backbone): expected MACs cannot be counted",
    ("embedding-distillation", "expected_macs"): "a transformer is not a Sequential backbone (KMR.exit.backbone)",
}

MeterName = Literal["nonzeros", "params", "storage_bits", "composed_storage_bits", "macs", "trained_params",
                    "expected_macs"]


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
        one_of("scope", self.scope, ("global", "per-tensor"), "prune")
        is_bool("kernel", self.kernel, "prune")


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
        one_of("scheme", self.scheme, ("symmetric", "asymmetric"), "quantize")
        one_of("granularity", self.granularity, ("tensor", "channel", "group"), "quantize")
        int_in("group_size", self.group_size, 1, 2**31, "quantize")
        int_in("bits", self.bits, 2, 16, "quantize")


@dataclass(frozen=True)
class StructuredMethod:
    """``structured``: :class:`~kmr_ref.methods.structured.StructuredPruning` (knobs ``fraction``,
    ``fraction@<layer>``)."""

    p: int = 2
    scope: Literal["per-layer", "global"] = "per-layer"
    graph: bool = False  # KMR.structured.graph-mode
    method: Literal["structured"] = field(default="structured", init=False)

    def __post_init__(self) -> None:
        one_of("p", self.p, (1, 2), "structured")
        one_of("scope", self.scope, ("per-layer", "global"), "structured")
        is_bool("graph", self.graph, "structured")


@dataclass(frozen=True)
class HeadsMethod:
    """``heads``: :class:`~kmr_ref.methods.structured_heads.HeadPruning` (knobs ``fraction``,
    ``fraction@<site>``; ``unit`` = heads | neurons; spec/methods/heads.md)."""

    unit: Literal["heads", "neurons"] = "heads"
    p: int = 2
    scope: Literal["per-layer", "global"] = "per-layer"
    method: Literal["heads"] = field(default="heads", init=False)

    def __post_init__(self) -> None:
        one_of("unit", self.unit, ("heads", "neurons"), "heads")
        one_of("p", self.p, (1, 2), "heads")
        one_of("scope", self.scope, ("per-layer", "global"), "heads")


@dataclass(frozen=True)
class LowRankMethod:
    """``lowrank``: :class:`~kmr_ref.methods.lowrank.LowRank` (knobs ``rank``, ``energy``,
    ``rank@<layer>``, ``energy@<layer>``)."""

    method: Literal["lowrank"] = field(default="lowrank", init=False)


@dataclass(frozen=True)
class DistillMethod:
    """``distillation``: :class:`~kmr_ref.methods.distillation.Distillation` (knob ``width``;
    ``spec/methods/distillation.md``). ``data`` and ``student`` are ``"module:attr"`` import paths:
    a zero-argument function returning the training split ``(x, y)``, and the student family
    ``student(width) -> nn.Module``."""

    temperature: object = 4
    alpha: object = "1/2"
    steps: int = 300
    seed: int = 0
    data: str = "kmr_ref.examples.shifted_digits:digits_train"
    student: str = "kmr_ref.methods.distillation:digits_student"
    method: Literal["distillation"] = field(default="distillation", init=False)

    def __post_init__(self) -> None:  # KMR.compress.methods: the settings of KMR.distill.settings
        for key, lo_open, hi in (("temperature", True, None), ("alpha", False, 1)):
            v = getattr(self, key)
            try:
                q = to_exact(v, clause=METHODS, error=ConfigError, what=key) if not isinstance(v, bool) else None
            except ConfigError:
                q = None
            if q is None or (q <= 0 if lo_open else q < 0) or (hi is not None and q > hi):
                want = "an exact number > 0" if lo_open else "an exact number in [0, 1]"
                raise ConfigError(METHODS, f"distillation: {key} must be {want}, got {v!r}")
        int_in("steps", self.steps, 1, 10**9, "distillation")
        int_in("seed", self.seed, 0, 2**63 - 1, "distillation")
        check_import_path("data", self.data)
        check_import_path("student", self.student)


@dataclass(frozen=True)
class EmbeddingDistillMethod:
    """``embedding-distillation``: :class:`~kmr_ref.methods.distillation.EmbeddingDistillation`
    (knob ``layers``; ``spec/methods/distillation.md``, ``KMR.distill.layers-knob ff.``). ``data`` is a
    ``"module:attr"`` import path of a zero-argument function returning ``(input_ids,
    attention_mask)`` of the training sentences; ``layers_path`` names the model's layer list."""

    steps: int = 40
    seed: int = 0
    data: str = "kmr_ref.models.minilm:train_inputs"
    layers_path: str = "bert.encoder.layer"
    method: Literal["embedding-distillation"] = field(default="embedding-distillation", init=False)

    def __post_init__(self) -> None:  # KMR.compress.methods: the settings of KMR.distill.layers-settings
        int_in("steps", self.steps, 1, 10**9, "embedding-distillation")
        int_in("seed", self.seed, 0, 2**63 - 1, "embedding-distillation")
        check_import_path("data", self.data)
        if not isinstance(self.layers_path, str) or not self.layers_path:
            raise ConfigError(METHODS, f"embedding-distillation: layers_path must be a module name, "
                                       f"got {self.layers_path!r}")


@dataclass(frozen=True)
class LoRAMethod:
    """``lora``: :class:`~kmr_ref.methods.lora.LoRA` (knob ``rank``; ``spec/methods/lora.md``).
    ``data`` is the import path of a zero-argument function returning the task split ``(x, y)``;
    ``targets`` the module names to adapt (None: every ``nn.Linear``, ``KMR.lora.targets``)."""

    steps: int = 300
    seed: int = 0
    data: str = "kmr_ref.examples.shifted_digits:rotated_train"
    targets: Sequence[str] | None = None  # a list is stored as a tuple
    method: Literal["lora"] = field(default="lora", init=False)

    def __post_init__(self) -> None:  # KMR.compress.methods: the settings of KMR.lora.settings
        int_in("steps", self.steps, 1, 10**9, "lora")
        int_in("seed", self.seed, 0, 2**63 - 1, "lora")
        check_import_path("data", self.data)
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        t = self.targets
        if t is not None and (not isinstance(t, tuple) or not t or not all(isinstance(n, str) for n in t)):
            raise ConfigError(METHODS, f"lora: targets must be a non-empty list of module names, got {t!r}")


@dataclass(frozen=True)
class EarlyExitMethod:
    """``early-exit``: :class:`~kmr_ref.methods.early_exit.EarlyExitRule` (knob ``threshold``;
    ``spec/methods/early_exit.md``). ``positions`` are the backbone layers the heads follow (each
    checked against M_0 before the run, ``KMR.exit.positions``); ``data`` the import path of a
    zero-argument function returning the head-training split ``(x, y)``."""

    positions: Sequence[int] = (1, 4)  # a list is stored as a tuple
    steps: int = 200
    seed: int = 0
    data: str = "kmr_ref.examples.shifted_digits:digits_train"
    method: Literal["early-exit"] = field(default="early-exit", init=False)

    def __post_init__(self) -> None:  # KMR.compress.methods: the settings of KMR.exit.settings
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))
        pos = self.positions
        if (not isinstance(pos, tuple) or not pos or any(isinstance(p, bool) or not isinstance(p, int) for p in pos)
                or list(pos) != sorted(set(pos))):
            raise ConfigError("KMR.exit.positions", f"early-exit: positions must be distinct ascending integers, "
                                                    f"got {pos!r}")
        int_in("steps", self.steps, 1, 10**9, "early-exit")
        int_in("seed", self.seed, 0, 2**63 - 1, "early-exit")
        check_import_path("data", self.data)


MethodConfig = PruneMethod | QuantizeMethod | StructuredMethod | LowRankMethod | DistillMethod | HeadsMethod \
    | EmbeddingDistillMethod | LoRAMethod | EarlyExitMethod
METHOD_TYPES: dict[str, type[MethodConfig]] = {
    "prune": PruneMethod, "quantize": QuantizeMethod, "structured": StructuredMethod, "lowrank": LowRankMethod,
    "distillation": DistillMethod,
}
METHOD_TYPES["heads"] = HeadsMethod
METHOD_KEYS = {"prune": ("scope", "kernel"), "quantize": ("scheme", "granularity", "group_size", "bits"),
               "structured": ("p", "scope", "graph"), "lowrank": (),
               "distillation": ("temperature", "alpha", "steps", "seed", "data", "student")}
METHOD_KEYS["heads"] = ("unit", "p", "scope")
# KMR.compress.policies: the knob a scheduled policy drives when it names none
DEFAULT_KNOB = {"prune": "sparsity", "quantize": "bits", "structured": "fraction", "lowrank": "energy",
                "distillation": "width"}
DEFAULT_KNOB["heads"] = "fraction"
# KMR.compress.policies: greedy "per-layer" = these knobs, one per layer or tensor
PER_LAYER_PREFIX = {"prune": "sparsity@", "quantize": "bits@", "structured": "fraction@", "lowrank": "energy@"}
PER_LAYER_PREFIX["heads"] = "fraction@"
# KMR.compress.training-methods (spec/methods/{distillation,lora,early_exit}.md): no per-layer knobs
METHOD_TYPES |= {"embedding-distillation": EmbeddingDistillMethod, "lora": LoRAMethod, "early-exit": EarlyExitMethod}
METHOD_KEYS |= {"embedding-distillation": ("steps", "seed", "data", "layers_path"),
                "lora": ("steps", "seed", "data", "targets"), "early-exit": ("positions", "steps", "seed", "data")}
DEFAULT_KNOB |= {"embedding-distillation": "layers", "lora": "rank", "early-exit": "threshold"}


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
    (default: the method, ``-2``, ``-3``, ... when a method repeats). ``include`` / ``exclude``
    (``KMR.compress.select``): glob patterns on M_0's parameter names restricting what the rule
    touches (``include=None``: the method's default selection)."""

    method: MethodConfig
    policy: PolicyConfig
    name: str = ""
    include: Sequence[str] | None = None  # a list is stored as a tuple
    exclude: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.method, tuple(METHOD_TYPES.values())):
            raise ConfigError(CONFIG, f"phase method must be one of {sorted(METHOD_TYPES)}, got {self.method!r}")
        if not isinstance(self.policy, ScheduledConfig | GreedyConfig):
            raise ConfigError(CONFIG, f"phase policy must be scheduled or greedy, got {self.policy!r}")
        if not isinstance(self.name, str):
            raise ConfigError(CONFIG, f"phase name must be a string, got {self.name!r}")
        for key in ("include", "exclude"):
            v = getattr(self, key)
            if isinstance(v, list):
                object.__setattr__(self, key, tuple(v))
                v = getattr(self, key)
            if v is None and key == "include":
                continue
            if not isinstance(v, tuple) or not all(isinstance(p, str) and p for p in v):
                raise ConfigError(SELECT, f"{key} must be a list of non-empty glob patterns, got {v!r}")


@dataclass(frozen=True)
class CompressConfig:
    """``KMR.compress.config``: what to compress, with which phases, to which budget.

    Exactly one of ``budget`` (absolute, in the meter's unit, or with a unit or ``%``:
    ``KMR.compress.budget-units``) and ``budget_fraction`` (of the initial cost,
    ``KMR.compress.budget-fraction``) is given. ``model``, ``weights``, ``quality`` and
    ``example_input`` are the TOML's sources (``"module:attr"`` import paths and a path); the
    Python API passes the model and may pass callables to ``compress`` instead.
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
        for i, (p, n) in enumerate(zip(self.phases, names, strict=True)):
            why = POINTLESS.get((p.method.method, self.meter))
            if why is not None:  # KMR.compress.pairs: refused with the reason
                raise ConfigError(PAIRS, f"phases[{i}] ({n}): method {p.method.method!r} under meter "
                                         f"{self.meter!r} is refused: {why}")
        if (self.budget is None) == (self.budget_fraction is None):
            raise ConfigError(CONFIG, "give exactly one of budget (absolute) and budget_fraction (of the "
                                      f"initial cost); got budget={self.budget!r}, "
                                      f"budget_fraction={self.budget_fraction!r}")
        if self.budget is not None:
            parse_budget(self.budget, self.meter, "budget")  # KMR.compress.budget-units
        else:
            parse_budget(self.budget_fraction, self.meter, "budget_fraction")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ConfigError(CONFIG, f"max_steps must be an integer >= 0, got {self.max_steps!r}")
        for key in ("quality", "example_input", "model"):
            v = getattr(self, key)
            if v is not None:
                check_import_path(key, v)
        for key in ("weights", "out_dir"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, Path):
                raise ConfigError(CONFIG, f"{key} must be a pathlib.Path, got {type(v).__name__}")
        is_bool("overwrite", self.overwrite, "the config")

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
        """The config from a TOML-shaped mapping (``KMR.compress.toml``), checked against
        ``config.schema.json``; relative paths are resolved against ``base_dir`` (the TOML's
        folder; default: the working directory)."""
        base = Path.cwd() if base_dir is None else base_dir
        if not isinstance(data, Mapping):
            raise ConfigError(CONFIG, f"the config must be a table, got {type(data).__name__}")
        d = dict(data)
        validate_schema(d)  # KMR.compress.config: the JSON Schema, errors naming key and clause
        phases = tuple(_phase_from_dict(p, i) for i, p in enumerate(d["phases"]))
        paths: dict[str, Path | None] = {}
        for key in ("weights", "out_dir"):
            v = d.get(key)
            paths[key] = None if v is None else (base / Path(v)).resolve()  # KMR.compress.toml
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
            out["budget"] = _echo_budget(self.budget)
        else:
            out["budget_fraction"] = _echo_budget(self.budget_fraction)
        for key in ("quality", "example_input", "model"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("weights", "out_dir"):
            if getattr(self, key) is not None:
                out[key] = str(getattr(self, key))
        out["overwrite"] = self.overwrite
        out["phases"] = [_phase_to_json(p, n) for p, n in zip(self.phases, self.phase_names(), strict=True)]
        return out

    def digest(self) -> str:
        """``KMR.compress.resume``: sha256 of the config echo without the output keys and the
        weights path (the weights are hashed by content)."""
        echo = {k: v for k, v in self.to_json().items() if k not in ("out_dir", "overwrite", "weights")}
        return hashlib.sha256(json.dumps(echo, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Budgets with units (KMR.compress.budget-units)

_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_BUDGET_RE = re.compile(r"\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?:(?P<pct>%)|(?P<prefix>Ki|Mi|Gi|Ti|[kKMGT])?"
                        r"(?P<unit>B|bit)?)\s*")


@dataclass(frozen=True)
class Budget:
    """A parsed budget: ``value`` in the meter's unit (``relative=False``) or a fraction of the
    initial cost (``relative=True``)."""

    value: Exact
    relative: bool

    def resolve(self, c0: Exact) -> Exact:
        """``KMR.compress.budget-fraction``: B = f x C(M_0), exact, or the absolute value."""
        if not self.relative:
            return self.value
        return to_exact(Fraction(self.value) * c0, clause=BUDGET_FRACTION, error=ConfigError, what="budget")


def parse_budget(x: object, meter: str, key: str) -> Budget:
    """``KMR.compress.budget-units`` (``key = "budget"``) and ``KMR.compress.budget-fraction``
    (``key = "budget_fraction"``): the exact budget a config value stands for."""
    clause = BUDGET_UNITS if key == "budget" else BUDGET_FRACTION
    if isinstance(x, str):
        m = _BUDGET_RE.fullmatch(x)
        if m is not None and (m["pct"] or m["prefix"] or m["unit"]):
            num: Exact = Fraction(m["num"])  # a decimal literal, exact
            if m["pct"]:
                f = num / 100
                if not 0 <= f <= 1:
                    raise ConfigError(clause, f"{key} = {x!r}: a percentage must lie in [0%, 100%]")
                return Budget(to_exact(f, clause=clause, error=ConfigError, what=key), True)
            if key != "budget":
                raise ConfigError(clause, f"{key} = {x!r}: a fraction takes no unit (write budget = {x!r})")
            prefix, unit = m["prefix"] or "", m["unit"] or ""
            if prefix.endswith("i") and unit != "B":
                raise ConfigError(clause, f"{key} = {x!r}: binary prefixes (Ki, Mi, Gi, Ti) go with bytes only")
            if unit and meter not in BIT_METERS:
                raise ConfigError(clause, f"{key} = {x!r}: unit {unit!r} does not fit meter {meter!r}, which "
                                          "counts no bits (bytes and bits go with storage_bits and "
                                          "composed_storage_bits)")
            v = num * _PREFIX[prefix] * (8 if unit == "B" else 1)  # 1 B = 8 bit
            return Budget(to_exact(v, clause=clause, error=ConfigError, what=key), False)
        if m is None and not _is_rational(x):
            raise ConfigError(clause, f"{key} = {x!r} is neither a number, a rational \"p/q\", a number with "
                                      "an SI prefix (k, M, G, T) or a byte/bit unit (B, KB, MB, GB, KiB, ..., "
                                      "bit, kbit, ...), nor a percentage")
    v = to_exact(x, clause=clause, error=ConfigError, what=key)
    if key == "budget":
        if v < 0:
            raise ConfigError(clause, f"budget must be >= 0, got {v}")
        return Budget(v, False)
    if not 0 <= v <= 1:  # KMR.compress.budget-fraction: a fraction of C(M_0)
        raise ConfigError(clause, f"budget_fraction must be in [0, 1], got {v}")
    return Budget(v, True)


def _is_rational(x: str) -> bool:
    try:
        Fraction(x)
    except (ValueError, ZeroDivisionError):
        return False
    return True


def config_budget(config: CompressConfig) -> Budget:
    if config.budget is not None:
        return parse_budget(config.budget, config.meter, "budget")
    return parse_budget(config.budget_fraction, config.meter, "budget_fraction")


def _echo_budget(x: object) -> Any:
    if isinstance(x, str) and re.search(r"[A-Za-z%]", x):
        return x  # a unit or percentage: echoed as written (it re-parses to the same value)
    return json_value(to_exact(x, clause=CONFIG, error=ConfigError, what="budget"))


def decimal(x: object, digits: int = 6) -> str:
    """Human output of an exact number (``KMR.compress.progress``): an integer with thin groups,
    an exact decimal when it terminates, else ``~`` and ``digits`` significant digits."""
    q = Fraction(repr(x)) if isinstance(x, float) else Fraction(str(x))
    if q.denominator == 1:
        return f"{q.numerator:,}".replace(",", " ")
    d = q.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d == 1:
        s = f"{q.numerator / q.denominator!r}"
        if Fraction(s) == q:
            return s
    return f"~{float(q):.{digits}g}"


# ---------------------------------------------------------------------------------------------
# The JSON Schema (KMR.compress.config)


@functools.cache
def schema() -> dict[str, Any]:
    """``config.schema.json``, the config's JSON Schema (draft 2020-12)."""
    text = resources.files("kmr_ref.compress").joinpath("config.schema.json").read_text(encoding="utf-8")
    s: dict[str, Any] = json.loads(text)
    return s


def _validator(ref: str | None = None) -> jsonschema.Draft202012Validator:
    root = schema()
    s = root if ref is None else {"$ref": f"#/$defs/{ref}", "$defs": root["$defs"]}
    return jsonschema.Draft202012Validator(s)


def _where(path: Sequence[object]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_error(err: jsonschema.ValidationError, prefix: Sequence[object] = ()) -> ConfigError:
    path = [*prefix, *err.absolute_path]
    key = _where(path) or "the config"
    sub = err.schema if isinstance(err.schema, dict) else {}
    clause = str(sub.get("x-clause", CONFIG))
    msgs = sub.get("x-messages", {})
    v = err.instance
    if err.validator in msgs:
        body = msgs[err.validator].format(key=key, value=v, enum=sub.get("enum"))
        return ConfigError(clause, f"{key}: {body}" if path and not body.startswith(str(path[-1])) else body)
    if err.validator == "additionalProperties" and isinstance(v, dict):
        known = sorted(sub.get("properties", {}))
        extra = sorted(set(v) - set(known))
        where = key if path else "the config"
        return ConfigError(clause, f"unknown key(s) {extra} in {where}; known: {known}")
    if err.validator == "enum":
        return ConfigError(clause, f"{key} must be one of {sub.get('enum')}, got {v!r}")
    if err.validator == "type":
        return ConfigError(clause, f"{key} must be of type {err.validator_value}, got {v!r} "
                                   f"({type(v).__name__})")
    if err.validator == "required":
        return ConfigError(clause, f"{key}: {err.message}")
    return ConfigError(clause, f"{key}: {err.message}")


def _first(errors: Any) -> jsonschema.ValidationError | None:
    errs = sorted(errors, key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path],
                                         str(e.validator)))
    return errs[0] if errs else None


def validate_schema(d: Mapping[str, Any]) -> None:
    """``KMR.compress.config``: the first schema violation (shallowest path first) as a
    ``ConfigError`` naming the key and the clause of the schema node (``x-clause``)."""
    err = _first(_validator().iter_errors(d))
    if err is not None:
        raise _schema_error(err)
    for i, ph in enumerate(d["phases"]):  # each phase against its method's keys
        err = _first(_validator(f"method-{ph['method']}").iter_errors(ph))
        if err is not None:
            raise _schema_error(err, ("phases", i))


def _phase_from_dict(d: Mapping[str, Any], i: int) -> PhaseConfig:
    where = f"phases[{i}]"
    method = d["method"]
    opts = {k: d[k] for k in METHOD_KEYS[method] if k in d}
    try:
        mcfg: MethodConfig = METHOD_TYPES[method](**opts)
        pol = d["policy"]
        if pol["type"] == "scheduled":
            pcfg: PolicyConfig = ScheduledConfig(tuple(pol["values"]), pol.get("knob"))
        else:
            knobs = pol.get("knobs", "per-layer")
            pcfg = GreedyConfig(tuple(knobs) if isinstance(knobs, list) else knobs)
        inc = d.get("include")
        return PhaseConfig(mcfg, pcfg, d.get("name", ""), None if inc is None else tuple(inc),
                           tuple(d.get("exclude", ())))
    except ConfigError as e:
        raise ConfigError(e.clause, f"{where}: {e.message}") from None


def _phase_to_json(p: PhaseConfig, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "method": p.method.method}
    for k in METHOD_KEYS[p.method.method]:
        out[k] = getattr(p.method, k)
    if p.include is not None:
        out["include"] = list(p.include)
    if p.exclude:
        out["exclude"] = list(p.exclude)
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


# ---------------------------------------------------------------------------------------------
# Small validators (the typed dataclasses' own checks)


def one_of(key: str, v: object, allowed: Sequence[object], where: str) -> None:
    if isinstance(v, bool) or not any(type(v) is type(a) and v == a for a in allowed):  # 2.0 is not 2
        raise ConfigError(METHODS, f"{where}: {key} must be one of {list(allowed)}, got {v!r}")


def is_bool(key: str, v: object, where: str) -> None:
    if not isinstance(v, bool):
        raise ConfigError(CONFIG, f"{where}: {key} must be true or false, got {v!r}")


def int_in(key: str, v: object, lo: int, hi: int, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(METHODS, f"{where}: {key} must be an integer in [{lo}, {hi}], got {v!r}")


def check_import_path(key: str, v: object) -> None:
    ok = isinstance(v, str) and v.count(":") == 1 and all(v.partition(":")[::2])
    if not ok:
        raise ConfigError(CONFIG, f'{key} must be an import path "package.module:attr", got {v!r}')
