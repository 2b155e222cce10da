"""The geometry between an original image and the model input: one mapping, both ways.

Preprocessing takes a box of the original image (the whole image, or the scan sector's bounding box
when the run crops to the sector: :func:`liverscope.data.preprocess.crop_box`) and resizes it to the
model's ``size x size`` grid. Masks and maps move between the two grids only through these functions:
boolean masks with nearest-neighbour interpolation, float maps bilinearly.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), end-exclusive


def bounding_box(mask: np.ndarray) -> Box | None:
    """``(y0, y1, x0, x1)`` of the true pixels of a mask, ``None`` when there are none."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _interpolation(arr: np.ndarray) -> int:
    return cv2.INTER_NEAREST if arr.dtype == bool else cv2.INTER_LINEAR


def to_model(arr: np.ndarray, box: Box, size: int) -> np.ndarray:
    """An original-size mask (bool, nearest neighbour) or map (float, bilinear) → the model's
    ``size x size`` grid, through the same crop preprocessing took."""
    y0, y1, x0, x1 = box
    a = np.asarray(arr)
    part = a[y0:y1, x0:x1]
    if a.dtype == bool:
        return cv2.resize(part.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(part.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def to_original(arr: np.ndarray, shape: tuple[int, ...], box: Box | None = None) -> np.ndarray:
    """A model-grid mask (bool, nearest neighbour) or map (float32, bilinear) → the original image's
    ``H x W``: resized into ``box`` (default: the whole image), false / zero elsewhere."""
    h, w = shape[:2]
    y0, y1, x0, x1 = box or (0, h, 0, w)
    a = np.asarray(arr)
    if a.dtype == bool:
        out = np.zeros((h, w), bool)
        out[y0:y1, x0:x1] = cv2.resize(
            a.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
        return out
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = cv2.resize(a.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


__all__ = ["Box", "bounding_box", "to_model", "to_original"]
