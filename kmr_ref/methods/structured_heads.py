"""Structured pruning of attention heads and FFN intermediate neurons, physically removed
(spec/methods/heads.md).

Sites: ``nn.TransformerEncoderLayer`` (its ``nn.MultiheadAttention`` and ``linear1``/``linear2``)
and ``transformers`` BERT layers (``BertSelfAttention`` + ``BertSelfOutput``,
``BertIntermediate`` + ``BertOutput``). A head is the d rows of q, k and v it owns and the d
columns of the output projection it feeds; an FFN neuron is a row of the first linear and the
column of the second. Removed heads and neurons no longer exist: parameters and MACs fall.
An ``nn.MultiheadAttention`` cannot hold an inner width other than ``embed_dim``, so a pruned one
becomes :class:`HeadPrunedAttention` (``KMR.heads.mha-module``). Anything else is refused before
any change (``KMR.heads.unsupported``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.exact import to_exact
from kmr_ref.core.knobs import Knob, KnobValue, RealInterval, find_knob
from kmr_ref.methods import structured
from kmr_ref.methods.modules import (
    Patterns,
    as_patterns,
    check_float_finite,
    check_supported,
    clone_tree,
    select_names,
    set_parameter,
    set_submodule,
)

CLAUSE = "KMR.heads"
Unit = Literal["heads", "neurons"]
Scope = Literal["per-layer", "global"]

# KMR.heads.ffn: activations applied elementwise between the two FFN linears (exact types)
_ACT_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)
_ACT_FUNCTIONS = (F.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid)
_HF_ACTS = ("GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
            "GELUTanh", "ReLUSquaredActivation", "SiLUActivation", "ReLU", "SiLU", "GELU", "Tanh", "Sigmoid")
_HF_ATTN_IMPL = ("sdpa", "eager")


def fraction_domain() -> RealInterval:
    """``KMR.heads.knob``: rationals in [0, 1), policy grid 0, 1/20, ..., 19/20."""
    return RealInterval(Fraction(0), Fraction(1), Fraction(1, 20), hi_open=True)


def _unsupported(msg: str) -> RuleInputError:
    return RuleInputError("KMR.heads.unsupported", msg)


# ---------------------------------------------------------------------------------------------
# The module a pruned nn.MultiheadAttention becomes (KMR.heads.mha-module)


class HeadPrunedAttention(nn.MultiheadAttention):
    """``KMR.heads.mha-module``: multi-head self/cross attention whose inner width
    ``num_heads * head_dim`` may be smaller than ``embed_dim``. Same forward signature and results
    as ``nn.MultiheadAttention`` restricted to the kept heads (``kept_heads``: their indices in the
    original module of ``source_heads`` heads); packed ``in_proj_weight`` (3·h·d, E), ``out_proj``
    (E <- h·d). ``_qkv_same_embed_dim`` is False so that torch's fused encoder paths, which
    assume an inner width of ``embed_dim``, are never taken (``KMR.heads.fast-path``)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, kept_heads: Sequence[int],
                 source_heads: int, *, dropout: float = 0.0, bias: bool = True, batch_first: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        nn.Module.__init__(self)  # nn.MultiheadAttention.__init__ insists on an inner width of embed_dim
        inner = num_heads * head_dim
        self.embed_dim, self.kdim, self.vdim = embed_dim, embed_dim, embed_dim
        self._qkv_same_embed_dim = False  # KMR.heads.fast-path
        self.num_heads, self.head_dim, self.dropout, self.batch_first = num_heads, head_dim, dropout, batch_first
        self.kept_heads, self.source_heads = tuple(int(h) for h in kept_heads), int(source_heads)
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **kw))
        self.register_parameter("q_proj_weight", None)
        self.register_parameter("k_proj_weight", None)
        self.register_parameter("v_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(inner, embed_dim, bias=bias, **kw)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    def spec(self) -> dict[str, Any]:
        """What :meth:`from_spec` rebuilds it from (``KMR.compress.artifacts``)."""
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "head_dim": self.head_dim,
                "kept_heads": list(self.kept_heads), "source_heads": self.source_heads, "dropout": self.dropout,
                "bias": self.in_proj_bias is not None, "batch_first": self.batch_first,
                "dtype": str(self.in_proj_weight.dtype).removeprefix("torch.")}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], requires_grad: bool = True) -> HeadPrunedAttention:
        dt = getattr(torch, str(spec["dtype"]))
        m = cls(int(spec["embed_dim"]), int(spec["num_heads"]), int(spec["head_dim"]), spec["kept_heads"],
                int(spec["source_heads"]), dropout=float(spec["dropout"]), bias=bool(spec["bias"]),
                batch_first=bool(spec["batch_first"]), dtype=dt)
        for p in m.parameters():
            p.requires_grad_(requires_grad)
        return m

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:  # as nn.MultiheadAttention: the hint needs the mask itself
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        batched = query.dim() == 3
        if not batched:
            q, k, v = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            q, k, v = query, key, value
        else:
            q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        h, d = self.num_heads, self.head_dim
        inner = h * d
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:inner], b[inner:2 * inner], b[2 * inner:])
        n, t, s = q.shape[0], q.shape[1], k.shape[1]
        qh = F.linear(q, w[:inner], bq).view(n, t, h, d).transpose(1, 2)
        kh = F.linear(k, w[inner:2 * inner], bk).view(n, s, h, d).transpose(1, 2)
        vh = F.linear(v, w[2 * inner:], bv).view(n, s, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, n, t, s, qh.dtype)
        p_drop = self.dropout if self.training else 0.0
        weights: torch.Tensor | None = None
        if need_weights:
            scores = torch.matmul(qh * (d ** -0.5), kh.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            if p_drop > 0.0:
                attn = F.dropout(attn, p=p_drop)
            out = torch.matmul(attn, vh)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=p_drop)
        out = self.out_proj(out.transpose(1, 2).reshape(n, t, inner))
        if not batched:
            return out.squeeze(0), weights
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _mask(self, attn_mask: torch.Tensor | None, kpm: torch.Tensor | None, n: int, t: int, s: int,
              dtype: torch.dtype) -> torch.Tensor | None:
        """The additive float mask (N, h, T, S) of nn.MultiheadAttention's ``attn_mask`` (2-D, or
        3-D with one slice per original head: the kept heads' slices) and ``key_padding_mask``."""
        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        out: torch.Tensor | None = None
        if attn_mask is not None:
            am = additive(attn_mask)
            if am.dim() == 3:
                idx = torch.tensor(self.kept_heads, dtype=torch.long, device=am.device)
                am = am.view(n, self.source_heads, t, s).index_select(1, idx)
            out = am
        if kpm is not None:
            km = additive(kpm).view(n, 1, 1, s)
            out = km if out is None else out + km
        return out


