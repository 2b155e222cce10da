"""Pictures of class activation maps: colour heatmaps, overlays on the model input and on the original
image at its original size, and the report gallery's tiles.

These stay hand-written next to ``pytorch_grad_cam.utils.image.show_cam_on_image``, which gives a
different picture (compared on fixed arrays in tests/test_explain.py):

* it divides the blended image by its own maximum, so a scan whose overlay stays below white is
  brightened (by up to 58 grey levels, 33 on average, on the test's dim image) and a map with no
  mid-range values (a two-level map) gets colours 255 instead of 128 — the grey levels of an
  ultrasound image carry meaning (with a white pixel on a saturated colour it is ours within 1 level);
* it truncates to uint8 where these round;
* it blends everywhere: here the scan's border and burned-in text outside the sector are left as they are.

Its colour map is OpenCV's jet, as here (:func:`heatmap_rgb` is the same colours as its heatmap, before
that rescaling).
"""

from __future__ import annotations

import cv2
import numpy as np

from liverscope.data.geometry import to_original
from liverscope.data.io import to_rgb
from liverscope.data.preprocess import crop_box
from liverscope.data.sector import sector_mask

#: Blend weight of the colour map in overlays.
OVERLAY_ALPHA = 0.45
#: The report gallery's tiles are enlarged to at least this height (px).
GALLERY_MIN_SIDE = 192
#: Longest side of an overlay drawn on the original image (``explain --full-size`` lifts it).
PREVIEW_SIDE = 2048


def heatmap_rgb(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an RGB uint8 colour image (jet: blue low, red high)."""
    u8 = np.uint8(np.clip(np.nan_to_num(cam), 0, 1) * 255)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray, cam: np.ndarray, region: np.ndarray | None = None, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """Blend a [0, 1] map onto an image (grey or RGB uint8 of the map's size); outside ``region`` the
    image is left as it is (no blue tint over the border and its text). The image keeps its own grey
    levels: nothing is rescaled (see the module's note on ``show_cam_on_image``)."""
    img = to_rgb(np.asarray(image))
    if img.shape[:2] != cam.shape:
        raise ValueError(f"image {img.shape[:2]} and map {cam.shape} differ in size")
    heat = heatmap_rgb(cam).astype(np.float32)
    out = img.astype(np.float32)
    blend = (1 - alpha) * out + alpha * heat
    if region is None:
        out = blend
    else:
        out[region] = blend[region]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cam_to_original(cam: np.ndarray, original: np.ndarray, pp) -> np.ndarray:
    """Carry a model-input map back onto the original image: resized into the region preprocessing
    took (see :func:`~liverscope.data.preprocess.crop_box`), zero elsewhere. Returns float32 ``H x W``
    of the original in [0, 1] (bilinear resizing may overshoot a little)."""
    return np.clip(to_original(np.asarray(cam, np.float32), original.shape, crop_box(original, pp)), 0, 1)


def original_overlay(
    original: np.ndarray,
    cam: np.ndarray,
    pp,
    restrict_to_sector: bool = True,
    max_side: int | None = PREVIEW_SIDE,
) -> np.ndarray:
    """The map on the original image (RGB uint8); blended only inside the scan sector when restricted,
    inside the region the model saw otherwise. An original whose longer side exceeds ``max_side`` is
    drawn on a preview of that size (an 8000x8000 scan: 2048x2048, the same picture at a fraction of
    the cost); ``max_side=None`` keeps the original size."""
    h, w = original.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        original = cv2.resize(
            original, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    full = cam_to_original(cam, original, pp)
    region = (
        sector_mask(original, getattr(pp, "sector", "fan"))
        if restrict_to_sector
        else to_original(np.ones(cam.shape, bool), original.shape, crop_box(original, pp))
    )
    return overlay(original, full, region)


def gallery_tile(model_input: np.ndarray, cam_rgb: np.ndarray) -> np.ndarray:
    """The model input and its overlay side by side, enlarged to at least ``GALLERY_MIN_SIDE`` px high."""
    tile = np.concatenate(
        [to_rgb(model_input), np.full((model_input.shape[0], 4, 3), 255, np.uint8), cam_rgb], axis=1
    )
    scale = max(1, int(np.ceil(GALLERY_MIN_SIDE / tile.shape[0])))
    if scale > 1:
        tile = cv2.resize(
            tile, (tile.shape[1] * scale, tile.shape[0] * scale), interpolation=cv2.INTER_NEAREST
        )
    return tile


__all__ = [
    "OVERLAY_ALPHA",
    "GALLERY_MIN_SIDE",
    "heatmap_rgb",
    "overlay",
    "cam_to_original",
    "original_overlay",
    "gallery_tile",
]
