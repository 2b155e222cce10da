"""Plain timm backbones of the three studies and CPU-sized ones, each registered under its name."""

from __future__ import annotations

from liverscope.models.registry import register_model
from liverscope.models.weights import backbone_builder

#: (registry name, timm name, description, CPU-sized)
PLAIN_BACKBONES = [
    ("efficientnet_b0", "efficientnet_b0", "EfficientNet-B0 (seed study)", False),
    ("efficientnet_b1", "efficientnet_b1", "EfficientNet-B1", False),
    ("efficientnet_b2", "efficientnet_b2", "EfficientNet-B2", False),
    ("efficientnet_b3", "efficientnet_b3", "EfficientNet-B3", False),
    ("efficientnet_b4", "efficientnet_b4", "EfficientNet-B4", False),
    ("resnet50", "resnet50", "ResNet-50", False),
    ("densenet121", "densenet121", "DenseNet-121", False),
    ("mobilenetv2", "mobilenetv2_100", "MobileNetV2 (multi-disease study)", True),
    ("resnet18", "resnet18", "ResNet-18", True),
    ("resnet10t", "resnet10t", "ResNet-10-T (fast on CPU)", True),
    ("mobilenetv3_small", "mobilenetv3_small_100", "MobileNetV3-Small (fastest)", True),
]


for _name, _timm, _desc, _small in PLAIN_BACKBONES:
    register_model(_name, _timm, _desc, _small)(backbone_builder(_timm, _name))
