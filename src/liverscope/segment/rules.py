"""Pseudo-mask rules: pure functions, a CAM in, a boolean mask out, never outside the scan sector.

The first reference study thresholds each Grad-CAM heatmap at 0.5 of its normalised range; the other
rules are Otsu's threshold over the scan sector and the top q% of sector pixels. Definitions (tests pin
them down):

* a *normalised* map is min-max scaled to [0, 1] over the scan-sector pixels and 0 outside the sector
  (:func:`normalise_map`; a constant map becomes all zeros);
* :func:`threshold_mask`: pixels with ``cam >= threshold``;
* :func:`otsu_mask`: Otsu's threshold (OpenCV) of the sector pixels, rescaled to 0..255; pixels strictly
  above it; a constant map gives an empty mask;
* :func:`top_fraction_mask`: exactly ``ceil(q/100 * n)`` of the ``n`` sector pixels, the highest ones;
  ties are broken in raster order (top-left first).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import map_in_region
from liverscope.explain import normalise_in_region

RULES = ("threshold", "otsu", "top")


def check_rule(rule: str) -> None:
    """Raise a clear error for a rule name that is not one of :data:`RULES`."""
    if rule not in RULES:
        raise LiverscopeError(f"pseudo-mask rule '{rule}': expected one of {', '.join(RULES)}")


def normalise_map(cam: np.ndarray, sector: np.ndarray | None = None) -> np.ndarray:
    """Min-max scale a map to [0, 1] over the sector pixels; 0 outside the sector and for a constant map.

    Args:
        cam: ``HxW`` map (any range).
        sector: ``HxW`` boolean scan-sector mask (``None``: the whole image).

    Returns:
        float32 ``HxW`` in [0, 1].
    """
    cam, sec = map_in_region(cam, sector)
    return normalise_in_region(cam, sec)


def threshold_mask(cam: np.ndarray, threshold: float = 0.5, sector: np.ndarray | None = None) -> np.ndarray:
    """The study's rule: pixels of the normalised map at or above ``threshold``, inside the sector.

    Args:
        cam: ``HxW`` normalised map (see :func:`normalise_map`).
        threshold: cut-off (0.5 in the study).
        sector: scan-sector mask (``None``: whole image).

    Returns:
        bool ``HxW`` mask.
    """
    cam, sec = map_in_region(cam, sector)
    return (cam >= threshold) & sec


def otsu_mask(cam: np.ndarray, sector: np.ndarray | None = None) -> np.ndarray:
    """Otsu's threshold over the sector pixels (Otsu, IEEE Trans. SMC 1979), computed by OpenCV.

    The sector values are rescaled to 0..255 (Otsu's threshold is unchanged by rescaling) and the mask
    holds the pixels strictly above the threshold. A constant map has no threshold: empty mask.

    Returns:
        bool ``HxW`` mask, inside the sector.
    """
    cam, sec = map_in_region(cam, sector)
    mask = np.zeros(cam.shape, bool)
    vals = cam[sec]
    if vals.size == 0:
        return mask
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo <= 1e-12:
        return mask
    q = np.clip(np.rint((vals - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(q.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask[sec] = q > t
    return mask


def top_fraction_mask(cam: np.ndarray, sector: np.ndarray | None = None, q: float = 20.0) -> np.ndarray:
    """The ``q`` percent highest sector pixels: exactly ``ceil(q/100 * n)`` of the ``n`` sector pixels.

    Ties are broken in raster order (the earlier pixel wins), so the count is always exact.

    Args:
        cam: ``HxW`` map.
        sector: scan-sector mask (``None``: whole image).
        q: percentage in [0, 100].

    Returns:
        bool ``HxW`` mask.
    """
    if not 0 <= q <= 100:
        raise LiverscopeError(f"--q {q}: the top fraction is a percentage in [0, 100]")
    cam, sec = map_in_region(cam, sector)
    idx = np.flatnonzero(sec.ravel())
    k = min(len(idx), int(math.ceil(q * len(idx) / 100.0 - 1e-9)))
    mask = np.zeros(cam.size, bool)
    if k > 0:
        order = np.argsort(-cam.ravel()[idx], kind="stable")
        mask[idx[order[:k]]] = True
    return mask.reshape(cam.shape)


def pseudo_mask(cam: np.ndarray, sector: np.ndarray | None = None, rule: str = "threshold", *, threshold: float = 0.5, q: float = 20.0) -> np.ndarray:
    """One pseudo-mask by rule name: ``threshold`` (default, ``cam >= threshold``), ``otsu`` or ``top`` (top ``q``%)."""
    check_rule(rule)
    if rule == "threshold":
        return threshold_mask(cam, threshold, sector)
    if rule == "otsu":
        return otsu_mask(cam, sector)
    return top_fraction_mask(cam, sector, q)


def describe_rule(rule: str, threshold: float = 0.5, q: float = 20.0, flip_average: bool = False, n_models: int = 1) -> str:
    """Human-readable name of a pseudo-mask recipe, e.g. ``threshold 0.5, flip-averaged``."""
    name = {"threshold": f"threshold {threshold:g}", "otsu": "Otsu", "top": f"top {q:g}%"}.get(rule, rule)
    if flip_average:
        name += ", flip-averaged"
    if n_models > 1:
        name += f", {n_models}-model ensemble"
    return name


__all__ = ["RULES", "check_rule", "normalise_map", "threshold_mask", "otsu_mask", "top_fraction_mask", "pseudo_mask", "describe_rule"]
