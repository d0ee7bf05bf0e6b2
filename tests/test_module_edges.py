"""Torch module trees the rules must refuse or handle exactly (found in review)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from kmr_ref.core import RuleInputError
from kmr_ref.methods.lowrank import LowRank
from kmr_ref.methods.modules import clone_tree
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable
from kmr_ref.methods.quantization import UniformQuantization
from kmr_ref.methods.structured import StructuredPruning

RULES: list[tuple[str, Callable[[nn.Module], nn.Module]]] = [
    ("prune", lambda m: MagnitudePruning().apply(m, "sparsity", 0.5)),
    ("quant", lambda m: UniformQuantization().apply(m, "bits", 4)),
    ("structured", lambda m: StructuredPruning().apply(m, "fraction", 0.5)),
    ("lowrank", lambda m: LowRank().apply(m, "rank", 1)),
    ("nonzeros", lambda m: (nonzero_prunable(m), m)[1]),
]


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def torch_pruned() -> nn.Module:
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    torch_prune.l1_unstructured(m[0], "weight", amount=0.5)
    return m


def parametrized() -> nn.Module:
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    parametrize.register_parametrization(m[0], "weight", Double())
    return m


def old_weight_norm() -> nn.Module:
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.utils.weight_norm(m[0])  # type: ignore[no-untyped-call]
    return m


def lazy() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("make", [torch_pruned, parametrized, old_weight_norm, lazy])
@pytest.mark.parametrize(("rule_name", "rule"), RULES)
def test_unsupported_modules_refused(make: Callable[[], nn.Module], rule_name: str,
                                     rule: Callable[[nn.Module], nn.Module]) -> None:
    """KMR.rule.unsupported-module: torch-pruned, parametrized, old-style weight_norm and lazy
    modules raise RuleInputError naming the clause, never a silently wrong result."""
    m = make()
    with pytest.raises(RuleInputError) as e:
        rule(m)
    assert e.value.clause == "KMR.rule.unsupported-module", rule_name


def test_clone_tree_copies_every_hook_table() -> None:
    """KMR.rule.no-mutation: hooks registered on the copy (any kind, kwargs hooks included) never
    reach the caller's module."""
    m = nn.Linear(2, 2)
    before = {k: (dict(v) if isinstance(v, dict) else set(v)) for k, v in m.__dict__.items()
              if isinstance(v, (dict, set)) and k not in ("_parameters", "_buffers", "_modules")}
    c: Any = clone_tree(m)
    c.register_forward_hook(lambda mod, args, kwargs, out: out, with_kwargs=True)
    c.register_forward_pre_hook(lambda mod, args, kwargs: None, with_kwargs=True)
    c.register_full_backward_pre_hook(lambda mod, g: None)
    c.register_state_dict_pre_hook(lambda mod, prefix, keep_vars: None)
    c.register_load_state_dict_post_hook(lambda mod, keys: None)
    after = {k: (dict(v) if isinstance(v, dict) else set(v)) for k, v in m.__dict__.items()
             if isinstance(v, (dict, set)) and k not in ("_parameters", "_buffers", "_modules")}
    assert after == before


def test_score_overflow_is_typed() -> None:
    """KMR.structured.nonfinite and KMR.lowrank.nonfinite: binary64 overflow of a score or of the
    energy raises RuleInputError, not OverflowError."""
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        m[0].weight.fill_(1e200)
    with pytest.raises(RuleInputError) as e:
        StructuredPruning(p=2).apply(m, "fraction", 0.5)
    assert e.value.clause == "KMR.structured.nonfinite"
    with pytest.raises(RuleInputError) as e2:
        LowRank().apply(m, "energy", 0.5)
    assert e2.value.clause == "KMR.lowrank.nonfinite"


def test_structured_refuses_activation_subclass() -> None:
    """KMR.structured.next-layer: modules between layers are matched by exact type; a ReLU subclass
    (which may change forward) is refused as KMR.structured.unsupported-graph."""

    class Leaky(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - 1

    m = nn.Sequential(nn.Linear(4, 4), Leaky(), nn.Linear(4, 2))
    with pytest.raises(RuleInputError) as e:
        StructuredPruning().apply(m, "fraction", 0.5)
    assert e.value.clause == "KMR.structured.unsupported-graph"
    ok = StructuredPruning().apply(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "fraction", 0.5)
    assert ok[0].weight.shape == (2, 4)


def test_flush_denormal_refused() -> None:
    """KMR.rule.subnormals: with flush-to-zero on, the rules refuse to run (their bit-exact
    tie-breaks and rounding need subnormals); off again, they run."""
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    try:
        for _, rule in RULES:
            with pytest.raises(RuleInputError) as e:
                rule(m)
            assert e.value.clause == "KMR.rule.subnormals"
    finally:
        torch.set_flush_denormal(False)
    MagnitudePruning().apply(m, "sparsity", 0.5)
