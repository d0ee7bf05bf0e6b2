"""Shared torch plumbing for rules: copy-on-write module trees and parameter order.

``KMR.rule.no-mutation``: rules build a new module tree whose module objects are fresh shallow
copies (:func:`clone_tree`), or only those on the paths to the parameters they change
(:func:`copy_paths`, ``KMR.rule.path-copy``), so replacing a parameter in the copy never touches
the caller's module; tensors (and, with path copies, modules) the rule does not change are shared.
"""

from __future__ import annotations

import copy
import copyreg
import fnmatch
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kmr_ref.core.errors import RuleInputError
from kmr_ref.core.rules import current_scope


def check_subnormals() -> None:
    """``KMR.rule.subnormals``: with flush-to-zero on, |w| and fp32 products lose subnormals and
    results would differ from the spec's bit-exact ones."""
    if float(torch.tensor(1e-310, dtype=torch.float64).abs()) == 0.0:
        raise RuleInputError("KMR.rule.subnormals", "torch.set_flush_denormal(True) is on; the rules need "
                                                    "subnormals kept (call torch.set_flush_denormal(False))")


def check_supported(model: nn.Module) -> None:
    """``KMR.rule.unsupported-module``: refuse module trees whose tensors are not plain
    parameters: parametrized modules (``torch.nn.utils.parametrize``, new-style weight_norm),
    modules pruned by ``torch.nn.utils.prune`` (``<name>_orig`` + ``<name>_mask``) or old-style
    ``weight_norm`` (``<name>_g`` + ``<name>_v`` recomputed by a hook), and lazy modules whose
    parameters are not yet initialized."""
    check_subnormals()
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


_PLAIN: dict[type, bool] = {}


def _plain_class(cls: type) -> bool:
    """Whether ``copy.copy`` of an instance of ``cls`` is exactly ``cls.__new__`` + ``__setstate__``
    of its ``__getstate__`` (no class-level copy or reduce hooks of its own)."""
    ok = _PLAIN.get(cls)
    if ok is None:
        ok = _PLAIN[cls] = (getattr(cls, "__copy__", None) is None and cls not in copyreg.dispatch_table
                            and getattr(cls, "__reduce_ex__", None) is object.__reduce_ex__
                            and getattr(cls, "__reduce__", None) is object.__reduce__
                            and not hasattr(cls, "__getnewargs_ex__") and not hasattr(cls, "__getnewargs__"))
    return ok


def _shallow(m: nn.Module) -> nn.Module:
    """``copy.copy(m)``, without its attribute probes (each a ``Module.__getattr__`` miss) for the
    usual module classes."""
    cls = type(m)
    if not _plain_class(cls):
        return copy.copy(m)
    c: nn.Module = cls.__new__(cls)
    c.__setstate__(m.__getstate__())  # type: ignore[no-untyped-call]  # what copy.copy does: reduce_ex(4), then the state
    return c


def copy_module(m: nn.Module) -> nn.Module:
    """A shallow copy of one module: every dict and set of its own state (parameters, buffers,
    children, all hook tables, the non-persistent buffer set) gets its own container in the copy;
    the tensors and the child modules are the same objects."""
    c = _shallow(m)
    for attr, d in m.__dict__.items():
        if isinstance(d, OrderedDict):
            c.__dict__[attr] = OrderedDict(d)
        elif isinstance(d, dict):
            c.__dict__[attr] = dict(d)
        elif isinstance(d, set):
            c.__dict__[attr] = set(d)
    return c


def clone_tree(module: nn.Module) -> nn.Module:
    """A new module tree: every module object is a shallow copy with its own parameter, buffer,
    child and hook dicts; the tensors themselves are shared."""
    memo: dict[int, nn.Module] = {}

    def rec(m: nn.Module) -> nn.Module:
        if id(m) in memo:  # a module reachable twice stays shared in the copy
            return memo[id(m)]
        c = copy_module(m)
        memo[id(m)] = c
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


@dataclass(frozen=True)
class TreeIndex:
    """One walk of a supported module tree (``KMR.rule.unsupported-module`` checked): for every
    module object its parents (parent module, child key) and for every parameter object its
    holders (module, parameter key), each module object visited once."""

    root: nn.Module
    parents: dict[int, list[tuple[nn.Module, str]]]
    holders: dict[int, list[tuple[nn.Module, str]]]


