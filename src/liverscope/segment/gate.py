"""The lesion gate: an outline only where the image holds a lesion.

A segmenter's raw mask (probability > 0.5) marks pixels on nearly every normal liver (issue 22: 94-100%
of them). The gate keeps the largest connected region of the mask (AUL holds one lesion per image at
most) and only when it is large enough (``min_area``: share of the segmenter's grid) and confident
enough (``min_peak``: the highest probability inside it), and — for a segmenter with an image-level head
(does this image hold a lesion at all?) — only when that head's probability reaches ``min_score``;
otherwise the image gets no outline.

The thresholds are chosen on the segmenter's *validation* images (:func:`fit_gate`, a grid search)
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
#: Smallest image-level probability (segmenters with an image-level head only). The grid starts at 0.5:
#: an image the head calls more likely empty than not is never outlined. (Searched from 0, the first
#: run let the head go unused: area and peak alone already left the 17 validation normals empty, a tie
#: the mildest gate won, and 8 of 17 test normals got an outline although the head's test AUC was 0.995.)
MIN_SCORES = (0.5, 0.6, 0.7, 0.8, 0.9)


def apply_gate(prob: np.ndarray, gate: dict | None, score: float | None = None) -> tuple[np.ndarray, bool]:
    """``(mask, suppressed)``: the gated mask of one probability map, and whether the gate removed a
    non-empty raw mask. ``gate=None`` is the raw mask (probability > 0.5); ``score`` is the image-level
    head's probability (``None``: the segmenter has no head, ``min_score`` is not applied)."""
    mask = np.asarray(prob) > 0.5
    if not gate or not mask.any():
        return mask, False
    if score is not None and float(score) < float(gate.get("min_score", 0.0)):
        return np.zeros_like(mask), True
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = labels == largest
    if stats[largest, cv2.CC_STAT_AREA] < float(gate["min_area"]) * mask.size or float(
        np.asarray(prob)[region].max()
    ) < float(gate["min_peak"]):
        return np.zeros_like(mask), True
    return region, False


def gate_score(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    gate: dict | None,
    scores: Sequence[float] | None = None,
) -> dict:
    """Mean Dice over the images with a lesion, share of lesion-free images left empty, and their mean."""
    scores = [None] * len(probs) if scores is None else list(scores)
    masks = [apply_gate(p, gate, s)[0] for p, s in zip(probs, scores)]
    lesion = [dice(m, t) for m, t in zip(masks, truths) if t.any()]
    empty = [not m.any() for m, t in zip(masks, truths) if not t.any()]
    lesion_dice = float(np.mean(lesion)) if lesion else float("nan")
    clear = float(np.mean(empty)) if empty else float("nan")
    return {"dice": lesion_dice, "empty_left_empty": clear, "score": float(np.nanmean([lesion_dice, clear]))}


def fit_gate(
    probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], scores: Sequence[float] | None = None
) -> dict | None:
    """The gate (``{"min_area", "min_peak"[, "min_score"], "fitted_on", "validation"}``) whose
    :func:`gate_score` is best on these images (the validation split), the first of equals (the mildest);
    ``min_score`` is searched only with the image-level head's ``scores``. ``None`` when no gate scores
    better than the raw masks."""
    truths = [np.asarray(t, bool) for t in truths]
    has_scores = scores is not None and all(s is not None for s in scores)
    best, best_score = None, -1.0
    for min_score in MIN_SCORES if has_scores else (None,):
        for area in MIN_AREAS:
            for peak in MIN_PEAKS:
                gate = {
                    "min_area": area,
                    "min_peak": peak,
                    **({} if min_score is None else {"min_score": min_score}),
                }
                score = gate_score(probs, truths, gate, scores if has_scores else None)["score"]
                if score > best_score + 1e-9:
                    best, best_score = gate, score
    raw = gate_score(probs, truths, None)
    if not best_score > raw["score"]:
        return None
    fitted = gate_score(probs, truths, best, scores if has_scores else None)
    return {
        **best,
        "fitted_on": f"{len(truths)} validation images",
        "validation": {"gated": fitted, "raw": raw},
    }


__all__ = ["MIN_AREAS", "MIN_PEAKS", "MIN_SCORES", "apply_gate", "gate_score", "fit_gate"]