# ---------------------------------------------------------------------------------------------
# Sites (KMR.heads.sites)


@dataclass(frozen=True)
class AttentionSite:
    """One attention block: ``name`` (the MultiheadAttention or BertSelfAttention), its output
    projection ``out`` (a Linear), ``heads`` x ``head_dim``; ``encoder`` the TransformerEncoder
    holding it (or None)."""

    name: str
    kind: Literal["mha", "bert"]
    out: str
    heads: int
    head_dim: int
    encoder: str | None


@dataclass(frozen=True)
class FfnSite:
    """One FFN: ``name`` (its first Linear, E -> F) and ``second`` (F -> E)."""

    name: str
    second: str
    width: int


def _bert_classes() -> dict[str, type[nn.Module]]:
    try:
        from transformers.models.bert import modeling_bert as mb
    except ImportError:  # pragma: no cover - transformers is a dependency of the real models only
        return {}
    return {n: getattr(mb, n) for n in ("BertLayer", "BertSelfAttention", "BertSelfOutput", "BertIntermediate",
                                        "BertOutput", "BertAttention", "BertCrossAttention")}


def _overrides(m: nn.Module, base: type[nn.Module], names: Sequence[str]) -> bool:
    return any(getattr(type(m), n) is not getattr(base, n) for n in names)


def _mha_dims(q: str, m: nn.Module) -> tuple[int, int]:
    """(heads, head_dim) of a supported MultiheadAttention, or RuleInputError (KMR.heads.mha)."""
    if type(m) is HeadPrunedAttention:
        return m.num_heads, m.head_dim
    if type(m) is not nn.MultiheadAttention:  # KMR.heads.mha: exact types
        raise _unsupported(f"{q!r} is a {type(m).__name__}, not nn.MultiheadAttention")
    assert isinstance(m, nn.MultiheadAttention)
    if not m._qkv_same_embed_dim or m.kdim != m.embed_dim or m.vdim != m.embed_dim:
        raise _unsupported(f"{q!r}: kdim/vdim ({m.kdim}, {m.vdim}) differ from embed_dim {m.embed_dim}")
    if m.bias_k is not None or m.bias_v is not None or m.add_zero_attn:
        raise _unsupported(f"{q!r}: add_bias_kv / add_zero_attn are not supported")
    return m.num_heads, m.head_dim