def tree_index(model: nn.Module) -> TreeIndex:
    """The :class:`TreeIndex` of ``model``; inside an analysis scope (``KMR.rule.analysis-scope``)
    computed once per model object and kept, the support check included (the subnormal check,
    global state, runs at every call)."""
    scope = current_scope()
    if scope is not None:
        hit = scope.get("tree-index", model)
        if isinstance(hit, TreeIndex):
            check_subnormals()  # KMR.rule.subnormals
            return hit
    check_supported(model)  # KMR.rule.unsupported-module, once per call (or per scope)
    parents: dict[int, list[tuple[nn.Module, str]]] = {}
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for key, child in mod._modules.items():
            if child is not None:
                parents.setdefault(id(child), []).append((mod, key))
        for pname, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((mod, pname))
    idx = TreeIndex(model, parents, holders)
    if scope is not None:
        scope.put("tree-index", model, idx)
    return idx


def copy_paths(index: TreeIndex, targets: Iterable[nn.Module]) -> tuple[nn.Module, dict[int, nn.Module]]:
    """``KMR.rule.path-copy``: a new root in which every module on a path from the root to one of
    ``targets`` is a fresh :func:`copy_module` copy, linked to the copies of its children on those
    paths; every other submodule object is shared with ``index.root``. Returns the new root and the
    copies by ``id`` of their original."""
    need: dict[int, nn.Module] = {}
    stack = list(targets)
    while stack:  # the targets and all their ancestors (a module reachable twice: every path)
        m = stack.pop()
        if id(m) in need:
            continue
        need[id(m)] = m
        stack.extend(parent for parent, _ in index.parents.get(id(m), ()))
    need[id(index.root)] = index.root  # the root is always a new object
    copies = {i: copy_module(m) for i, m in need.items()}
    for i in need:  # link each copy into the copies of its parents (the parents of a copy are copied)
        for parent, key in index.parents.get(i, ()):
            copies[id(parent)]._modules[key] = copies[i]
    return copies[id(index.root)], copies


def replace_parameter(index: TreeIndex, copies: dict[int, nn.Module], old: torch.Tensor,
                      value: torch.Tensor) -> None:
    """Put ``value`` (as one new parameter, ``requires_grad`` as ``old``'s) wherever ``old`` is held,
    in the copies made by :func:`copy_paths` (tied weights stay tied)."""
    new = nn.Parameter(value, requires_grad=old.requires_grad)
    for mod, pname in index.holders[id(old)]:
        copies[id(mod)]._parameters[pname] = new


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
                        exclude: Patterns, where: str, empty: Empty = "skip", *,
                        checked: bool = False) -> list[tuple[str, torch.Tensor]]:
    """The parameters a prune/quantize rule acts on, in ``KMR.prune.tensor-order``: the default
    filter's or the include patterns' choice less the exclude patterns' (``select_names``), with
    zero-size tensors left out (``KMR.select.zero-size``; ``empty="refuse"`` keeps them, for the
    input checks of spec 0.1.0 to refuse them). ``checked``: the caller has just run
    ``check_supported`` on ``model`` (it is not run again)."""
    if not checked:
        check_supported(model)  # KMR.rule.unsupported-module
    if include is None and not exclude:
        chosen = list(ordered_parameters(model, default, checked=True))
    else:
        every = list(ordered_parameters(model, any_parameter, checked=True))
        default_names = [n for n, _ in ordered_parameters(model, default, checked=True)]
        keep = set(select_names([n for n, _ in every], default_names, include, exclude, where))
        chosen = [(n, t) for n, t in every if n in keep]
    if empty == "refuse":
        return chosen
    return [(n, t) for n, t in chosen if t.numel() > 0]  # KMR.select.zero-size: skipped, not fatal


def ordered_parameters(model: nn.Module, keep: PrunableFilter, *,
                       checked: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """``KMR.prune.tensor-order``: parameters in ``named_modules()`` depth-first registration order,
    each module's own parameters in registration order, a shared tensor once at its first name
    (its first holder alone decides whether it is selected). ``checked``: the caller has run
    ``check_supported`` on ``model``."""
    if not checked:
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
