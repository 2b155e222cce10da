"""Mask metrics: pure functions, arrays in, numbers out (MONAI's ``compute_iou`` style).

Definitions (tests pin them down):

* :func:`iou` / :func:`dice`: the values of MONAI's ``compute_iou`` / ``compute_dice``
  (``include_background=True, ignore_empty=False``), computed here with NumPy: two empty masks score
  1.0 (perfect agreement that nothing is there), an empty and a non-empty mask score 0.0;
* :func:`pointing_game` (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016):
  the first maximum (raster order) of a map, inside the region when one is given, is a hit when it
  lies in the true mask; a constant map (:func:`is_flat`) points nowhere (a miss); an empty true mask
  has no answer (``None``, left out of hit rates);
* :func:`mask_scores`: mean IoU and Dice over image pairs, and the per-image figures;
* :func:`expert_mask_summary`: what a clinic asks of a lesion segmenter (or of pseudo-masks) against
  expert masks — Dice/IoU over the images that *have* a lesion, the detection rate (at least one
  predicted pixel inside the lesion), the false-positive rate on images with no lesion (any predicted
  pixel), each per class and per lesion-size quartile, and the pointing game of a map when one is given;
* trivial baselines that use no expert mask of the image: :func:`centred_disc` (a disc of a given area
  at the scan sector's centroid) and :func:`sector_centre` (the pointing game's "look at the middle").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from liverscope.errors import LiverscopeError

#: A map whose range over its region is at most this share of its largest magnitude is constant there
#: (:func:`is_flat`): float32 rounding is no pattern. Resizing a 1x1 feature map leaves ripples of a few
#: ulps (1e-7 relative) whose place differs between CPUs' SIMD code; a real CAM spans far more than 1e-5.
FLAT_RANGE = 1e-5


def is_flat(lo: float, hi: float) -> bool:
    """Whether a map whose values run from ``lo`` to ``hi`` is constant up to float rounding (:data:`FLAT_RANGE`, scale-free)."""
    return float(hi) - float(lo) <= FLAT_RANGE * max(abs(float(lo)), abs(float(hi)))


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
    if is_flat(cam[sec].min(), cam[sec].max()):
        return False
    return bool(true_mask.ravel()[int(np.argmax(vals))])


def mask_scores(
    preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], regions: Sequence[np.ndarray] | None = None
) -> dict:
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


def detected(pred: np.ndarray, true: np.ndarray) -> bool | None:
    """Whether at least one predicted pixel lies inside the true lesion; ``None`` when there is no lesion."""
    p, t = _pair(pred, true, None)
    if not t.any():
        return None
    return bool((p & t).any())


def size_quartiles(areas: Sequence[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Quartile (1..4) of each non-zero area among the non-zero areas; 0 for an empty mask.

    Args:
        areas: one area per image (pixels, or share of the sector); 0 = no lesion.

    Returns:
        ``(quartile per image (int), [(lowest, highest) area of quartile 1..4])``; ties at an edge go to
        the lower quartile (NumPy's linear quantiles as edges).
    """
    a = np.asarray(areas, float)
    q = np.zeros(len(a), int)
    nz = a > 0
    if not nz.any():
        return q, []
    edges = np.quantile(a[nz], [0.25, 0.5, 0.75])
    q[nz] = 1 + np.searchsorted(edges, a[nz], side="left")
    ranges = []
    for k in range(1, 5):
        sel = a[q == k]
        ranges.append((float(sel.min()), float(sel.max())) if len(sel) else (float("nan"), float("nan")))
    return q, ranges


def _group_figures(dices: list[float], ious: list[float], hits: list, fps: list) -> dict:
    out: dict = {"n": len(dices) + len(fps)}
    if dices:
        out.update(
            n_lesion=len(dices),
            dice=float(np.mean(dices)),
            iou=float(np.mean(ious)),
            detection_rate=float(np.mean([bool(h) for h in hits])),
        )
    if fps:
        out.update(n_empty=len(fps), false_positive_rate=float(np.mean(fps)))
    return out


