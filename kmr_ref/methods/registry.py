"""One registry through which a rule finds a fast implementation of one of its steps, so that
``kmr_ref.methods`` never depends on ``kmr_ref.kernels`` (the reference stays readable alone;
``shared/design.md``, layers). A provider module registers its implementations when imported;
:func:`lookup` imports the providers named in ``PROVIDERS`` on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# name -> the module that registers it when imported (a plugin, not a static import)
PROVIDERS: dict[str, str] = {"prune_global": "kmr_ref.kernels"}
_IMPLS: dict[str, Callable[..., Any]] = {}


def register(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` the implementation called ``name`` (the last registration wins)."""
    _IMPLS[name] = fn


def lookup(name: str) -> Callable[..., Any]:
    """The implementation called ``name``, importing its provider once; ``LookupError`` when none."""
    if name not in _IMPLS and name in PROVIDERS:
        importlib.import_module(PROVIDERS[name])
    try:
        return _IMPLS[name]
    except KeyError:
        raise LookupError(f"no implementation registered as {name!r}") from None
