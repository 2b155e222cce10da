"""The lesion gate: an outline only where the image holds a lesion.

A segmenter's raw mask (probability > 0.5) marks pixels on nearly every normal liver (issue 22: 94-100%
of them). The gate keeps the largest connected region of the mask (AUL holds one lesion per image at
most) and only when it is large enough (``min_area``: share of the segmenter's grid) and confident
enough (``min_peak``: the highest probability inside it); otherwise the image gets no outline.

The two thresholds are chosen on the segmenter's *validation* images (:func:`fit_gate`, a grid search)
to maximise the mean of two figures that cannot flatter each other: the Dice over the images with a
lesion and the share of images without one left empty. Hand-written (scikit-image's and MONAI's
``KeepLargestConnectedComponent`` keep a component but do not gate on its size and confidence); the
connected components are OpenCV's.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from liverscope.evaluate.masks import dice

#: Grid of :func:`fit_gate`: smallest region (share of the grid) and smallest peak probability.
MIN_AREAS = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016)
MIN_PEAKS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def apply_gate(prob: np.ndarray, gate: dict | None) -> tuple[np.ndarray, bool]:
    """``(mask, suppressed)``: the gated mask of one probability map, and whether the gate removed a
    non-empty raw mask. ``gate=None`` is the raw mask (probability > 0.5)."""
    mask = np.asarray(prob) > 0.5
    if not gate or not mask.any():
        return mask, False
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = labels == largest
    if stats[largest, cv2.CC_STAT_AREA] < float(gate["min_area"]) * mask.size or float(np.asarray(prob)[region].max()) < float(gate["min_peak"]):
        return np.zeros_like(mask), True
    return region, False


def gate_score(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], gate: dict | None) -> dict:
    """Mean Dice over the images with a lesion, share of lesion-free images left empty, and their mean."""
    masks = [apply_gate(p, gate)[0] for p in probs]
    lesion = [dice(m, t) for m, t in zip(masks, truths) if t.any()]
    empty = [not m.any() for m, t in zip(masks, truths) if not t.any()]
    lesion_dice = float(np.mean(lesion)) if lesion else float("nan")
    clear = float(np.mean(empty)) if empty else float("nan")
    return {"dice": lesion_dice, "empty_left_empty": clear, "score": float(np.nanmean([lesion_dice, clear]))}


def fit_gate(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict | None:
    """The gate (``{"min_area", "min_peak", "fitted_on", "validation"}``) whose :func:`gate_score` is best
    on these images (the validation split), the first of equals (the mildest); ``None`` when no gate
    scores better than the raw masks."""
    truths = [np.asarray(t, bool) for t in truths]
    best, best_score = None, -1.0
    for area in MIN_AREAS:
        for peak in MIN_PEAKS:
            gate = {"min_area": area, "min_peak": peak}
            score = gate_score(probs, truths, gate)["score"]
            if score > best_score + 1e-9:
                best, best_score = gate, score
    raw = gate_score(probs, truths, None)
    if not best_score > raw["score"]:
        return None
    return {**best, "fitted_on": f"{len(truths)} validation images", "validation": {"gated": gate_score(probs, truths, best), "raw": raw}}


__all__ = ["MIN_AREAS", "MIN_PEAKS", "apply_gate", "gate_score", "fit_gate"]
