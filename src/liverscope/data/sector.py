"""The scan sector: the part of an ultrasound frame the probe imaged (the fan of tissue).

Hand-written: no library finds scan sectors. Two methods, recorded in a run's preprocessing
(``Preprocessing.sector``) so that a run always reads its images the way it was trained:

* ``"fan"`` (the default since issue 21): the geometry of the frame, not one grey level.
  The background level and its noise are read off the image border (a fan on grey 10 is found like a
  fan on black); the sector is the convex hull of the largest region that differs from the background
  (pixels are counted where they differ, and thin text strokes, calibration marks and colour bars apart
  from the fan are opened away first), so anechoic vessels, cysts, shadows and dark parenchyma inside
  the fan stay inside. Where the frame comes from a curved or phased-array probe and whole lateral parts
  of the fan are dark (no echo), the annular sector is modelled: the near-field arc gives the apex
  (the centre of the circle it lies on) and the aperture (its two ends), the deepest tissue the outer
  radius; the model is used only when every foreground pixel lies inside it and it is clearly larger
  than the hull. Linear probes give a rectangle, which is its own hull.
* ``"threshold"``: the blurred image above grey 6, largest region, holes filled (runs trained before
  issue 21). It takes grey-10 backgrounds in and cuts dark parenchyma out.

Measured against the 623 expert sector outlines of AUL in ``docs/preprocessing.md``
(``benchmarks/sector.py``).
"""

from __future__ import annotations

import cv2
import numpy as np

from liverscope.data.io import to_grey
from liverscope.utils import logger

SECTOR_METHODS = ("fan", "threshold")
WORK_SIDE = 512  # the sector is found on a copy whose longer side is at most this (a few ms per image)
_DENSITY = 0.2  # share of a window's pixels that must differ from the background for it to be foreground
#: Noise level of the border band above which the border is tissue (a frame cropped to the fan's inside):
#: a scanner's background, black or grey, JPEG or not, stays far below (0-6 on the real sets).
TEXTURED_BORDER = 15.0
_FAN_GATE = 1.2  # the fan model replaces the hull only when it is this much larger (dark lateral parts)


def sector_mask(img: np.ndarray, method: str = "fan") -> np.ndarray:
    """Boolean ``H x W`` mask of the scan sector; the whole image when no sector is found (the reason
    is logged at debug level)."""
    if method == "threshold":
        return threshold_sector(img)
    if method != "fan":
        raise ValueError(f"sector method must be one of {', '.join(SECTOR_METHODS)}, got '{method}'")
    mask, reason = find_fan(img)
    if mask is None:
        logger.debug("no scan sector found (%s): the whole image is used", reason)
        return np.ones(img.shape[:2], bool)
    return mask