def _act_ok(act: object) -> bool:
    if isinstance(act, nn.Module):
        return type(act) in _ACT_MODULES or (type(act).__module__.startswith("transformers.")
                                             and type(act).__name__ in _HF_ACTS)
    return any(act is f for f in _ACT_FUNCTIONS)


def find_sites(model: nn.Module) -> tuple[list[AttentionSite], list[FfnSite]]:
    """``KMR.heads.sites``: the attention blocks and FFNs of ``model`` in ``named_modules()``
    order, or RuleInputError ``KMR.heads.unsupported`` for an attention the rule does not handle."""
    bert = _bert_classes()
    attn: list[AttentionSite] = []
    ffn: list[FfnSite] = []
    owned: set[int] = set()  # attention modules reached through a supported layer
    encoders = {id(layer): q for q, m in model.named_modules() if type(m) is nn.TransformerEncoder
                for layer in m.layers}
    for q, m in model.named_modules():
        pre = f"{q}." if q else ""
        if isinstance(m, nn.TransformerEncoderLayer):
            if _overrides(m, nn.TransformerEncoderLayer, ("forward", "_sa_block", "_ff_block")):
                raise _unsupported(f"{q!r}: a TransformerEncoderLayer subclass that overrides its forward")
            h, d = _mha_dims(f"{pre}self_attn", m.self_attn)  # KMR.heads.mha
            owned.add(id(m.self_attn))
            attn.append(AttentionSite(f"{pre}self_attn", "mha", f"{pre}self_attn.out_proj", h, d,
                                      encoders.get(id(m))))
            if not _act_ok(m.activation) or type(m.dropout) is not nn.Dropout:  # KMR.heads.ffn
                raise _unsupported(f"{q!r}: FFN activation {m.activation!r} is not one the rule knows to be "
                                   "elementwise")
            ffn.append(FfnSite(f"{pre}linear1", f"{pre}linear2", m.linear1.out_features))
        elif bert and type(m) is bert["BertLayer"]:
            a: Any = m.attention
            inter: Any = m.intermediate
            out: Any = m.output
            if type(a) is not bert["BertAttention"] or type(a.self) is not bert["BertSelfAttention"] \
                    or type(a.output) is not bert["BertSelfOutput"]:  # KMR.heads.bert
                raise _unsupported(f"{q!r}: attention {type(a.self).__name__} is not BertSelfAttention")
            sa: Any = a.self
            cfg: Any = sa.config
            impl = getattr(cfg, "_attn_implementation", None)
            if impl not in _HF_ATTN_IMPL or cfg.is_decoder or a.is_cross_attention:
                raise _unsupported(f"{q!r}: only encoder self-attention with attn_implementation in "
                                   f"{list(_HF_ATTN_IMPL)} (got {impl!r}, is_decoder={cfg.is_decoder})")
            owned.add(id(sa))
            attn.append(AttentionSite(f"{pre}attention.self", "bert", f"{pre}attention.output.dense",
                                      int(sa.num_attention_heads), int(sa.attention_head_size), None))
            if type(inter) is not bert["BertIntermediate"] or type(out) is not bert["BertOutput"] \
                    or not _act_ok(inter.intermediate_act_fn):  # KMR.heads.ffn
                raise _unsupported(f"{q!r}: FFN {type(inter).__name__} / {type(out).__name__} with activation "
                                   f"{inter.intermediate_act_fn!r} is not supported")
            first: Any = m.intermediate
            ffn.append(FfnSite(f"{pre}intermediate.dense", f"{pre}output.dense", int(first.dense.out_features)))
    for q, m in model.named_modules():  # KMR.heads.unsupported: every other attention is refused
        if id(m) in owned:
            continue
        if isinstance(m, nn.MultiheadAttention):
            raise _unsupported(f"{q!r}: a MultiheadAttention outside an nn.TransformerEncoderLayer")
        n = type(m).__name__
        if type(m).__module__.startswith("transformers.") and "Attention" in n and n != "BertAttention":
            raise _unsupported(f"{q!r}: attention {n} is not supported")
    if not attn and not ffn:
        raise _unsupported(f"the model ({type(model).__name__}) has no TransformerEncoderLayer or BertLayer")
    return attn, ffn


