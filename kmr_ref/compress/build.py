"""Building a run from its config: the sources (``KMR.compress.toml``), the rules
(``KMR.compress.methods``, with ``KMR.compress.select``), the meter (``KMR.compress.meters``)
and the policies (``KMR.compress.policies``). Every check here runs before anything is written."""

from __future__ import annotations

import fnmatch
import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kmr_ref.compress.config import (
    DEFAULT_KNOB,
    METER_NAMES,
    METERS,
    METHODS,
    PER_LAYER_PREFIX,
    POLICIES,
    SELECT,
    TOML,
    CompressConfig,
    ConfigError,
    DistillMethod,
    EarlyExitMethod,
    EmbeddingDistillMethod,
    HeadsMethod,
    LoRAMethod,
    LowRankMethod,
    MethodConfig,
    PhaseConfig,
    PruneMethod,
    QuantizeMethod,
    ScheduledConfig,
    StructuredMethod,
    check_import_path,
)
from kmr_ref.core.errors import KMRError
from kmr_ref.core.knobs import FiniteDomain, IntRange, Knob, RealInterval
from kmr_ref.core.meters import CostMeter
from kmr_ref.core.policy import GreedyPolicy, Policy, Proposal, ScheduledPolicy, ladder_candidates
from kmr_ref.core.rules import Rule
from kmr_ref.methods.distillation import Distillation, EmbeddingDistillation
from kmr_ref.methods.early_exit import EarlyExitRule, check_exit_positions, expected_macs_meter
from kmr_ref.methods.lora import LoRA, trained_parameter_meter
from kmr_ref.methods.lowrank import LowRank
from kmr_ref.methods.meters import macs_meter, nonzero_meter, parameter_meter
from kmr_ref.methods.pruning import MagnitudePruning
from kmr_ref.methods.quantization import UniformQuantization
from kmr_ref.methods.storage import composed_storage_meter, storage_meter
from kmr_ref.methods.structured import StructuredPruning
from kmr_ref.methods.structured_heads import HeadPruning

MAX_LADDER = 4096  # KMR.compress.policies: a greedy knob's grid must not be longer than this


def import_object(spec: str, key: str) -> Any:
    """``KMR.compress.toml``: the attribute named by ``"package.module:attr"``."""
    check_import_path(key, spec)
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


def call_factory(spec: str) -> nn.Module:
    """``KMR.compress.toml``: the module the zero-argument factory ``spec`` returns."""
    model = import_object(spec, "model")()
    if not isinstance(model, nn.Module):
        raise ConfigError(TOML, f"model = {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(config: CompressConfig) -> nn.Module:
    """``KMR.compress.toml``: call the ``model`` factory (zero arguments) and, when ``weights`` is
    set, load that safetensors file into it strictly (every key, no extra key, same shapes)."""
    if config.model is None:
        raise ConfigError(TOML, 'no model: the TOML needs model = "package.module:factory"')
    model = call_factory(config.model)
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
# include / exclude (KMR.compress.select)


def selected_names(pc: PhaseConfig, model: nn.Module, where: str) -> set[str] | None:
    """``KMR.compress.select``: the parameter names of ``model`` that ``include`` (default: all)
    and not ``exclude`` select; None when the phase has neither. A pattern matching no parameter
    name of M_0 raises ``ConfigError``."""
    if pc.include is None and not pc.exclude:
        return None
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    for key, pats in (("include", pc.include or ()), ("exclude", pc.exclude)):
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                shown = names[:8]
                raise ConfigError(SELECT, f"{where}: {key} pattern {pat!r} matches no parameter name of the "
                                          f"model (names look like {shown})")
    inc = pc.include
    return {n for n in names if (inc is None or any(fnmatch.fnmatchcase(n, p) for p in inc))
            and not any(fnmatch.fnmatchcase(n, p) for p in pc.exclude)}


def build_rule(pc: PhaseConfig | MethodConfig, model: nn.Module, where: str = "phase") -> Rule[nn.Module]:
    """``KMR.compress.methods``: the rule of the phase's method, with per-layer knobs named from
    ``model`` and the phase's ``include`` / ``exclude`` passed on as keywords
    (``KMR.compress.select``; the rule selects as ``KMR.select.include`` states)."""
    if not isinstance(pc, PhaseConfig):
        pc = PhaseConfig(pc, ScheduledConfig((0,)))
    method = pc.method
    if isinstance(method, EmbeddingDistillMethod | LoRAMethod | EarlyExitMethod):
        if pc.include is not None or pc.exclude:
            raise ConfigError(SELECT, f"{where}: {method.method} takes no include / exclude")
        return build_training_rule(method, model, where)
    if isinstance(method, DistillMethod) and (pc.include is not None or pc.exclude):
        raise ConfigError(SELECT, f"{where}: distillation trains a whole new model; include / exclude do not apply")
    selected_names(pc, model, where)  # KMR.compress.select: every pattern must match a parameter of M_0
    inc = None if pc.include is None else list(pc.include)
    exc = list(pc.exclude)
    if isinstance(method, PruneMethod):
        return MagnitudePruning.for_model(model, scope=method.scope, kernel=method.kernel, include=inc, exclude=exc)
    if isinstance(method, QuantizeMethod):
        return UniformQuantization.for_model(model, scheme=method.scheme, granularity=method.granularity,
                                             bits=method.bits, group_size=method.group_size, include=inc,
                                             exclude=exc)
    if isinstance(method, StructuredMethod):
        return StructuredPruning.for_model(model, p=method.p, scope=method.scope, include=inc, exclude=exc,
                                           graph=method.graph)
    if isinstance(method, HeadsMethod):  # spec/methods/heads.md
        return HeadPruning.for_model(model, unit=method.unit, p=method.p, scope=method.scope, include=inc,
                                     exclude=exc)
    if isinstance(method, DistillMethod):
        return build_distillation(method)
    assert isinstance(method, LowRankMethod)
    return LowRank.for_model(model, include=inc, exclude=exc)


def build_distillation(method: DistillMethod) -> Rule[nn.Module]:
    """``KMR.compress.methods``: the distillation rule with its training split from ``data`` (a
    zero-argument function returning ``(x, y)``) and its student family from ``student``."""
    split = import_object(method.data, "data")()
    if not (isinstance(split, tuple) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split)):
        raise ConfigError(METHODS, f"distillation: data = {method.data!r} must return a tuple (x, y) of tensors, "
                                   f"got {type(split).__name__}")
    student = import_object(method.student, "student")
    try:
        return Distillation(split[0], split[1], temperature=method.temperature, alpha=method.alpha,
                            steps=method.steps, seed=method.seed, student=student)
    except KMRError as e:
        raise ConfigError(METHODS, f"distillation: {e}") from None


