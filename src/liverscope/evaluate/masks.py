"""Mask metrics: pure functions, arrays in, numbers out (MONAI's ``compute_iou`` style).

Definitions (tests pin them down):

* :func:`iou` / :func:`dice`: the values of MONAI's ``compute_iou`` / ``compute_dice``
  (``include_background=True, ignore_empty=False``), computed here with NumPy: two empty masks score
  1.0 (perfect agreement that nothing is there), an empty and a non-empty mask score 0.0;
* :func:`pointing_game` (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016):
  the first maximum (raster order) of a map, inside the region when one is given, is a hit when it
  lies in the true mask; a constant map points nowhere (a miss); an empty true mask has no answer
  (``None``, left out of hit rates);
* :func:`mask_scores`: mean IoU and Dice over image pairs, and the per-image figures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from liverscope.errors import LiverscopeError


def map_in_region(cam: np.ndarray, region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D map as float32 and its region as a boolean mask of the same shape (checked).

    Args:
        cam: ``HxW`` map.
        region: ``HxW`` boolean mask (e.g. the scan sector); ``None``: the whole map.

    Returns:
        ``(float32 HxW map, bool HxW region)``.

    Raises:
        LiverscopeError: the map is not 2-D, or the region's shape differs from the map's.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise LiverscopeError(f"a CAM must be a 2-D map, got shape {cam.shape}")
    if region is None:
        return cam, np.ones(cam.shape, bool)
    region = np.asarray(region, dtype=bool)
    if region.shape != cam.shape:
        raise LiverscopeError(f"sector mask shape {region.shape} does not match the CAM's {cam.shape}")
    return cam, region


def _pair(pred: np.ndarray, true: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred).astype(bool)
    t = np.asarray(true).astype(bool)
    if p.shape != t.shape:
        raise LiverscopeError(f"mask shapes differ: {p.shape} vs {t.shape}")
    if region is not None:
        r = np.asarray(region, bool)
        p, t = p & r, t & r
    return p, t


def iou(pred: np.ndarray, true: np.ndarray, region: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean masks (the value of MONAI's ``compute_iou``).

    Args:
        pred: ``HxW`` predicted mask (bool, or anything non-zero is foreground).
        true: ``HxW`` true mask, same shape.
        region: ``HxW`` boolean mask; only pixels inside it count (e.g. the scan sector); ``None``: all.

    Returns:
        IoU in [0, 1]; two empty masks give 1.0.
    """
    p, t = _pair(pred, true, region)
    union = np.count_nonzero(p | t)
    if union == 0:
        return 1.0
    # float32 division, as MONAI computes it, so the figures stay identical to the MONAI-based ones
    return float(np.float32(np.count_nonzero(p & t)) / np.float32(union))


def dice(pred: np.ndarray, true: np.ndarray, region: np.ndarray | None = None) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two boolean masks (the value of MONAI's ``compute_dice``).

    Args:
        pred: ``HxW`` predicted mask (bool, or anything non-zero is foreground).
        true: ``HxW`` true mask, same shape.
        region: ``HxW`` boolean mask; only pixels inside it count; ``None``: all.

    Returns:
        Dice in [0, 1]; two empty masks give 1.0.
    """
    p, t = _pair(pred, true, region)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    if total == 0:
        return 1.0
    return float(np.float32(2 * np.count_nonzero(p & t)) / np.float32(total))  # float32: see iou


def pointing_game(cam: np.ndarray, true_mask: np.ndarray, sector: np.ndarray | None = None) -> bool | None:
    """Whether the map's maximum falls inside the true mask (the pointing game, no tolerance).

    Args:
        cam: ``HxW`` map.
        true_mask: ``HxW`` boolean mask of the object.
        sector: ``HxW`` boolean mask; only look for the maximum inside it (``None``: whole image).

    Returns:
        ``True`` (hit) / ``False`` (miss; also for a constant map, which points nowhere), or ``None``
        when the true mask is empty (no answer; leave it out of hit rates).
    """
    cam, sec = map_in_region(cam, sector)
    true_mask = np.asarray(true_mask, bool)
    if true_mask.shape != cam.shape:
        raise LiverscopeError(f"mask shape {true_mask.shape} does not match the CAM's {cam.shape}")
    if not true_mask.any():
        return None
    if not sec.any():
        return False
    vals = np.where(sec, cam, -np.inf)
    if float(cam[sec].max()) - float(cam[sec].min()) <= 1e-12:
        return False
    return bool(true_mask.ravel()[int(np.argmax(vals))])


def mask_scores(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], regions: Sequence[np.ndarray] | None = None) -> dict:
    """Mean IoU and Dice over image pairs (and per image).

    Args:
        preds: ``n`` predicted ``HxW`` masks.
        trues: ``n`` true masks, each the shape of its predicted mask.
        regions: optional ``n`` per-image ``HxW`` regions (e.g. scan sectors) the scores are restricted to.

    Returns:
        ``{"n", "iou", "dice", "iou_per_image", "dice_per_image"}`` (means are NaN for ``n = 0``).
    """
    if len(preds) != len(trues):
        raise LiverscopeError(f"{len(preds)} predicted masks for {len(trues)} true masks")
    regs = regions if regions is not None else [None] * len(preds)
    ious = [iou(p, t, r) for p, t, r in zip(preds, trues, regs)]
    dices = [dice(p, t, r) for p, t, r in zip(preds, trues, regs)]
    return {
        "n": len(ious),
        "iou": float(np.mean(ious)) if ious else float("nan"),
        "dice": float(np.mean(dices)) if dices else float("nan"),
        "iou_per_image": ious,
        "dice_per_image": dices,
    }


def score_summary(scores: dict) -> dict:
    """The headline of :func:`mask_scores`: ``{"n", "iou", "dice"}`` without the per-image lists."""
    return {k: scores[k] for k in ("n", "iou", "dice")}


__all__ = ["map_in_region", "iou", "dice", "pointing_game", "mask_scores", "score_summary"]