def expert_mask_summary(
    preds: Sequence[np.ndarray],
    trues: Sequence[np.ndarray],
    classes: Sequence[str] | None = None,
    regions: Sequence[np.ndarray] | None = None,
    cams: Sequence[np.ndarray] | None = None,
    min_pixels: int = 1,
) -> dict:
    """Predicted lesion masks against expert masks: overall, per class, per lesion-size quartile.

    Images whose expert mask is empty (normal livers) are not averaged into Dice (every empty
    prediction would score 1): they give the false-positive rate instead (``min_pixels`` or more
    predicted pixels = a false alarm). Images with a lesion give Dice, IoU and the detection rate.

    Args:
        preds: predicted boolean ``HxW`` masks.
        trues: expert masks, same shapes.
        classes: class name per image (``by_class``); ``None``: no per-class table.
        regions: per-image region (e.g. scan sector) the scores are restricted to; also the region
            the lesion size is measured against (share of the region) and the pointing game searches.
        cams: per-image maps for the pointing game (over the images with a lesion).
        min_pixels: predicted pixels that make a false alarm on an image without a lesion.

    Returns:
        ``{"overall": {...}, "by_class": {name: {...}}, "by_size_quartile": {"Q1".."Q4": {..., "area_share": [lo, hi]}},
        "pointing_game", "pointing_n"}`` where each ``{...}`` holds ``n`` and, as they apply,
        ``n_lesion, dice, iou, detection_rate`` and ``n_empty, false_positive_rate``.
    """
    n = len(preds)
    if len(trues) != n or any(x is not None and len(x) != n for x in (classes, regions, cams)):
        raise LiverscopeError(
            f"expert_mask_summary: {n} predictions, {len(trues)} expert masks"
            + "".join(
                f", {len(x)} {name}"
                for name, x in (("classes", classes), ("regions", regions), ("maps", cams))
                if x is not None
            )
        )
    regs = list(regions) if regions is not None else [None] * n
    per = []
    for p, t, r in zip(preds, trues, regs):
        pp_, tt = _pair(p, t, r)
        if tt.any():
            per.append(
                (
                    "lesion",
                    dice(pp_, tt),
                    iou(pp_, tt),
                    detected(pp_, tt),
                    tt.sum() / max(1, (r if r is not None else np.ones_like(tt)).sum()),
                )
            )
        else:
            per.append(("empty", None, None, None, bool(np.count_nonzero(pp_) >= min_pixels)))

    def figures(idx) -> dict:
        les = [per[i] for i in idx if per[i][0] == "lesion"]
        emp = [per[i] for i in idx if per[i][0] == "empty"]
        return _group_figures(
            [x[1] for x in les], [x[2] for x in les], [x[3] for x in les], [x[4] for x in emp]
        )

    out: dict = {"overall": figures(range(n))}
    if classes is not None:
        out["by_class"] = {c: figures([i for i in range(n) if classes[i] == c]) for c in sorted(set(classes))}
    areas = [x[4] if x[0] == "lesion" else 0.0 for x in per]
    quart, ranges = size_quartiles(areas)
    out["by_size_quartile"] = {
        f"Q{k}": {**figures(np.flatnonzero(quart == k)), "area_share": list(ranges[k - 1])}
        for k in range(1, 5)
        if ranges
    }
    if cams is not None:
        hits = [pointing_game(c, t, r) for c, t, r in zip(cams, trues, regs)]
        valid = [h for h in hits if h is not None]
        out["pointing_game"] = float(np.mean(valid)) if valid else float("nan")
        out["pointing_n"] = len(valid)
    return out


def centred_disc(sector: np.ndarray, area: float) -> np.ndarray:
    """A disc of ``area`` pixels at the scan sector's centroid, clipped to the sector (a baseline with no model).

    ``area`` is usually the median expert lesion area of *other* images (no mask of this image is used).
    """
    sector = np.asarray(sector, bool)
    if (
        not sector.any() or area <= 0
    ):  # (a zero radius would still keep the centroid's pixel when it falls on the grid)
        return np.zeros(sector.shape, bool)
    ys, xs = np.nonzero(sector)
    cy, cx = ys.mean(), xs.mean()
    r2 = max(float(area), 0.0) / np.pi
    yy, xx = np.mgrid[0 : sector.shape[0], 0 : sector.shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r2) & sector


def sector_centre(sector: np.ndarray) -> np.ndarray:
    """A map that peaks at the scan sector's centroid (falls off with distance): the pointing game's trivial baseline."""
    sector = np.asarray(sector, bool)
    if not sector.any():
        return np.zeros(sector.shape, np.float32)
    ys, xs = np.nonzero(sector)
    yy, xx = np.mgrid[0 : sector.shape[0], 0 : sector.shape[1]]
    return (-((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2)).astype(np.float32)


__all__ = [
    "FLAT_RANGE",
    "is_flat",
    "map_in_region",
    "iou",
    "dice",
    "pointing_game",
    "mask_scores",
    "score_summary",
    "detected",
    "size_quartiles",
    "expert_mask_summary",
    "centred_disc",
    "sector_centre",
]
