"""Shared torch plumbing for rules: copy-on-write module trees and parameter order.

``KMR.rule.no-mutation``: rules build a new module tree whose module objects are fresh shallow
copies, so replacing a parameter in the copy never touches the caller's module; tensors the rule
does not change are shared (not copied).
"""

from __future__ import annotations

import copy
import fnmatch
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from kmr_ref.core.errors import RuleInputError


def check_supported(model: nn.Module) -> None:
    """``KMR.rule.unsupported-module``: refuse module trees whose tensors are not plain
    parameters: parametrized modules (``torch.nn.utils.parametrize``, new-style weight_norm),
    modules pruned by ``torch.nn.utils.prune`` (``<name>_orig`` + ``<name>_mask``) or old-style
    ``weight_norm`` (``<name>_g`` + ``<name>_v`` recomputed by a hook), and lazy modules whose
    parameters are not yet initialized."""
    # KMR.rule.subnormals: with flush-to-zero on, |w| and fp32 products lose subnormals and results
    # would differ from the spec's bit-exact ones
    if float(torch.tensor(1e-310, dtype=torch.float64).abs()) == 0.0:
        raise RuleInputError("KMR.rule.subnormals", "torch.set_flush_denormal(True) is on; the rules need "
                                                    "subnormals kept (call torch.set_flush_denormal(False))")
    for name, mod in model.named_modules():
        where = name or "<root>"
        if "parametrizations" in mod._modules:
            raise RuleInputError("KMR.rule.unsupported-module", f"{where} is parametrized")
        for pname, p in mod._parameters.items():
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise RuleInputError("KMR.rule.unsupported-module", f"{where}.{pname} is not initialized (lazy)")
            if pname.endswith("_orig") and f"{pname[:-5]}_mask" in mod._buffers:
                raise RuleInputError("KMR.rule.unsupported-module",
                                     f"{where} is pruned by torch.nn.utils.prune ({pname}); call prune.remove first")
            if pname.endswith("_g") and f"{pname[:-2]}_v" in mod._parameters:
                raise RuleInputError("KMR.rule.unsupported-module",
                                     f"{where} uses weight_norm ({pname}); call remove_weight_norm first")


def clone_tree(module: nn.Module) -> nn.Module:
    """A new module tree: every module object is a shallow copy with its own parameter, buffer,
    child and hook dicts; the tensors themselves are shared."""
    memo: dict[int, nn.Module] = {}

    def rec(m: nn.Module) -> nn.Module:
        if id(m) in memo:  # a module reachable twice stays shared in the copy
            return memo[id(m)]
        c = copy.copy(m)
        memo[id(m)] = c
        # every dict and set of the module's own state (parameters, buffers, children, all hook
        # tables, the non-persistent buffer set) gets its own container in the copy
        for attr, d in m.__dict__.items():
            if isinstance(d, OrderedDict):
                c.__dict__[attr] = OrderedDict(d)
            elif isinstance(d, dict):
                c.__dict__[attr] = dict(d)
            elif isinstance(d, set):
                c.__dict__[attr] = set(d)
        for name, child in m._modules.items():
            c._modules[name] = None if child is None else rec(child)
        return c

    check_supported(module)  # KMR.rule.unsupported-module
    return rec(module)


def set_parameter(root: nn.Module, qualified: str, value: torch.Tensor) -> None:
    """Replace parameter ``qualified`` (e.g. ``"features.0.weight"``) in ``root`` (a clone), and
    every other name that holds the same tensor (tied weights stay tied)."""
    *path, leaf = qualified.split(".")
    old = root.get_submodule(".".join(path))._parameters[leaf] if path else root._parameters[leaf]
    req = old.requires_grad if old is not None else False
    new = nn.Parameter(value, requires_grad=req)
    for mod in root.modules():
        for k, p in mod._parameters.items():
            if p is old:
                mod._parameters[k] = new


def set_submodule(root: nn.Module, qualified: str, new: nn.Module) -> None:
    """Replace submodule ``qualified`` in ``root`` (a clone) by ``new``."""
    *path, leaf = qualified.split(".")
    parent = root.get_submodule(".".join(path)) if path else root
    parent._modules[leaf] = new


PrunableFilter = Callable[[str, nn.Module, str, torch.Tensor], bool]


_LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def default_prunable(module_name: str, module: nn.Module, pname: str, p: torch.Tensor) -> bool:
    """``KMR.prune.prunable-default``: the ``weight`` of Linear and Conv1d/2d/3d modules (subclasses
    included) and the packed input projection of ``MultiheadAttention`` (``in_proj_weight``, or
    ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when key and value sizes differ)."""
    if isinstance(module, nn.MultiheadAttention):
        return pname in _MHA_WEIGHTS
    return pname == "weight" and isinstance(module, _LINEAR_LIKE)


def default_quantizable(module_name: str, module: nn.Module, pname: str, p: torch.Tensor) -> bool:
    """``KMR.quant.selection``: :func:`default_prunable` plus the ``weight`` of ``Embedding`` and
    ``EmbeddingBag`` modules."""
    if pname == "weight" and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return True
    return default_prunable(module_name, module, pname, p)


def any_parameter(module_name: str, module: nn.Module, pname: str, p: torch.Tensor) -> bool:
    """Every parameter: what ``include`` patterns choose from (``KMR.select.include``)."""
    return True


Patterns = tuple[str, ...]


def as_patterns(value: Sequence[str] | None, what: str) -> Patterns | None:
    """``KMR.select.include``: a sequence of glob patterns (a bare string is refused: it would be
    read as a sequence of one-character patterns)."""
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise RuleInputError("KMR.select.include", f"{what} must be a sequence of glob strings, got {value!r}")
    return tuple(value)


def select_names(names: Sequence[str], default: Sequence[str], include: Patterns | None,
                 exclude: Patterns, where: str) -> list[str]:
    """``KMR.select.include`` / ``KMR.select.exclude`` / ``KMR.select.no-match``: from the
    ``names`` a method can cover, the default ones (include is None) or those matching an include
    pattern, less those matching an exclude pattern (``fnmatch.fnmatchcase`` on qualified names),
    in the order of ``names``. A pattern that matches none of ``names`` raises RuleInputError."""
    for pat in (*(include or ()), *exclude):
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):  # KMR.select.no-match
            raise RuleInputError("KMR.select.no-match", f"pattern {pat!r} matches no parameter {where} can cover")
    if include is None:
        chosen = set(default)
    else:  # KMR.select.include
        chosen = {n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in include)}
    # KMR.select.exclude
    return [n for n in names if n in chosen and not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)]


Empty = Literal["skip", "refuse"]


def selected_parameters(model: nn.Module, default: PrunableFilter, include: Patterns | None,
                        exclude: Patterns, where: str, empty: Empty = "skip") -> list[tuple[str, torch.Tensor]]:
    """The parameters a prune/quantize rule acts on, in ``KMR.prune.tensor-order``: the default
    filter's or the include patterns' choice less the exclude patterns' (``select_names``), with
    zero-size tensors left out (``KMR.select.zero-size``; ``empty="refuse"`` keeps them, for the
    input checks of spec 0.1.0 to refuse them)."""
    every = list(ordered_parameters(model, any_parameter))
    if include is None and not exclude:
        chosen = list(ordered_parameters(model, default))
    else:
        default_names = [n for n, _ in ordered_parameters(model, default)]
        keep = set(select_names([n for n, _ in every], default_names, include, exclude, where))
        chosen = [(n, t) for n, t in every if n in keep]
    if empty == "refuse":
        return chosen
    return [(n, t) for n, t in chosen if t.numel() > 0]  # KMR.select.zero-size: skipped, not fatal


def ordered_parameters(model: nn.Module, keep: PrunableFilter) -> Iterator[tuple[str, torch.Tensor]]:
    """``KMR.prune.tensor-order``: parameters in ``named_modules()`` depth-first registration order,
    each module's own parameters in registration order, a shared tensor once at its first name
    (its first holder alone decides whether it is selected)."""
    check_supported(model)  # KMR.rule.unsupported-module
    seen: set[int] = set()
    for mname, mod in model.named_modules(remove_duplicate=True):
        for pname, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if keep(mname, mod, pname, p):
                yield (f"{mname}.{pname}" if mname else pname), p


def check_float_finite(name: str, t: torch.Tensor, clause_prefix: str) -> None:
    """``<method>.dtype`` / ``<method>.nonfinite`` / ``<method>.empty`` input checks."""
    if not t.is_floating_point():
        raise RuleInputError(f"{clause_prefix}.dtype", f"{name} has dtype {t.dtype}; a floating dtype is required")
    if t.numel() == 0:
        raise RuleInputError(f"{clause_prefix}.empty", f"{name} is empty")
    if not bool(torch.isfinite(t).all()):
        raise RuleInputError(f"{clause_prefix}.nonfinite", f"{name} contains NaN or inf")
