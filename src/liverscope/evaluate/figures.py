"""The figure files of a run directory (or of ``evaluate --out``): each written by one function here, under
its name from :mod:`liverscope.rundir`, whoever asks for it (training, cv, the scoring path, the report).
The drawing itself is :mod:`.plots` (pure: arrays in, a PNG out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from liverscope import rundir
from liverscope.evaluate.plots import (
    plot_confusion_matrix,
    plot_reliability,
    plot_roc_curves,
    plot_training_curves,
)


def write_curves(
    folder: str | Path, history: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any]
) -> Path:
    """``curves.png``: loss, validation accuracy and learning rate per epoch (a ``history.csv``, its rows,
    or ``{fold: rows}``; :func:`~liverscope.evaluate.plots.plot_training_curves`)."""
    return plot_training_curves(history, Path(folder) / rundir.CURVES_PNG)


def write_confusion(folder: str | Path, cm: np.ndarray, class_names: Sequence[str]) -> Path:
    """``confusion_matrix.png`` of the test set."""
    return plot_confusion_matrix(np.asarray(cm), class_names, Path(folder) / rundir.CONFUSION_PNG)


def write_roc(
    folder: str | Path, y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]
) -> Path:
    """``roc_curves.png`` of the test set."""
    return plot_roc_curves(y_true, probs, class_names, Path(folder) / rundir.ROC_PNG)


def write_reliability(
    folder: str | Path, probs: np.ndarray, y_true: Sequence[int], calibrated: np.ndarray | None = None
) -> Path:
    """``reliability.png``: the reliability diagram (with the temperature-scaled probabilities beside, when given)."""
    return plot_reliability(probs, y_true, Path(folder) / rundir.RELIABILITY_PNG, calibrated=calibrated)


__all__ = ["write_curves", "write_confusion", "write_roc", "write_reliability"]
