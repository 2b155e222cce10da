"""Pseudo-mask rules: pure functions, a CAM in, a boolean mask out, never outside the scan sector.

The first reference study thresholds each Grad-CAM heatmap at 0.5 of its normalised range; the other
rules are Otsu's threshold over the scan sector, the top q% of sector pixels, and GrabCut, which lets
the image's own edges refine the threshold mask. Definitions (tests pin them down):

* a *normalised* map is min-max scaled to [0, 1] over the scan-sector pixels and 0 outside the sector
  (:func:`normalise_map`; a constant map becomes all zeros);
* :func:`threshold_mask`: pixels with ``cam >= threshold``;
* :func:`otsu_mask`: Otsu's threshold (OpenCV) of the sector pixels, rescaled to 0..255; pixels strictly
  above it; a constant map gives an empty mask;
* :func:`top_fraction_mask`: exactly ``ceil(q/100 * n)`` of the ``n`` sector pixels, the highest ones;
  ties are broken in raster order (top-left first);
* :func:`grabcut_mask` (the only rule that needs the image, :data:`IMAGE_RULES`): OpenCV's GrabCut on
  the model input, seeded by the map — outside the sector sure background, ``cam >= sure`` sure
  foreground, the threshold mask probable foreground, the rest of the sector probable background; the
  seed (threshold) mask when GrabCut finds nothing or cannot run.

:func:`confident_targets` turns a map into training targets with a weight per pixel: confident
foreground and background count, the uncertain band between them is ignored (``fit_unet(weights=...)``).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import is_flat, map_in_region
from liverscope.explain.cams import normalise_in_region

RULES = ("threshold", "otsu", "top", "grabcut")
#: Rules that need the model input image besides the map.
IMAGE_RULES = ("grabcut",)


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
    if is_flat(lo, hi):
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


def grabcut_mask(
    cam: np.ndarray,
    image: np.ndarray,
    sector: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    sure: float = 0.8,
    iterations: int = 5,
) -> np.ndarray:
    """The threshold mask refined by the image's structure: OpenCV's GrabCut (Rother et al., SIGGRAPH 2004)
    seeded by the map.

    Seeds: pixels outside the sector are sure background, ``cam >= sure`` sure foreground, the rest of
    :func:`threshold_mask` (``cam >= threshold``) probable foreground, the rest of the sector probable
    background. GrabCut fits colour models to the seeds and moves the probable pixels along the image's
    edges. When GrabCut cannot run (no sure or probable foreground, a region without background, an
    OpenCV error) or returns nothing, the result is the threshold mask.

    Args:
        cam: ``HxW`` normalised map (see :func:`normalise_map`).
        image: the model input, uint8 ``HxWx3`` (or ``HxW`` grey), the map's size.
        sector: the region masks stay in (scan sector, or sector and liver; ``None``: whole image).
        threshold: the seed mask's cut-off (probable foreground).
        sure: the cut-off of sure foreground (at least ``threshold``).
        iterations: GrabCut iterations.

    Returns:
        bool ``HxW`` mask inside the sector.
    """
    cam, sec = map_in_region(cam, sector)
    seed = threshold_mask(cam, threshold, sec)
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[:2] != cam.shape or img.ndim != 3 or img.shape[2] != 3:
        raise LiverscopeError(
            f"GrabCut needs the model input (H x W x 3, the map's {cam.shape}), got shape {img.shape}"
        )
    sure_fg = (cam >= max(float(sure), float(threshold))) & sec
    if not sure_fg.any():  # a constant map: nothing to grow from
        return seed
    gc = np.full(cam.shape, cv2.GC_BGD, np.uint8)
    gc[sec] = cv2.GC_PR_BGD
    gc[seed] = cv2.GC_PR_FGD
    gc[sure_fg] = cv2.GC_FGD
    bgd, fgd = (
        np.zeros((1, 65), np.float64),
        np.zeros((1, 65), np.float64),
    )  # OpenCV's GMM state (5 components x 13)
    try:
        cv2.grabCut(
            np.ascontiguousarray(img, dtype=np.uint8),
            gc,
            None,
            bgd,
            fgd,
            int(iterations),
            cv2.GC_INIT_WITH_MASK,
        )
    except cv2.error:  # e.g. no background sample (the seed covers the whole image)
        return seed
    out = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)) & sec
    return out if out.any() else seed


def pseudo_mask(
    cam: np.ndarray,
    sector: np.ndarray | None = None,
    rule: str = "threshold",
    *,
    threshold: float = 0.5,
    q: float = 20.0,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """One pseudo-mask by rule name: ``threshold`` (default, ``cam >= threshold``), ``otsu``, ``top`` (top
    ``q``%) or ``grabcut`` (:func:`grabcut_mask` seeded at ``threshold``; needs ``image``, the model input)."""
    check_rule(rule)
    if rule == "threshold":
        return threshold_mask(cam, threshold, sector)
    if rule == "otsu":
        return otsu_mask(cam, sector)
    if rule == "grabcut":
        if image is None:
            raise LiverscopeError(
                "pseudo-mask rule 'grabcut' refines the map with the image: pass image= (the model input)"
            )
        return grabcut_mask(cam, image, sector, threshold=threshold)
    return top_fraction_mask(cam, sector, q)


def confident_targets(
    cams: np.ndarray, sectors: np.ndarray | None = None, low: float = 0.3, high: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Training targets from maps with a weight per pixel: only confident pixels count.

    Each map is normalised over its sector (:func:`normalise_map`); pixels at or above ``high`` are
    foreground, at or below ``low`` background (weight 1 both); those in between are ignored (weight 0);
    outside the sector background with weight 1 (nothing is there).

    Args:
        cams: float ``N x H x W`` maps.
        sectors: bool ``N x H x W`` scan sectors (``None``: whole images).
        low, high: cut-offs, ``0 <= low < high <= 1``.

    Returns:
        ``(masks bool N x H x W, weights float32 N x H x W)`` for :func:`~liverscope.segment.training.fit_unet`.
    """
    if not 0.0 <= low < high <= 1.0:
        raise LiverscopeError(f"confident targets: need 0 <= low < high <= 1, got low={low}, high={high}")
    cams = np.asarray(cams, np.float32)
    if cams.ndim != 3:
        raise LiverscopeError(f"confident targets: maps must be N x H x W, got shape {cams.shape}")
    if sectors is not None and len(sectors) != len(cams):
        raise LiverscopeError(f"confident targets: {len(sectors)} sectors for {len(cams)} maps")
    norm = (
        np.stack([normalise_map(c, None if sectors is None else sectors[i]) for i, c in enumerate(cams)])
        if len(cams)
        else cams
    )
    inside = np.ones(cams.shape, bool) if sectors is None else np.asarray(sectors, bool).reshape(cams.shape)
    masks = (norm >= high) & inside
    weights = np.where(inside & (norm > low) & (norm < high), 0.0, 1.0).astype(np.float32)
    return masks, weights


def describe_rule(
    rule: str,
    threshold: float = 0.5,
    q: float = 20.0,
    flip_average: bool = False,
    n_models: int = 1,
    layers: str | int | Sequence[str | int] | None = None,
) -> str:
    """Human-readable name of a pseudo-mask recipe, e.g. ``threshold 0.5, CAM at layer3+last, flip-averaged``."""
    name = {
        "threshold": f"threshold {threshold:g}",
        "otsu": "Otsu",
        "top": f"top {q:g}%",
        "grabcut": f"GrabCut from threshold {threshold:g}",
    }.get(rule, rule)
    if layers is not None:
        name += ", CAM at " + "+".join(
            str(x).strip() for x in ([layers] if isinstance(layers, (str, int)) else layers)
        )
    if flip_average:
        name += ", flip-averaged"
    if n_models > 1:
        name += f", {n_models}-model ensemble"
    return name


__all__ = [
    "RULES",
    "IMAGE_RULES",
    "check_rule",
    "normalise_map",
    "threshold_mask",
    "otsu_mask",
    "top_fraction_mask",
    "grabcut_mask",
    "pseudo_mask",
    "confident_targets",
    "describe_rule",
]
