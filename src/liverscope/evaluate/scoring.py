"""The one scoring path: predictions of a labelled set → predictions CSV, metrics with confidence
intervals, calibration error, per-source tables and the confusion-matrix plot.

``fit`` (the test split), the cv ensemble (the hold-out test set and the out-of-fold predictions) and
``evaluate`` on external data all score through :func:`score_predictions`, so the three report the
same figures in the same shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope import rundir
from liverscope.data.datasets import Sample
from liverscope.evaluate.figures import write_confusion
from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
from liverscope.evaluate.stats import expected_calibration_error
from liverscope.utils import softmax


def score_predictions(
    out_dir: str | Path,
    csv_name: str,
    samples: Sequence[Sample],
    y: np.ndarray,
    logits: np.ndarray,
    class_names: Sequence[str],
    temperature: float = 1.0,
    *,
    probs: np.ndarray | None = None,
    confusion_png: bool = True,
    ood: tuple[np.ndarray, float] | None = None,
    precision: str = "fp32",
) -> dict:
    """Score one labelled set and write its outputs into ``out_dir``.

    Args:
        out_dir: the run directory (or ``eval/NAME``).
        csv_name: predictions file to write (e.g. :data:`liverscope.rundir.PREDICTIONS_TEST`).
        samples: the images, in the order of ``y`` and ``logits`` (their sources give the per-source table).
        y: ``(n,)`` true class indices.
        logits: ``(n, K)`` logits.
        class_names: the labels.
        temperature: the calibration temperature applied to the probabilities.
        probs: probabilities to score instead of ``softmax(logits / temperature)`` (out-of-fold
            predictions, where each fold model has its own temperature).
        confusion_png: also plot the confusion matrix (:func:`~liverscope.evaluate.figures.write_confusion`).
        ood: ``(scores, threshold)`` of the out-of-distribution detector: written as the ``ood_score`` and
            ``ood`` columns of the predictions CSV.
        precision: what the model computed the logits in (``fp32``: training's own scoring of its splits;
            ``evaluate`` says what it used): the ``precision`` column of the CSV and ``metrics["precision"]``.

    Returns:
        ``{"metrics": compute_metrics(..., ci=True) plus "ece", "ece_uncalibrated" and "precision",
        "by_source": per-source metrics or None when the set has one source}``.
    """
    out_dir = Path(out_dir)
    y = np.asarray(y)
    names = list(class_names)
    p = softmax(logits, temperature) if probs is None else np.asarray(probs)
    rundir.write_predictions(
        out_dir / csv_name, samples, logits, names, temperature, ood=ood, precision=precision
    )
    metrics = compute_metrics(y, p, names, ci=True)
    metrics["ece_uncalibrated"] = float(expected_calibration_error(softmax(logits), y))
    metrics["ece"] = float(expected_calibration_error(p, y))
    metrics["precision"] = precision
    sources = [s.source or "unknown" for s in samples]
    by_source = metrics_by_group(y, p, sources, names) if len(set(sources)) > 1 else None
    if confusion_png:
        write_confusion(out_dir, metrics["confusion_matrix"], names)
    return {"metrics": metrics, "by_source": by_source}


__all__ = ["score_predictions"]