def _split(spec: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    split = import_object(spec, "data")()
    if not (isinstance(split, tuple) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split)):
        raise ConfigError(METHODS, f"{what}: data = {spec!r} must return a tuple of two tensors, "
                                   f"got {type(split).__name__}")
    return split[0], split[1]


def build_training_rule(method: EmbeddingDistillMethod | LoRAMethod | EarlyExitMethod, model: nn.Module,
                        where: str) -> Rule[nn.Module]:
    """``KMR.compress.training-methods``: the embedding-distillation, LoRA and early-exit rules, their data
    from ``data`` and every setting checked against M_0 before the run (``KMR.exit.positions``,
    ``KMR.exit.backbone``, ``KMR.lora.targets``, ``KMR.distill.embedding-teacher``)."""
    a, b = _split(method.data, method.method)
    rule: Rule[nn.Module]
    try:
        if isinstance(method, EmbeddingDistillMethod):
            try:
                layers = model.get_submodule(method.layers_path)
            except AttributeError:
                layers = None
            if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
                raise ConfigError("KMR.distill.embedding-teacher", f"{where}: the model has no non-empty "
                                                                   f"nn.ModuleList {method.layers_path!r}")
            # KMR.distill.layers-knob: 1 .. the layers of M_0 (a larger student is refused up front)
            rule = EmbeddingDistillation(a, b, steps=method.steps, seed=method.seed, layers_path=method.layers_path,
                                         max_layers=len(layers))
        elif isinstance(method, LoRAMethod):
            rule = LoRA(a, b, targets=method.targets, steps=method.steps, seed=method.seed)
            mods = dict(model.named_modules())
            for n in method.targets or ():  # KMR.lora.targets, before the run
                if type(mods.get(n)) is not nn.Linear:
                    raise ConfigError("KMR.lora.targets", f"{where}: target {n!r} is not an nn.Linear of the model")
        else:
            rule = EarlyExitRule(a, b, positions=method.positions, steps=method.steps, seed=method.seed)
            check_exit_positions(model, rule.positions)  # KMR.exit.backbone, KMR.exit.positions
    except ConfigError:
        raise
    except KMRError as e:
        raise ConfigError(e.clause, f"{where}: {method.method}: {e.message}") from None
    return rule


# ---------------------------------------------------------------------------------------------
# Meters and policies


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
    if name == "trained_params":
        return trained_parameter_meter()  # KMR.lora.cost-meter
    if name == "expected_macs":  # KMR.exit.cost-meter over the example input as the evaluation set
        if not isinstance(example_input, torch.Tensor):
            raise ConfigError(METERS, 'meter "expected_macs" needs an evaluation set: example_input = "module:fn" '
                                      "returning one tensor of samples")
        return expected_macs_meter(example_input)
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


__all__: Sequence[str] = ("build_meter", "build_policy", "build_rule", "call_factory", "import_object",
                          "load_model", "selected_names")
