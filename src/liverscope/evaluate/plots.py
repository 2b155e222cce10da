"""Plots of a run's results as PNG files: confusion matrix, ROC curves, reliability diagram, training curves.

Arrays (or history rows) in, a PNG file out; the HTML report (:mod:`.report`) embeds them, and training
writes ``curves.png`` and ``confusion_matrix.png`` with them. Plots use matplotlib's object-oriented API
on an Agg canvas (no pyplot, no global backend switch), so they are safe inside the web app and in
threads; matplotlib is imported on the first plot, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from liverscope.errors import LiverscopeError
from liverscope.evaluate.stats import expected_calibration_error, reliability_curve
from liverscope.labels import endpoint_definitions
from liverscope.utils import atomic_path, read_csv_rows

_DPI = 110
_COLOURS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=_DPI, facecolor="white")
    return path


def plot_confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    normalise: bool = True,
    title: str | None = None,
) -> Path:
    """Confusion matrix as an annotated heat map (rows: true class, columns: predicted class).

    Args:
        cm: ``(K, K)`` counts.
        class_names: the K labels.
        path: output PNG.
        normalise: colour by the fraction of each true class (cells show fraction and count); else by count.
        title: figure title (default names the normalisation and n).

    Returns:
        ``path``.
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise LiverscopeError(f"confusion matrix of shape {cm.shape} does not match {k} class names")
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.where(rows > 0, cm / np.where(rows > 0, rows, 1), 0.0)
    values = frac if normalise else cm.astype(np.float64)
    side = max(3.8, 0.85 * k + 2.2)
    fig = _figure(side + 0.9, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalise else max(1.0, float(values.max()))
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class" if normalise else "images")
    small = k > 8
    for i in range(k):
        for j in range(k):
            text = f"{frac[i, j]:.2f}\n({cm[i, j]})" if normalise and not small else f"{cm[i, j]}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7 if small else 9,
                color="white" if values[i, j] > 0.55 * vmax else "#222",
            )
    ax.set_xticks(
        range(k),
        [str(c) for c in class_names],
        rotation=45 if max(len(str(c)) for c in class_names) > 4 else 0,
        ha="right" if max(len(str(c)) for c in class_names) > 4 else "center",
    )
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    n = int(cm.sum())
    acc = np.trace(cm) / n if n else float("nan")
    ax.set_title(
        title or f"Confusion matrix{' (row-normalised)' if normalise else ''}\nn = {n}, accuracy {acc:.3f}",
        fontsize=10,
    )
    return _save(fig, path)


def plot_roc_curves(
    y_true: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    endpoints: Any = None,
) -> Path:
    """One-vs-rest ROC curve of every class, and a second panel with the clinical endpoints
    (≥F2, ≥F3, F4) when the labels are METAVIR stages.

    Args:
        y_true: ``(n,)`` true class indices.
        probs: ``(n, K)`` probabilities.
        class_names: the labels.
        path: output PNG.
        endpoints: see :func:`liverscope.labels.endpoint_definitions` (default: automatic).

    Returns:
        ``path``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    names = [str(c) for c in class_names]
    defs = endpoint_definitions(names, endpoints)
    fig = _figure(10.5 if defs else 5.6, 4.9)
    axes = fig.subplots(1, 2 if defs else 1, squeeze=False)[0]

    def panel(ax, curves, title):
        ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="chance")
        for i, (label, pos, score, point) in enumerate(curves):
            if not 0 < pos.sum() < pos.size:
                continue
            fpr, tpr, _ = roc_curve(pos, score)
            auc = roc_auc_score(pos, score)
            colour = _COLOURS[i % len(_COLOURS)]
            ax.plot(fpr, tpr, lw=1.8, color=colour, label=f"{label} (AUC {auc:.3f}, n+={int(pos.sum())})")
            if point is not None:
                ax.plot(*point, marker="o", ms=6, color=colour, mec="black", mew=0.6)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_xlabel("False positive rate (1 − specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)

    with np.errstate(invalid="ignore"):
        aucs = [roc_auc_score(y == k, p[:, k]) for k in range(len(names)) if 0 < (y == k).sum() < y.size]
    macro = f" (macro AUC {np.mean(aucs):.3f})" if aucs else ""
    panel(
        axes[0], [(names[k], y == k, p[:, k], None) for k in range(len(names))], f"One class vs rest{macro}"
    )
    if defs:
        pred = p.argmax(axis=1)
        curves = []
        for key, d in defs.items():
            pos = np.isin(y, d["index"])
            pred_pos = np.isin(pred, d["index"])
            point = None
            if 0 < pos.sum() < pos.size:  # the model's own (argmax) operating point
                point = ((pred_pos & ~pos).sum() / (~pos).sum(), (pred_pos & pos).sum() / pos.sum())
            curves.append((f"{key} {d['name']}", pos, p[:, d["index"]].sum(axis=1), point))
        panel(axes[1], curves, "Clinical endpoints (dot: argmax decision)")
    return _save(fig, path)


def plot_reliability(
    probs: np.ndarray,
    y_true: Sequence[int],
    path: str | Path,
    n_bins: int = 15,
    calibrated: np.ndarray | None = None,
    labels: tuple[str, str] = ("uncalibrated", "temperature-scaled"),
) -> Path:
    """Reliability diagram (confidence against accuracy per bin) above a histogram of confidences.

    Args:
        probs: ``(n, K)`` probabilities.
        y_true: ``(n,)`` true class indices.
        path: output PNG.
        n_bins: equal-width confidence bins.
        calibrated: optional second set of probabilities of the same cases (e.g. after temperature
            scaling), drawn on the same axes.
        labels: legend names of ``probs`` and ``calibrated``.

    Returns:
        ``path``.
    """
    sets = [(labels[0] if calibrated is not None else "model", probs)]
    if calibrated is not None:
        sets.append((labels[1], calibrated))
    fig = _figure(5.4, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1.2], sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="perfect calibration")
    width = 1.0 / n_bins
    for i, (label, pr) in enumerate(sets):
        curve = reliability_curve(pr, y_true, n_bins)
        ece = expected_calibration_error(pr, y_true, n_bins)
        full = curve["count"] > 0
        colour = _COLOURS[i]
        top.plot(
            curve["confidence"][full],
            curve["accuracy"][full],
            marker="o",
            ms=4,
            lw=1.6,
            color=colour,
            label=f"{label} (ECE {ece:.3f})",
        )
        centres = curve["edges"][:-1] + width / 2
        offset = (i - (len(sets) - 1) / 2) * width / max(len(sets), 1)
        bottom.bar(
            centres + offset, curve["count"], width=width / len(sets), color=colour, alpha=0.75, label=label
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy in bin")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"Reliability diagram ({n_bins} bins, top-label confidence)", fontsize=10)
    bottom.set_xlabel("Confidence (highest class probability)")
    bottom.set_ylabel("Images")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the rows where ``key`` has a number."""
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            try:
                xs.append(float(r.get("epoch", i)))
            except (TypeError, ValueError):
                xs.append(float(i))
            ys.append(v)
    return np.asarray(xs), np.asarray(ys)