def find_fan(img: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``(mask, how)``: the sector and how it was found (``"hull"`` or ``"fan model"``), or
    ``(None, why not)``."""
    grey = to_grey(img)
    h, w = grey.shape
    scale = min(1.0, WORK_SIDE / max(h, w))
    small = (
        cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else grey
    )
    level, noise = _background(small)
    if noise > TEXTURED_BORDER:
        return None, "the frame fills the image (its border is tissue, not background)"
    region = _foreground(small, level, noise)
    if region is None:
        return None, "no region differs from the background over 5% of the image"
    mask, how = _hull(region), "hull"
    arc = _near_arc(region)
    if arc is not None:
        x, y, (cx, cy, r0, _) = arc
        yy, xx = np.mgrid[0 : region.shape[0], 0 : region.shape[1]]
        rho, phi = np.hypot(xx - cx, yy - cy), np.arctan2(xx - cx, yy - cy)
        fan = _annular_sector(region, mask, rho, phi, x, y, (cx, cy, r0))
        if fan is not None:
            mask, how = mask | fan, "fan model"
        mask &= rho >= r0 - 1  # the hull bridges the near-field arc: the probe face is not tissue
    mask = mask.astype(np.uint8)
    if scale < 1:
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool), how


def background_level(img: np.ndarray) -> float:
    """Grey level of an image's background: the median of a band along its border (the level the scan
    sector is found against; text in the band does not move it)."""
    return _background(to_grey(img))[0]


def _background(grey: np.ndarray) -> tuple[float, float]:
    """Grey level of the background and the smallest difference from it that is not noise, from a
    band along the image border (median and median absolute deviation: text there does not move them)."""
    b = max(2, round(min(grey.shape) / 100))
    band = np.concatenate(
        [grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()]
    ).astype(np.float32)
    level = float(np.median(band))
    mad = float(np.median(np.abs(band - level)))
    return level, max(1.5, 4 * 1.4826 * mad)


def _ellipse(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _foreground(grey: np.ndarray, level: float, noise: float) -> np.ndarray | None:
    """Pixels that differ from the background (``level``, ``noise``: :func:`_background`), inside the
    largest region where they are dense; ``None`` when that region covers under 5% of the image."""
    differs = (np.abs(grey.astype(np.float32) - level) > noise).astype(np.float32)
    k = max(3, int(round(min(grey.shape) / 60)) | 1)
    dense = (cv2.blur(differs, (k, k)) > _DENSITY).astype(np.uint8)
    dense = cv2.morphologyEx(dense, cv2.MORPH_OPEN, _ellipse(k))  # text strokes and thin marks go
    # the fan is the largest region once bridges up to 2k wide are cut (a colour bar or a line of text
    # touching the fan is not part of it); what lies within 2k of it comes back (dark edges of the fan)
    core = cv2.morphologyEx(dense, cv2.MORPH_OPEN, _ellipse(2 * k + 1))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
    if n <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < 0.05 * grey.size:
        return None
    near = cv2.dilate((labels == largest).astype(np.uint8), _ellipse(2 * k + 1)) > 0
    # the pixels themselves, not the blurred density, so the outline is not widened by the window
    return near & (dense > 0) & (differs > 0)


def _hull(region: np.ndarray) -> np.ndarray:
    hull = cv2.convexHull(cv2.findNonZero(region.astype(np.uint8)))
    mask = np.zeros(region.shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def _circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float] | None:
    """Least-squares circle through points (Kasa's algebraic fit): centre, radius, median residual."""
    a = np.c_[x, y, np.ones_like(x)]
    (d, e, f), *_ = np.linalg.lstsq(a, -(x**2 + y**2), rcond=None)
    cx, cy = -d / 2, -e / 2
    r2 = cx**2 + cy**2 - f
    if r2 <= 0:
        return None
    r = float(np.sqrt(r2))
    return float(cx), float(cy), r, float(np.median(np.abs(np.hypot(x - cx, y - cy) - r)))


def _near_arc(region: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple] | None:
    """The near-field arc along the region's top edge: its columns, rows and circle, or ``None`` (a
    frame cut at the image top, a linear probe's straight edge, anything not on one circle)."""
    cols = np.nonzero(region.any(0))[0]
    if len(cols) < 9:  # too narrow for an arc (and for the smoothing window)
        return None
    top = region[:, cols].argmax(0).astype(np.float64)
    top = (
        cv2.medianBlur(top.astype(np.float32).reshape(1, -1), 5).ravel().astype(np.float64)
    )  # speckle-ragged edge
    depth = np.nonzero(region.any(1))[0][-1] - top.min()
    smooth = np.convolve(np.pad(top, 4, mode="edge"), np.ones(9) / 9, mode="valid")
    flat = np.nonzero((np.abs(np.gradient(smooth)) < 0.5) & (top <= top.min() + 0.15 * depth))[0]
    if not len(flat):
        return None
    run = max(np.split(flat, np.nonzero(np.diff(flat) > 6)[0] + 1), key=len)  # the longest flat run
    if len(run) < 0.1 * len(cols) or top[run].min() <= 1:
        return None
    circle = _circle(cols[run].astype(np.float64), top[run])
    if circle is None:
        return None
    cx, cy, r, residual = circle
    if not (cy < top[run].min() and r < 3 * max(region.shape) and residual < 1.5):
        return None
    on = np.abs(np.hypot(cols - cx, top - cy) - r) < 2.0  # extend it while the edge stays on the circle
    i0, i1 = run[0], run[-1]
    while i0 > 0 and on[i0 - 1]:
        i0 -= 1
    while i1 < len(cols) - 1 and on[i1 + 1]:
        i1 += 1
    return cols[i0 : i1 + 1].astype(np.float64), top[i0 : i1 + 1], circle


def _annular_sector(region, hull, rho, phi, x, y, circle) -> np.ndarray | None:
    """The annular sector of a curved probe's frame: apex and aperture from the near-field arc (points
    ``x``, ``y`` on ``circle``; ``rho``, ``phi`` every pixel's radius and angle about its centre), outer
    radius from the deepest tissue; ``None`` unless the hull misses dark lateral parts of it."""
    cx, cy, r0 = circle
    left, right = np.arctan2(x[0] - cx, y[0] - cy), np.arctan2(x[-1] - cx, y[-1] - cy)
    fan = (rho >= r0 - 1) & (rho <= np.percentile(rho[region], 99.8)) & (phi >= left) & (phi <= right)
    if fan[region].mean() < 0.97 or fan.sum() < _FAN_GATE * hull.sum():
        return None
    return fan


def threshold_sector(img: np.ndarray, threshold: int = 6) -> np.ndarray:
    """The sector of runs trained before issue 21: the blurred grey image above ``threshold``, thin
    strokes opened away, the largest region with small gaps closed and holes filled; the whole image
    when nothing sensible is found."""
    grey = to_grey(img)
    h, w = grey.shape
    blur = cv2.GaussianBlur(grey, (0, 0), sigmaX=max(1.0, min(h, w) / 200))
    fg = (blur > threshold).astype(np.uint8)
    k = max(3, int(round(min(h, w) / 60)) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _ellipse(k))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.ones((h, w), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < 0.05 * h * w:
        return np.ones((h, w), bool)
    region = (labels == largest).astype(np.uint8)
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, _ellipse(2 * k + 1))
    # fill holes: flood the background from the image border; what the flood cannot reach is inside
    flood = np.pad(region, 1)
    cv2.floodFill(flood, None, (0, 0), 1)
    return (region | (1 - flood[1:-1, 1:-1])).astype(bool)
