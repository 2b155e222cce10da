"""Augmentation presets (training split only), built from torchvision.transforms.v2.

- ``conservative``: horizontal flip p=0.5 (ResNet-50 + CBAM study).
- ``ultrasound``: flip, shift/scale/rotate, Gaussian blur, Gaussian noise, brightness/contrast and
  elastic distortion (EfficientNet + Grad-CAM study; elastic stands in for albumentations' grid
  distortion, which torchvision does not have).
- ``light``: zoom ±10%, brightness ±20%, flip, rotation ±15° (MobileNetV2 multi-disease study).
- ``none``: no augmentation.

Every preset takes a uint8 ``HxWx3`` array and returns a normalised float tensor ``3xHxW``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from liverscope.config import CHOICES
from liverscope.data.preprocess import Preprocessing, normalise
from liverscope.errors import LiverscopeError

PRESETS = CHOICES["data.augment"]


def _preset_ops(name: str) -> list:
    if name == "none":
        return []
    if name == "conservative":
        return [v2.RandomHorizontalFlip(p=0.5)]
    if name == "ultrasound":
        return [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.RandomAffine(degrees=15, translate=(0.0625, 0.0625), scale=(0.9, 1.1))], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.2),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
            v2.RandomApply([v2.ElasticTransform(alpha=30.0, sigma=5.0)], p=0.2),
        ]
    if name == "light":
        return [
            v2.RandomAffine(degrees=15, scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.2),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    raise LiverscopeError(f"unknown augmentation preset '{name}' (choose from {', '.join(PRESETS)})")


class ToTensorNormalised:
    """uint8 ``HxWx3`` array (or a ``3xHxW`` uint8 / [0, 1] float tensor) → float tensor ``3xHxW``
    normalised by :func:`~liverscope.data.preprocess.normalise`."""

    def __init__(self, pp: Preprocessing):
        self.pp = pp

    def __call__(self, x) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            x = x.permute(1, 2, 0).numpy()
        return torch.from_numpy(normalise(x, self.pp)).permute(2, 0, 1)


class _Augment:
    """Preset ops on a uint8 tensor, then Gaussian noise (ultrasound preset) and normalisation."""

    def __init__(self, preset: str, pp: Preprocessing):
        self.ops = v2.Compose(_preset_ops(preset)) if preset != "none" else None
        self.noise = v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.03)], p=0.3) if preset == "ultrasound" else None
        self.to_tensor = ToTensorNormalised(pp)
        self.preset = preset

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if self.ops is not None:
            x = self.ops(x)
        if self.noise is not None:
            # GaussianNoise works on floats in [0, 1]; apply before normalisation
            return self.to_tensor(self.noise(x.float().div(255.0)).clamp_(0, 1))
        return self.to_tensor(x)


def build_transform(preset: str, pp: Preprocessing, train: bool):
    """Transform for one split: the preset on the training split, plain normalisation otherwise."""
    if preset not in PRESETS:
        raise LiverscopeError(f"unknown augmentation preset '{preset}' (choose from {', '.join(PRESETS)})")
    if not train:
        return ToTensorNormalised(pp)
    return _Augment(preset, pp)