# ---------------------------------------------------------------------------------------------
# Score tensors and scores (KMR.heads.score)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    m = model.get_submodule(name)
    assert isinstance(m, nn.Linear)
    return m


def _attn_weights(model: nn.Module, site: AttentionSite) -> list[tuple[str, torch.Tensor, int]]:
    """(name, tensor, axis) whose slices score a head: q, k, v along rows (axis 0), the output
    projection along columns (axis 1)."""
    if site.kind == "mha":
        mha = model.get_submodule(site.name)
        w = mha.in_proj_weight
        assert isinstance(w, torch.Tensor)
        return [(f"{site.name}.in_proj_weight", w, 0), (f"{site.out}.weight", _linear(model, site.out).weight, 1)]
    return [*((f"{site.name}.{p}.weight", _linear(model, f"{site.name}.{p}").weight, 0)
              for p in ("query", "key", "value")), (f"{site.out}.weight", _linear(model, site.out).weight, 1)]


def _ffn_weights(model: nn.Module, site: FfnSite) -> list[tuple[str, torch.Tensor, int]]:
    return [(f"{site.name}.weight", _linear(model, site.name).weight, 0),
            (f"{site.second}.weight", _linear(model, site.second).weight, 1)]


def _abs_pow(t: torch.Tensor, p: int) -> torch.Tensor:
    a = t.detach().to(device="cpu", dtype=torch.float64).abs()
    return a * a if p == 2 else a


def unit_scores(parts: Sequence[tuple[torch.Tensor, int]], units: int, width: int, p: int) -> list[float]:
    """``KMR.heads.score``: for u in range(units), the exactly rounded binary64 sum (math.fsum) of
    fl64(|w|^p) over every entry of every part's slices of unit u. A part (t, 0) is read by rows,
    (t, 1) by columns; its rows (columns) form blocks of ``units * width`` (one block; three for a
    packed q/k/v weight), and unit u owns rows ``[u * width, (u + 1) * width)`` of each block."""
    rows: list[list[float]] = [[] for _ in range(units)]
    for t, axis in parts:
        a = _abs_pow(t, p)
        a = a if axis == 0 else a.t()
        blocks = a.reshape(-1, units, width, a.shape[1])
        for u in range(units):
            rows[u].extend(blocks[:, u].reshape(-1).tolist())
    try:
        scores = [math.fsum(r) for r in rows]
    except OverflowError:
        scores = [math.inf]
    if not all(math.isfinite(x) for x in scores):  # KMR.heads.nonfinite: the score overflows binary64
        raise RuleInputError("KMR.heads.nonfinite", "a head or neuron score overflows binary64")
    return scores


def removed_per_site(scores: Sequence[float], fraction: Fraction) -> list[int]:
    """``KMR.heads.count`` + ``KMR.heads.tie-break``: k = min(floor(f * n), n - 1) units with the
    smallest (S_u, u); ascending unit order — the selection of structured pruning's
    ``KMR.structured.count`` (at least one head / neuron remains), with units for channels."""
    return structured.removed_per_layer(scores, fraction)


def removed_global(scores: Sequence[Sequence[float]], fan: Sequence[int], fraction: Fraction) -> list[list[int]]:
    """``KMR.heads.global-order``: K = floor(f * sum n_s) units in ascending order of
    (S_u / fan_s exact, site index, unit index), skipping a unit that would empty its site — the
    order of ``KMR.structured.global-order``, with sites for layers."""
    return structured.removed_global(scores, fan, fraction)


# ---------------------------------------------------------------------------------------------
# The rule


