"""Outlines of a segmentation mask drawn on an image (``segment predict`` and the app)."""

from __future__ import annotations

import cv2
import numpy as np


def draw_outline(img: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """Contours of a boolean mask drawn on an RGB uint8 image."""
    out = np.ascontiguousarray(img.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, max(1, img.shape[0] // 160))
    return out


__all__ = ["draw_outline"]
