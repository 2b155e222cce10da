"""Augmentation presets (training split only), built from torchvision.transforms.v2.

- ``conservative``: horizontal flip p=0.5 (ResNet-50 + CBAM study).
- ``ultrasound``: flip, shift/scale/rotate, Gaussian blur, Gaussian noise, brightness/contrast and
  elastic distortion (EfficientNet + Grad-CAM study; elastic stands in for albumentations' grid
  distortion, which torchvision does not have).
- ``light``: zoom ±10%, brightness ±20%, flip, rotation ±15° (MobileNetV2 multi-disease study).
- ``strong``: random resized crop (60-100% of the area, aspect 3:4-4:3, back to the input size),
  rotation ±20°, brightness and contrast ±30%, flip (the honest ResNet-18 reference on the public
  fibrosis set; issue 23).
- ``none``: no augmentation.

Every preset takes a uint8 ``HxWx3`` array and returns a normalised float tensor ``3xHxW``.

``crop`` (``data.train_crop``, issue 9) puts a :class:`TissueCrop` before the preset: each training image
becomes one random ``crop x crop`` window of the preprocessed image, not resized, so the echotexture keeps
the scale of the ``image_size`` input while an epoch costs what a ``crop``-pixel input costs. Evaluation
sees the whole image; a network that ends in global average pooling then averages its evidence over
every window at once (test-time multi-crop in one pass), and prediction, export and CAMs are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from liverscope.config import CHOICES
from liverscope.data.preprocess import Preprocessing, normalise
from liverscope.errors import LiverscopeError

PRESETS = CHOICES["data.augment"]


def _preset_ops(name: str, size: int = 224) -> list:
    if name == "strong":
        return [
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.75, 4 / 3), antialias=True),
            v2.RandomRotation(20),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    if name == "none":
        return []
    if name == "conservative":
        return [v2.RandomHorizontalFlip(p=0.5)]
    if name == "ultrasound":
        return [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(
                [v2.RandomAffine(degrees=15, translate=(0.0625, 0.0625), scale=(0.9, 1.1))], p=0.5
            ),
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


class TissueCrop:
    """A random ``size x size`` window of a uint8 ``HxWx3`` image that shows mostly tissue.

    Hand-written because torchvision's ``RandomCrop`` does not look at the content: after the crop to
    the scan sector's box, the corners of a convex-probe image are black, and a window there carries
    no echotexture. Up to ``tries`` positions are drawn; the first with at least ``min_tissue`` of its
    pixels brighter than ``threshold`` is kept, else the one with the most tissue.

    Positions come from torch's random generator, which Lightning seeds and which each DataLoader worker
    gets its own copy of (a NumPy generator made here would repeat the same windows in every worker).
    """

    def __init__(self, size: int, min_tissue: float = 0.6, tries: int = 10, threshold: int = 8):
        if size < 8:
            raise LiverscopeError(f"train crop must be at least 8 px, got {size}")
        self.size = int(size)
        self.min_tissue = float(min_tissue)
        self.tries = int(tries)
        self.threshold = int(threshold)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        s = self.size
        if s > h or s > w:
            raise LiverscopeError(
                f"train crop {s} px is larger than the {h}x{w} input (use a crop below data.image_size)"
            )
        tissue = img[..., 0] > self.threshold if img.ndim == 3 else img > self.threshold
        best, best_frac = (0, 0), -1.0
        for _ in range(self.tries):
            y, x = int(torch.randint(0, h - s + 1, ())), int(torch.randint(0, w - s + 1, ()))
            frac = float(tissue[y : y + s, x : x + s].mean())
            if frac > best_frac:
                best, best_frac = (y, x), frac
            if frac >= self.min_tissue:
                break
        y, x = best
        return np.ascontiguousarray(img[y : y + s, x : x + s])


class _Augment:
    """Preset ops on a uint8 tensor, then Gaussian noise (ultrasound preset) and normalisation."""

    def __init__(self, preset: str, pp: Preprocessing, crop: int = 0):
        self.crop = TissueCrop(crop) if crop else None
        self.ops = v2.Compose(_preset_ops(preset, int(crop) or pp.size)) if preset != "none" else None
        self.noise = (
            v2.RandomApply([v2.GaussianNoise(mean=0.0, sigma=0.03)], p=0.3)
            if preset == "ultrasound"
            else None
        )
        self.to_tensor = ToTensorNormalised(pp)
        self.preset = preset

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        if self.crop is not None:
            img = self.crop(img)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if self.ops is not None:
            x = self.ops(x)
        if self.noise is not None:
            # GaussianNoise works on floats in [0, 1]; apply before normalisation
            return self.to_tensor(self.noise(x.float().div(255.0)).clamp_(0, 1))
        return self.to_tensor(x)


def build_transform(preset: str, pp: Preprocessing, train: bool, crop: int = 0):
    """Transform for one split: the preset (after a :class:`TissueCrop` of ``crop`` px, when not 0) on the
    training split, plain normalisation of the whole image otherwise."""
    if preset not in PRESETS:
        raise LiverscopeError(f"unknown augmentation preset '{preset}' (choose from {', '.join(PRESETS)})")
    if not train:
        return ToTensorNormalised(pp)
    check_train_crop(crop, pp.size)
    return _Augment(preset, pp, int(crop))


def check_train_crop(crop: int, size: int) -> None:
    """``data.train_crop`` must be 0 (off) or a window inside the ``size``-pixel input."""
    if crop and not 8 <= int(crop) < int(size):
        raise LiverscopeError(
            f"data.train_crop is {crop}: it must be 0 (off) or between 8 and data.image_size - 1 ({int(size) - 1})"
        )