@dataclass(frozen=True)
class HeadPruning:
    """The rule of spec/methods/heads.md. ``unit``: ``heads`` (attention heads) or ``neurons``
    (FFN intermediate neurons); ``p`` (1 or 2) and ``scope`` as in structured pruning; ``layers``:
    the site names with a knob ``fraction@<name>`` (see :meth:`for_model`)."""

    unit: Unit = "heads"
    p: int = 2
    scope: Scope = "per-layer"
    layers: tuple[str, ...] = ()
    include: Patterns | None = None
    exclude: Patterns = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", as_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", as_patterns(self.exclude, "exclude") or ())
        if self.unit not in ("heads", "neurons"):
            raise KnobDomainError("KMR.heads.unit", f"unit must be heads or neurons, got {self.unit!r}")
        if self.p not in (1, 2) or isinstance(self.p, bool):
            raise KnobDomainError("KMR.heads.score", f"p must be 1 or 2, got {self.p!r}")
        if self.scope not in ("per-layer", "global"):
            raise KnobDomainError("KMR.heads.global-order", f"scope must be per-layer or global, got {self.scope!r}")

    @classmethod
    def for_model(cls, model: nn.Module, unit: Unit = "heads", p: int = 2, scope: Scope = "per-layer", *,
                  include: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> HeadPruning:
        """A rule with a knob ``fraction@<site>`` for each site of ``unit`` the patterns select."""
        rule = cls(unit, p, scope, (), as_patterns(include, "include"), as_patterns(exclude, "exclude") or ())
        names = tuple(n for n, _ in rule._chosen(model))
        return cls(unit, p, scope, names, rule.include, rule.exclude)

    def knobs(self) -> Sequence[Knob]:
        ks = [Knob("fraction", fraction_domain(), "increasing")]  # KMR.heads.knob
        ks += [Knob(f"fraction@{n}", fraction_domain(), "increasing") for n in self.layers]
        return ks

    def _sites(self, model: nn.Module) -> list[tuple[str, AttentionSite | FfnSite]]:
        attn, ffn = find_sites(model)
        sites: Sequence[AttentionSite | FfnSite] = attn if self.unit == "heads" else ffn
        return [(s.name, s) for s in sites]

    def _parts(self, model: nn.Module, s: AttentionSite | FfnSite) -> list[tuple[str, torch.Tensor, int]]:
        return _attn_weights(model, s) if isinstance(s, AttentionSite) else _ffn_weights(model, s)

    def _chosen(self, model: nn.Module) -> list[tuple[str, AttentionSite | FfnSite]]:
        """``KMR.heads.select``: a site is chosen when one of its score weights is selected by
        include / exclude (``KMR.select.include``) and none is excluded."""
        sites = self._sites(model)
        if self.include is None and not self.exclude:
            return sites
        pnames = {n: [q for q, _, _ in self._parts(model, s)] for n, s in sites}
        every = [n for n, _ in model.named_parameters()]
        keep = set(select_names(every, every, self.include, self.exclude, "head pruning"))
        return [(n, s) for n, s in sites if any(q in keep for q in pnames[n])
                and not any(fnmatch.fnmatchcase(q, x) for q in pnames[n] for x in self.exclude)]

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        f = find_knob(self.knobs(), knob).check(value)  # KMR.knob.domain / KMR.knob.unknown
        frac = Fraction(to_exact(f, clause="KMR.knob.domain", error=KnobDomainError, what="fraction"))
        check_supported(model)  # KMR.rule.unsupported-module
        chosen = self._chosen(model)  # KMR.heads.sites (refuses before any change)
        parts = {n: self._parts(model, s) for n, s in chosen}
        for n, _ in chosen:
            for q, t, _ in parts[n]:
                check_float_finite(q, t, CLAUSE)  # KMR.heads.dtype KMR.heads.empty KMR.heads.nonfinite
        units = [(s.heads if isinstance(s, AttentionSite) else s.width) for _, s in chosen]
        widths = [(s.head_dim if isinstance(s, AttentionSite) else 1) for _, s in chosen]
        scores = [unit_scores([(t, a) for _, t, a in parts[n]], u, w, self.p)
                  for (n, _), u, w in zip(chosen, units, widths, strict=True)]
        if knob == "fraction" and self.scope == "global":  # KMR.heads.scope
            fan = [sum(int(t.numel()) for _, t, _ in parts[n]) // u for (n, _), u in zip(chosen, units, strict=True)]
            removed = removed_global(scores, fan, frac)
        elif knob == "fraction":
            removed = [removed_per_site(s, frac) for s in scores]
        else:
            target = knob.split("@", 1)[1]  # KMR.heads.per-layer-knob
            names = [n for n, _ in chosen]
            if target not in names:
                raise RuleInputError("KMR.heads.per-layer-knob",
                                     f"{target!r} is not a {self.unit} site of this model; sites: {names}")
            removed = [removed_per_site(s, frac) if n == target else [] for (n, _), s in zip(chosen, scores,
                                                                                             strict=True)]
        return remove_units(model, [(s, r) for (_, s), r in zip(chosen, removed, strict=True)])


def _idx(keep: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(keep), dtype=torch.long, device=like.device)


def _shrink_linear(new: nn.Module, name: str, rows: Sequence[int] | None, cols: Sequence[int] | None) -> None:
    """``KMR.heads.removal``: keep ``rows`` (outputs; weight rows and bias entries) and ``cols``
    (inputs) of Linear ``name`` in ``new``; the module object is already a copy."""
    mod = _linear(new, name)
    w = mod.weight.detach()
    if rows is not None:
        w = w.index_select(0, _idx(rows, w))
        if mod.bias is not None:
            set_parameter(new, f"{name}.bias", mod.bias.detach().index_select(0, _idx(rows, w)).contiguous())
        mod.out_features = len(rows)
    if cols is not None:
        w = w.index_select(1, _idx(cols, w))
        mod.in_features = len(cols)
    set_parameter(new, f"{name}.weight", w.contiguous())


def remove_units(model: nn.Module, removed: Sequence[tuple[AttentionSite | FfnSite, Sequence[int]]]) -> nn.Module:
    """``KMR.heads.removal``: a new model without the listed heads / neurons; untouched tensors
    are shared with ``model`` (``KMR.heads.sharing``), which is never modified."""
    new = clone_tree(model)
    no_nested: set[str] = set()
    for site, rem in removed:
        if not rem:
            continue
        r = set(rem)
        if isinstance(site, FfnSite):
            keep = [j for j in range(site.width) if j not in r]
            _shrink_linear(new, site.name, keep, None)  # KMR.heads.ffn-removal
            _shrink_linear(new, site.second, None, keep)
            continue
        kept = [h for h in range(site.heads) if h not in r]
        d = site.head_dim
        cols = [h * d + j for h in kept for j in range(d)]
        if site.kind == "bert":
            for pn in ("query", "key", "value"):
                _shrink_linear(new, f"{site.name}.{pn}", cols, None)
            _shrink_linear(new, site.out, None, cols)
            bsa: Any = new.get_submodule(site.name)
            bsa.num_attention_heads = len(kept)  # KMR.heads.bert: the HF forward reads the head count off q/k/v
            bsa.all_head_size = len(kept) * d
            continue
        src = model.get_submodule(site.name)
        assert isinstance(src, nn.MultiheadAttention)
        inner = site.heads * d
        rows = [blk * inner + c for blk in range(3) for c in cols]  # q, k, v blocks of the packed weight
        prev = src.kept_heads if isinstance(src, HeadPrunedAttention) else tuple(range(site.heads))
        source = src.source_heads if isinstance(src, HeadPrunedAttention) else site.heads
        w = src.in_proj_weight
        assert isinstance(w, torch.Tensor)
        m = HeadPrunedAttention(src.embed_dim, len(kept), d, [prev[h] for h in kept], source,
                                dropout=float(src.dropout), bias=src.in_proj_bias is not None,
                                batch_first=src.batch_first, dtype=w.dtype, device=w.device)  # KMR.heads.mha-module
        m.training = src.training
        with torch.no_grad():
            m.in_proj_weight = nn.Parameter(w.detach().index_select(0, _idx(rows, w)).contiguous(),
                                            requires_grad=w.requires_grad)
            if src.in_proj_bias is not None:
                b = src.in_proj_bias
                m.in_proj_bias = nn.Parameter(b.detach().index_select(0, _idx(rows, b)).contiguous(),
                                              requires_grad=b.requires_grad)
            ow = src.out_proj.weight
            m.out_proj.weight = nn.Parameter(ow.detach().index_select(1, _idx(cols, ow)).contiguous(),
                                             requires_grad=ow.requires_grad)
            if src.out_proj.bias is not None:
                m.out_proj.bias = src.out_proj.bias  # shared: the output projection's outputs are all kept
        m.out_proj.training = src.out_proj.training
        set_submodule(new, site.name, m)
        if site.encoder is not None:
            no_nested.add(site.encoder)
    for enc in sorted(no_nested):  # KMR.heads.fast-path: no nested-tensor conversion in front of it
        encoder: Any = new.get_submodule(enc)
        encoder.use_nested_tensor = False
    return new