def plot_training_curves(
    history: str | Path | Sequence[Mapping[str, Any]] | Mapping[str, Any], path: str | Path
) -> Path:
    """Loss, validation accuracy and learning rate per epoch.

    Args:
        history: ``history.csv`` (or its rows as dicts: ``epoch, train_loss, val_loss, val_acc,
            val_balanced_acc, lr``), or a mapping ``{name: csv or rows}`` to overlay several runs (the
            folds of a cross-validation).
        path: output PNG.

    Returns:
        ``path``.
    """
    if isinstance(history, Mapping):
        runs = {
            str(k): (read_csv_rows(v) if isinstance(v, (str, Path)) else list(v)) for k, v in history.items()
        }
    else:
        runs = {"": read_csv_rows(history) if isinstance(history, (str, Path)) else list(history)}
    if not any(runs.values()):
        raise LiverscopeError(f"no training history rows to plot for {path}")
    has_lr = any(_column(rows, "lr")[0].size for rows in runs.values())
    fig = _figure(4.2 * (3 if has_lr else 2), 3.6)
    axes = fig.subplots(1, 3 if has_lr else 2)
    ax_loss, ax_acc = axes[0], axes[1]
    single = len(runs) == 1
    for i, (name, rows) in enumerate(runs.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        prefix = f"{name} " if name else ""
        # (axis, column, line style, label, colour of a single run's curve)
        curves = (
            (ax_loss, "train_loss", "--", "train", 0),
            (ax_loss, "val_loss", "-", "validation", 1),
            (ax_acc, "val_acc", "--", "accuracy", 2),
            (ax_acc, "val_balanced_acc", "-", "balanced accuracy", 3),
        )
        for ax, key, style, label, own in curves:
            x, v = _column(rows, key)
            if x.size:
                ax.plot(
                    x,
                    v,
                    ls=style,
                    marker="." if x.size < 30 else None,
                    color=_COLOURS[own] if single else colour,
                    label=f"{prefix}{label}",
                )
        if single:
            x, v = _column(rows, "val_loss")
            if x.size:
                best = x[int(np.argmin(v))]
                ax_loss.axvline(best, color="#555", ls=":", lw=1, label=f"lowest val. loss (epoch {best:g})")
        if has_lr:
            x, v = _column(rows, "lr")
            if x.size:
                axes[2].plot(x, v, color=colour, label=name or None)
    ax_loss.set_title("Loss", fontsize=10)
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_title("Validation accuracy", fontsize=10)
    ax_acc.set_ylim(0, 1.02)
    for ax in axes:
        ax.set_xlabel("Epoch")
        ax.grid(alpha=0.3)
    for ax, loc in ((ax_loss, "best"), (ax_acc, "lower right")):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc=loc)
    if has_lr:
        axes[2].set_title("Learning rate", fontsize=10)
        lrs = np.concatenate([_column(rows, "lr")[1] for rows in runs.values()])
        if lrs.size and lrs.min() > 0 and lrs.max() / lrs.min() > 10:  # schedules that decay to 0 stay linear
            axes[2].set_yscale("log")
    return _save(fig, path)


__all__ = ["plot_confusion_matrix", "plot_roc_curves", "plot_reliability", "plot_training_curves"]
