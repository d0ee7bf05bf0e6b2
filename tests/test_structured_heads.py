"""Attention heads and FFN neurons, physically removed (spec/methods/heads.md): hand-computed
scores and counts, the zeroed original M° of KMR.heads.equivalence (nn.TransformerEncoder with
and without batch_first, fast path on and off, and MiniLM's BERT), exact MACs against the
transformer's own formula, refusals before any change, reload through a run directory, and
Hypothesis over random small encoders (KMR.heads.monotone, same bytes)."""

from __future__ import annotations

import copy
import functools
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kmr_ref.compress import (
    CompressConfig,
    HeadsMethod,
    PhaseConfig,
    QuantizeMethod,
    ScheduledConfig,
    compress,
    load,
)
from kmr_ref.core import KnobDomainError, RuleInputError
from kmr_ref.methods.meters import macs, parameter_count
from kmr_ref.methods.structured_heads import HeadPrunedAttention, HeadPruning, find_sites

TOL = 1e-4  # KMR.heads.equivalence: the stated tolerance (fp32)


def state_bytes(m: nn.Module) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {n: (str(t.dtype), tuple(t.shape), t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            for n, t in m.state_dict().items()}


def encoder(e: int = 32, h: int = 4, ff: int = 48, layers: int = 2, batch_first: bool = True,
            norm_first: bool = False, bias: bool = True, seed: int = 0) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(e, h, ff, dropout=0.0, batch_first=batch_first, norm_first=norm_first,
                                       bias=bias)
    enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    for p in enc.parameters():  # distinct layers (the constructor deep-copies one layer)
        with torch.no_grad():
            p.normal_(0, 0.3)
    return enc.eval()


def zeroed(model: nn.Module, pruned: nn.Module) -> nn.Module:
    """M° of KMR.heads.equivalence: the original with the removed heads' output-projection
    columns and the removed neurons' second-linear columns set to 0."""
    ref = copy.deepcopy(model)
    for q, m in pruned.named_modules():
        if isinstance(m, HeadPrunedAttention):
            src = ref.get_submodule(q)
            assert isinstance(src, nn.MultiheadAttention)
            d = src.head_dim
            with torch.no_grad():
                for hd in range(src.num_heads):
                    if hd not in m.kept_heads:
                        src.out_proj.weight[:, hd * d:(hd + 1) * d] = 0
    return ref


def zero_neurons(ref: nn.Module, first: str, second: str, kept_rows_of: torch.Tensor) -> None:
    """Zero the columns of ``second`` whose row of ``first`` is not among the pruned model's rows."""
    w1 = ref.get_submodule(first).weight
    keep = {tuple(r.tolist()) for r in kept_rows_of}
    with torch.no_grad():
        for j in range(w1.shape[0]):
            if tuple(w1[j].tolist()) not in keep:
                ref.get_submodule(second).weight[:, j] = 0


# ---------------------------------------------------------------------------------------------
# Scores, counts, tie-break (hand-computed)


def one_layer_with_head_scores(scales: list[float]) -> nn.TransformerEncoder:
    """4 heads of d = 2 over E = 8: every score weight of head h equals scales[h], so
    S_h = 4 * d * E * scales[h]^2 = 64 * scales[h]^2 (p = 2) or 64 * |scales[h]| (p = 1)."""
    enc = encoder(8, 4, 6, 1)
    mha = enc.layers[0].self_attn
    with torch.no_grad():
        for hd, s in enumerate(scales):
            for blk in range(3):
                mha.in_proj_weight[blk * 8 + hd * 2: blk * 8 + hd * 2 + 2] = s
            mha.out_proj.weight[:, hd * 2: hd * 2 + 2] = s
    return enc


def test_head_score_count_and_tie_break() -> None:
    # KMR.heads.score KMR.heads.count KMR.heads.tie-break: scores 64*s^2 = 64, 4, 4, 16
    enc = one_layer_with_head_scores([1.0, 0.25, -0.25, 0.5])
    rule = HeadPruning.for_model(enc)
    # f = 1/4: k = 1; heads 1 and 2 tie (4.0): the lower index goes
    out = rule.apply(enc, "fraction", Fraction(1, 4))
    assert out.layers[0].self_attn.kept_heads == (0, 2, 3)
    out = rule.apply(enc, "fraction", Fraction(1, 2))
    assert out.layers[0].self_attn.kept_heads == (0, 3)
    # f = 19/20: floor(3.8) = 3, min(3, 4 - 1) = 3: one head always remains
    out = rule.apply(enc, "fraction", Fraction(19, 20))
    assert out.layers[0].self_attn.kept_heads == (0,)
    assert out.layers[0].self_attn.in_proj_weight.shape == (3 * 2, 8)
    # p = 1: 64*|s| = 64, 16, 16, 32: same order
    assert HeadPruning.for_model(enc, p=1).apply(enc, "fraction", Fraction(1, 2)).layers[0].self_attn.kept_heads \
        == (0, 3)
    # f = 0 removes nothing: the same bits, the original module type (KMR.heads.sharing)
    same = rule.apply(enc, "fraction", 0)
    assert type(same.layers[0].self_attn) is nn.MultiheadAttention and state_bytes(same) == state_bytes(enc)


def test_score_counts_the_packed_blocks_and_output_columns_only() -> None:
    # KMR.heads.score: a large bias or a large entry outside the head's slices changes nothing
    enc = one_layer_with_head_scores([1.0, 0.25, 0.5, 0.75])
    mha = enc.layers[0].self_attn
    with torch.no_grad():
        mha.in_proj_bias[2:4] = 100.0  # head 1's q bias: biases do not enter
        mha.out_proj.bias.fill_(100.0)
    assert HeadPruning.for_model(enc).apply(enc, "fraction", Fraction(1, 4)).layers[0].self_attn.kept_heads \
        == (0, 2, 3)
    with torch.no_grad():
        mha.in_proj_weight[16 + 2: 16 + 4] = 3.0  # head 1's v rows (third block) do enter
    # S = 64, 48/16 + 16*9 = 147, 16, 36: head 2 is now the lowest
    assert HeadPruning.for_model(enc).apply(enc, "fraction", Fraction(1, 4)).layers[0].self_attn.kept_heads \
        == (0, 1, 3)


def test_neuron_scores_rows_of_first_and_columns_of_second() -> None:
    # KMR.heads.score for neurons: row j of linear1 + column j of linear2
    enc = encoder(4, 2, 3, 1)
    lay = enc.layers[0]
    with torch.no_grad():
        lay.linear1.weight.copy_(torch.tensor([[1.0] * 4, [0.5] * 4, [2.0] * 4]))
        lay.linear2.weight.copy_(torch.tensor([[0.0, 3.0, 0.0]] * 4))  # neuron 1: 4*0.25 + 4*9 = 37 > 4
    out = HeadPruning.for_model(enc, "neurons").apply(enc, "fraction", Fraction(1, 3))
    assert out.layers[0].linear1.out_features == 2
    assert torch.equal(out.layers[0].linear1.weight, torch.tensor([[0.5] * 4, [2.0] * 4]))  # neuron 0 (S=4) went
    assert torch.equal(out.layers[0].linear2.weight, torch.tensor([[3.0, 0.0]] * 4))


def test_global_order_and_per_layer_knob() -> None:
    # KMR.heads.global-order: K = floor(1/2 * 8) = 4 over two layers of 4 heads; keys S/fan
    enc = encoder(8, 4, 6, 2)
    for li, scales in enumerate(([1.0, 0.1, 0.2, 0.3], [0.05, 0.06, 0.07, 2.0])):
        src = one_layer_with_head_scores(scales).layers[0].self_attn
        with torch.no_grad():
            enc.layers[li].self_attn.in_proj_weight.copy_(src.in_proj_weight)
            enc.layers[li].self_attn.out_proj.weight.copy_(src.out_proj.weight)
    g = HeadPruning.for_model(enc, scope="global").apply(enc, "fraction", Fraction(1, 2))
    # ascending: L1h0 .05, L1h1 .06, L1h2 .07, L0h1 .1 -> 4 removed
    assert g.layers[0].self_attn.kept_heads == (0, 2, 3) and g.layers[1].self_attn.kept_heads == (3,)
    # K = floor(7/8 * 8) = 7, but each layer keeps one head: 6 removed
    g = HeadPruning.for_model(enc, scope="global").apply(enc, "fraction", Fraction(7, 8))
    assert g.layers[0].self_attn.kept_heads == (0,) and g.layers[1].self_attn.kept_heads == (3,)
    # KMR.heads.per-layer-knob: one site alone
    rule = HeadPruning.for_model(enc)
    assert [k.name for k in rule.knobs()] == ["fraction", "fraction@layers.0.self_attn", "fraction@layers.1.self_attn"]
    one = rule.apply(enc, "fraction@layers.1.self_attn", Fraction(1, 2))
    assert type(one.layers[0].self_attn) is nn.MultiheadAttention and one.layers[1].self_attn.kept_heads == (2, 3)
    with pytest.raises(KnobDomainError):
        rule.apply(enc, "fraction@nope", Fraction(1, 2))  # KMR.knob.unknown
    other = HeadPruning(layers=("elsewhere",))
    with pytest.raises(RuleInputError) as ei:
        other.apply(enc, "fraction@elsewhere", Fraction(1, 2))
    assert ei.value.clause == "KMR.heads.per-layer-knob"


def test_select_include_exclude() -> None:
    # KMR.heads.select
    enc = encoder()
    rule = HeadPruning.for_model(enc, include=["layers.1.*"])
    assert rule.layers == ("layers.1.self_attn",)
    out = rule.apply(enc, "fraction", Fraction(1, 2))
    assert type(out.layers[0].self_attn) is nn.MultiheadAttention
    assert isinstance(out.layers[1].self_attn, HeadPrunedAttention)
    assert HeadPruning.for_model(enc, "neurons", exclude=["layers.0.linear2.weight"]).layers == ("layers.1.linear1",)


# ---------------------------------------------------------------------------------------------
# Equivalence with the zeroed original (KMR.heads.equivalence)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_heads_and_neurons_equal_the_zeroed_original(batch_first: bool, bias: bool) -> None:
    # KMR.heads.equivalence KMR.heads.removal KMR.heads.ffn-removal KMR.heads.mha-module KMR.heads.fast-path
    enc = encoder(batch_first=batch_first, bias=bias)
    enc.use_nested_tensor = batch_first and bias  # the nested-tensor path, as torch's own check sets it
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    heads = HeadPruning.for_model(enc).apply(enc, "fraction", Fraction(1, 2))
    small = HeadPruning.for_model(heads, "neurons").apply(heads, "fraction", Fraction(1, 3))
    assert small.use_nested_tensor is False and enc.use_nested_tensor is (batch_first and bias)
    ref = zeroed(enc, small)
    for li in range(2):
        zero_neurons(ref, f"layers.{li}.linear1", f"layers.{li}.linear2", small.layers[li].linear1.weight)
    assert small.layers[0].linear1.out_features == 48 - 16 and small.layers[0].self_attn.num_heads == 2
    valid = ~kpm if batch_first else (~kpm).T
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        for fp in (True, False):
            torch.backends.mha.set_fastpath_enabled(fp)
            with torch.no_grad():
                for kw in ({}, {"src_key_padding_mask": kpm}):
                    a, b = ref(x, **kw), small(x, **kw)
                    m = valid if kw else torch.ones_like(valid)
                    assert (a - b)[m].abs().max().item() <= TOL
                    # the removed heads mattered: the unzeroed original differs
                    assert (enc(x, **kw) - b)[m].abs().max().item() > 10 * TOL
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def test_pruned_attention_masks_weights_unbatched_and_twice() -> None:
    # KMR.heads.mha-module: 3-D attn_mask per original head, need_weights, unbatched input, and a
    # second application (kept_heads compose)
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    enc = encoder(16, 4, 8, 1)
    enc.layers[0].self_attn = mha
    once = HeadPruning.for_model(enc).apply(enc, "fraction@layers.0.self_attn", Fraction(1, 4))
    twice = HeadPruning.for_model(once).apply(once, "fraction@layers.0.self_attn", Fraction(1, 3))
    hp = twice.layers[0].self_attn
    assert isinstance(hp, HeadPrunedAttention) and len(hp.kept_heads) == 2 and hp.source_heads == 4
    assert set(hp.kept_heads) < set(once.layers[0].self_attn.kept_heads)
    ref = zeroed(enc, twice).layers[0].self_attn
    x = torch.randn(2, 5, 16)
    m3 = torch.rand(2 * 4, 5, 5) > 0.7
    m3[:, :, 0] = False  # every query sees key 0
    with torch.no_grad():
        causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
        pad = torch.tensor([[0, 0, 0, 1, 1]] * 2).bool()
        for kw in ({"attn_mask": m3}, {"attn_mask": causal, "is_causal": True}, {"key_padding_mask": pad}):
            a, _ = ref(x, x, x, need_weights=False, **kw)
            b, w = hp(x, x, x, need_weights=True, **kw)
            c, _ = hp(x, x, x, need_weights=False, **kw)
            assert (a - b).abs().max() <= TOL and (a - c).abs().max() <= TOL
            assert w is not None and w.shape == (2, 5, 5)
            assert torch.allclose(w.sum(-1), torch.ones(2, 5))
        a, _ = ref(x[0], x[0], x[0])  # unbatched
        b, w = hp(x[0], x[0], x[0])
        assert b.shape == (5, 16) and w is not None and w.shape == (5, 5) and (a - b).abs().max() <= TOL
        with pytest.raises(RuntimeError):
            hp(x, x, x, is_causal=True)


@functools.cache
def _minilm() -> nn.Module:
    from kmr_ref.models import minilm

    return minilm.load()


def test_minilm_heads_and_neurons_equal_the_zeroed_original() -> None:
    # KMR.heads.sites KMR.heads.bert KMR.heads.equivalence, and KMR.meter.macs falls on the real forward
    from kmr_ref.models import minilm

    m = _minilm()
    attn, ffn = find_sites(m)
    assert len(attn) == 6 and len(ffn) == 6 and attn[0].heads == 12 and attn[0].head_dim == 32
    heads = HeadPruning.for_model(m).apply(m, "fraction", Fraction(1, 4))
    small = HeadPruning.for_model(heads, "neurons").apply(heads, "fraction", Fraction(1, 8))
    sa = small.get_submodule("bert.encoder.layer.0.attention.self")
    assert sa.num_attention_heads == 9 and sa.all_head_size == 9 * 32 and sa.query.out_features == 288
    assert small.get_submodule("bert.encoder.layer.0.intermediate.dense").out_features == 1536 - 192
    ref = copy.deepcopy(m)
    for li in range(6):
        p = f"bert.encoder.layer.{li}."
        kept_q = small.get_submodule(p + "attention.self.query").weight
        wq = ref.get_submodule(p + "attention.self.query").weight
        keep = {tuple(r.tolist()) for r in kept_q[::32]}
        with torch.no_grad():
            for hd in range(12):
                if tuple(wq[hd * 32].tolist()) not in keep:
                    ref.get_submodule(p + "attention.output.dense").weight[:, hd * 32:(hd + 1) * 32] = 0
        zero_neurons(ref, p + "intermediate.dense", p + "output.dense",
                     small.get_submodule(p + "intermediate.dense").weight)
    x = minilm.example_input(batch=2, tokens=12)
    with torch.no_grad():
        assert (ref(*x) - small(*x)).abs().max().item() <= TOL
        assert (m(*x) - small(*x)).abs().max().item() > 10 * TOL
    assert parameter_count(small) < parameter_count(m)
    # attention MACs per layer: 2 * B * T^2 * (h * d); q/k/v/out: 4 * B * T * E * (h * d); FFN 2 * B * T * E * F
    b, t, e = 2, 12, 384
    d_heads = 6 * (4 * b * t * e * 96 + 2 * b * t * t * 96)
    d_ffn = 6 * 2 * b * t * e * 192
    assert macs(m, x) - macs(small, x) == d_heads + d_ffn


# ---------------------------------------------------------------------------------------------
# MACs and parameters (KMR.meter.macs on the real forward)


def encoder_macs(b: int, t: int, e: int, inner: list[int], ff: list[int]) -> int:
    """MACs of an nn.TransformerEncoder forward: per layer q/k/v (3 b t e I), scores and values
    (2 b t^2 I), output projection (b t I e), FFN (2 b t e F)."""
    return sum(3 * b * t * e * i + 2 * b * t * t * i + b * t * i * e + 2 * b * t * e * f
               for i, f in zip(inner, ff, strict=True))


def test_macs_and_params_fall_exactly() -> None:
    enc = encoder(32, 4, 48, 2)
    x = torch.randn(3, 7, 32)
    assert macs(enc, x) == encoder_macs(3, 7, 32, [32, 32], [48, 48])
    small = HeadPruning.for_model(enc).apply(enc, "fraction", Fraction(1, 2))
    small = HeadPruning.for_model(small, "neurons").apply(small, "fraction", Fraction(1, 4))
    assert macs(small, x) == encoder_macs(3, 7, 32, [16, 16], [36, 36])
    # params: per layer, 2 heads x (3 d E + 3 d) + 2 heads x (E d); 12 neurons x (E + 1 + E)
    assert parameter_count(enc) - parameter_count(small) == 2 * (2 * (3 * 8 * 32 + 3 * 8 + 32 * 8) + 12 * 65)


# ---------------------------------------------------------------------------------------------
# Refusals (KMR.heads.unsupported and the tensor checks), before any change


class Custom(nn.TransformerEncoderLayer):
    def _sa_block(self, x: torch.Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool = False) -> Any:
        return super()._sa_block(x, attn_mask, key_padding_mask, is_causal)


def refused_models() -> list[tuple[str, nn.Module]]:
    enc = encoder()
    kv = encoder()
    kv.layers[0].self_attn = nn.MultiheadAttention(32, 4, kdim=16, vdim=16, batch_first=True)
    bkv = encoder()
    bkv.layers[1].self_attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
    act = encoder()
    act.layers[0].activation = lambda t: t * t.sum()  # not elementwise
    sub = encoder()
    sub.layers[0] = Custom(32, 4, 48, batch_first=True)
    return [("kdim", kv), ("bias_kv", bkv), ("activation", act), ("subclass", sub),
            ("lone mha", nn.Sequential(nn.Linear(4, 32), nn.MultiheadAttention(32, 4))),
            ("decoder", nn.TransformerDecoderLayer(32, 4, 48)), ("nothing", nn.Sequential(nn.Linear(3, 3))),
            ("encoder ok", enc)]


@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_unsupported_is_refused_before_any_change(unit: Any) -> None:
    # KMR.heads.unsupported KMR.heads.mha KMR.heads.ffn
    for name, model in refused_models():
        before = state_bytes(model)
        if name == "encoder ok":
            HeadPruning(unit).apply(model, "fraction", Fraction(1, 2))
        else:
            with pytest.raises(RuleInputError) as ei:
                HeadPruning(unit).apply(model, "fraction", Fraction(1, 2))
            assert ei.value.clause == "KMR.heads.unsupported", name
        assert state_bytes(model) == before


def test_bad_tensors_and_settings() -> None:
    # KMR.heads.nonfinite KMR.heads.dtype KMR.heads.empty KMR.heads.unit KMR.heads.score KMR.heads.scope
    enc = encoder()
    with torch.no_grad():
        enc.layers[1].self_attn.in_proj_weight[3, 3] = float("nan")
    with pytest.raises(RuleInputError) as ei:
        HeadPruning().apply(enc, "fraction", Fraction(1, 2))
    assert ei.value.clause == "KMR.heads.nonfinite"
    HeadPruning("neurons").apply(enc, "fraction", Fraction(1, 2))  # the NaN is not a neuron score weight
    big = encoder().double()
    with torch.no_grad():
        big.layers[0].linear1.weight.fill_(1e200)
    with pytest.raises(RuleInputError) as ei:
        HeadPruning("neurons").apply(big, "fraction", Fraction(1, 2))
    assert ei.value.clause == "KMR.heads.nonfinite"
    ints = encoder()
    ints.layers[0].linear2.weight = nn.Parameter(torch.ones(32, 48, dtype=torch.int32), requires_grad=False)
    with pytest.raises(RuleInputError) as ei:
        HeadPruning("neurons").apply(ints, "fraction", Fraction(1, 2))
    assert ei.value.clause == "KMR.heads.dtype"
    empty = encoder(ff=0)
    with pytest.raises(RuleInputError) as ei:
        HeadPruning("neurons").apply(empty, "fraction", Fraction(1, 2))
    assert ei.value.clause == "KMR.heads.empty"
    for kw in ({"unit": "blocks"}, {"p": 3}, {"scope": "everywhere"}):
        with pytest.raises(KnobDomainError):
            HeadPruning(**kw)
    with pytest.raises(KnobDomainError):
        HeadPruning().apply(encoder(), "fraction", 1)  # KMR.heads.knob: 1 is outside [0, 1)


def test_sharing_and_no_mutation() -> None:
    # KMR.heads.sharing
    enc = encoder()
    before = state_bytes(enc)
    out = HeadPruning.for_model(enc).apply(enc, "fraction@layers.0.self_attn", Fraction(1, 2))
    assert state_bytes(enc) == before and type(enc.layers[0].self_attn) is nn.MultiheadAttention
    assert out.layers[1].self_attn.in_proj_weight is enc.layers[1].self_attn.in_proj_weight
    assert out.layers[0].norm1.weight is enc.layers[0].norm1.weight
    assert out.layers[0].self_attn.out_proj.bias is enc.layers[0].self_attn.out_proj.bias


# ---------------------------------------------------------------------------------------------
# Reload through a run directory (KMR.compress.artifacts, KMR.compress.load)


def test_compress_run_reloads(tmp_path: Path) -> None:
    enc = encoder()
    x = torch.randn(2, 5, 32)
    cfg = CompressConfig(phases=[PhaseConfig(HeadsMethod(), ScheduledConfig(["1/2"])),
                                 PhaseConfig(HeadsMethod(unit="neurons", scope="global"), ScheduledConfig(["1/4"])),
                                 PhaseConfig(QuantizeMethod(bits=8), ScheduledConfig([8]))],
                         meter="composed_storage_bits", budget_fraction="3/10")
    rep = compress(enc, cfg, out_dir=tmp_path / "run")
    assert rep.status.value == "feasible"
    man = (tmp_path / "run" / "manifest.json").read_text()
    assert '"kind": "heads"' in man and man.count('"use_nested_tensor"') == 0  # nested already off
    back = load(tmp_path / "run", model=enc)
    assert state_bytes(back) == state_bytes(rep.model)
    assert isinstance(back.layers[0].self_attn, HeadPrunedAttention)
    with torch.no_grad():
        assert torch.equal(back(x), rep.model(x))


# ---------------------------------------------------------------------------------------------
# Hypothesis: random small encoders (KMR.heads.monotone, same input -> same bytes)

FRACS = st.fractions(min_value=0, max_value=Fraction(19, 20), max_denominator=20)


@given(e_per_head=st.integers(1, 4), heads=st.integers(1, 5), ff=st.integers(1, 12), layers=st.integers(1, 2),
       batch_first=st.booleans(), norm_first=st.booleans(), bias=st.booleans(), unit=st.sampled_from(["heads",
                                                                                                     "neurons"]),
       scope=st.sampled_from(["per-layer", "global"]), f1=FRACS, f2=FRACS, seed=st.integers(0, 3))
def test_random_encoders_run_and_are_monotone(e_per_head: int, heads: int, ff: int, layers: int, batch_first: bool,
                                              norm_first: bool, bias: bool, unit: Any, scope: Any, f1: Fraction,
                                              f2: Fraction, seed: int) -> None:
    # KMR.heads.monotone KMR.heads.count: the pruned model runs with the same output shape; cost
    # non-increasing in f; the same input gives the same bytes
    e = e_per_head * heads
    enc = encoder(e, heads, ff, layers, batch_first, norm_first, bias, seed)
    x = torch.randn(2, 3, e)
    lo, hi = sorted((f1, f2))
    rule = HeadPruning.for_model(enc, unit, scope=scope)
    a, b = rule.apply(enc, "fraction", lo), rule.apply(enc, "fraction", hi)
    assert state_bytes(rule.apply(enc, "fraction", hi)) == state_bytes(b)
    with torch.no_grad():
        assert a(x).shape == b(x).shape == x.shape
        assert torch.isfinite(b(x)).all()
    assert parameter_count(b) <= parameter_count(a) <= parameter_count(enc)
    assert macs(b, x) <= macs(a, x)


def test_config_options_and_greedy_per_layer(tmp_path: Path) -> None:
    # KMR.compress.methods: method heads and its options; KMR.compress.policies: greedy per-layer
    # climbs fraction@<site>
    from kmr_ref.compress import ConfigError

    base = {"meter": "params", "budget_fraction": "9/10"}
    for bad, clause in (({"unit": "blocks"}, "KMR.compress.methods"), ({"p": 3}, "KMR.compress.methods"),
                        ({"graph": True}, "KMR.compress.config")):
        with pytest.raises(ConfigError) as ei:
            CompressConfig.from_dict({**base, "phases": [{"method": "heads", **bad,
                                                          "policy": {"type": "scheduled", "values": ["1/2"]}}]})
        assert ei.value.clause == clause
    cfg = CompressConfig.from_dict({**base, "phases": [{"method": "heads", "unit": "neurons",
                                                        "policy": {"type": "greedy"}}]})
    enc = encoder(16, 2, 20, 2)
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        y0 = enc(x)
    rep = compress(enc, cfg, quality=lambda m: -float((m(x) - y0).abs().max()), out_dir=tmp_path / "g")
    assert rep.status.value == "feasible"
    knobs = {r.knob for r in rep.steps if r.accepted}
    assert knobs and knobs <= {"fraction@layers.0.linear1", "fraction@layers.1.linear1"}
    back = load(tmp_path / "g", model=enc)
    assert state_bytes(back) == state_bytes(rep.model)


def test_pruned_model_copies_and_trains() -> None:
    # KMR.heads.mha-module: the pruned module deep-copies, runs in training mode (dropout) and
    # passes gradients to its kept weights
    enc = encoder()
    enc.layers[0].self_attn.dropout = 0.5
    small = HeadPruning.for_model(enc).apply(enc, "fraction", Fraction(1, 2))
    twin = copy.deepcopy(small)
    twin.train()
    out = twin(torch.randn(2, 5, 32))
    out.sum().backward()
    hp = twin.layers[0].self_attn
    assert isinstance(hp, HeadPrunedAttention) and hp.dropout == 0.5
    assert hp.in_proj_weight.grad is not None and hp.in_proj_weight.grad.shape == (3 * 16, 32)
