"""Out-of-distribution scores: is an image unlike the images a model was trained on?

Pure functions on NumPy arrays (pooled features and logits in, numbers out), like the metrics beside
them. Every score is oriented the same way: **higher = more unlike the training data**; an image is
flagged when its score is above a threshold fitted on the run's own validation images
(:func:`fit_threshold`, a split-conformal quantile), so at least 95% of in-distribution images pass.

Two scores are implemented and both stay computable; :data:`DEFAULT_METHOD` is the one a run ships
(chosen by measurement, see its comment and ``benchmarks/ood.py``):

* ``mahalanobis``: Lee, Lee, Lee & Shin (2018), *A Simple Unified Framework for Detecting
  Out-of-Distribution Samples and Adversarial Attacks*, NeurIPS — the smallest Mahalanobis distance of
  the pooled last feature map to a class mean, under one covariance shared by the classes (fitted on
  the training split; shrunk with Ledoit-Wolf because the feature dimension is close to or above the
  number of training images).
* ``energy``: Liu, Wang, Owens & Li (2020), *Energy-based Out-of-distribution Detection*, NeurIPS —
  ``E(x) = -T logsumexp(logits / T)``; in-distribution images have lower energy. Needs no statistics.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from liverscope.errors import LiverscopeError

METHODS = ("mahalanobis", "energy")
#: The method a run ships, chosen by measurement (benchmarks/ood.py; docs/benchmarks.md, "Calibration and
#: out-of-distribution flag"): AUROC of a run's own held-out images against other images, Mahalanobis vs
#: energy — phantom demo model: real fibrosis 1.000 vs 0.394, real lesions 1.000 vs 0.472, photographs
#: 1.000 vs 0.000; real fibrosis model (EfficientNet-Lite0, cv fold 0): lesions set 0.704 vs 0.640,
#: photographs 0.967 vs 0.915. The energy score can fail outright: the phantom model is *more* confident
#: on photographs than on its own images (lower energy), so it would flag none of them.
DEFAULT_METHOD = "mahalanobis"
#: Conformal level of the threshold (:func:`fit_threshold`): at least this share of images exchangeable
#: with the validation images pass. 0.975 rather than 0.95 because the validation split also chose the
#: checkpoint, so its images sit closer to the class means than unseen ones (measured, docs/benchmarks.md,
#: "The out-of-distribution flag on familiar images"): on the demo over 3 seeds the 0.95 conformal
#: threshold flagged 10.6%, 8.5% and 10.4% of the test split, 0.975 flags 10.6%, 4.3% and 8.3%.
DEFAULT_QUANTILE = 0.975


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise LiverscopeError(f"{what}: expected an (n, d) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise LiverscopeError(f"{what}: contains NaN or infinity")
    return a


def fit_class_gaussian(
    features: np.ndarray, y: np.ndarray, n_classes: int | None = None
) -> dict[str, np.ndarray]:
    """Class means and one shared, shrunk precision matrix of pooled features (Lee et al., 2018).

    The features are centred on their class means and their common covariance is estimated with
    scikit-learn's :class:`~sklearn.covariance.LedoitWolf` (``assume_centered``), which stays
    invertible when the feature dimension exceeds the number of images.

    Args:
        features: ``(n, d)`` pooled features of the training images (no augmentation).
        y: ``(n,)`` class indices.
        n_classes: number of classes (default ``y.max() + 1``); a class without images gets no mean.

    Returns:
        ``{"means": (k, d) means of the classes present, "classes": (k,) their indices,
        "precision": (d, d)}`` (float64).
    """
    from sklearn.covariance import LedoitWolf

    f = _as_2d(features, "fit_class_gaussian features")
    y = np.asarray(y).astype(np.int64).ravel()
    if y.size != f.shape[0]:
        raise LiverscopeError(f"fit_class_gaussian: {f.shape[0]} feature rows but {y.size} labels")
    if f.shape[0] < 2:
        raise LiverscopeError(f"fit_class_gaussian: needs at least 2 training images, got {f.shape[0]}")
    k = int(n_classes if n_classes is not None else y.max() + 1)
    classes = np.array([c for c in range(k) if np.any(y == c)], dtype=np.int64)
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, y)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return {"means": means, "classes": classes, "precision": np.asarray(lw.precision_, dtype=np.float64)}


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Smallest squared Mahalanobis distance to a class mean (Lee et al., 2018): higher = more unusual.

    Args:
        features: ``(n, d)`` pooled features.
        means: ``(k, d)`` class means (see :func:`fit_class_gaussian`).
        precision: ``(d, d)`` shared inverse covariance.

    Returns:
        ``(n,)`` scores ``min_c (f - mu_c)^T P (f - mu_c)``.
    """
    f = _as_2d(features, "mahalanobis_score features")
    mu = _as_2d(means, "mahalanobis_score means")
    p = np.asarray(precision, dtype=np.float64)
    if mu.shape[1] != f.shape[1] or p.shape != (f.shape[1], f.shape[1]):
        raise LiverscopeError(
            f"mahalanobis_score: features of dimension {f.shape[1]} do not match means {mu.shape} / precision {p.shape}"
        )
    dists = np.empty((f.shape[0], mu.shape[0]))
    for j, m in enumerate(mu):
        d = f - m
        dists[:, j] = np.einsum("nd,de,ne->n", d, p, d, optimize=True)
    return dists.min(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy ``E(x) = -T logsumexp(logits / T)`` (Liu et al., 2020): higher = more unusual.

    Args:
        logits: ``(n, K)`` logits.
        temperature: the energy's temperature (1 in the paper; not the calibration temperature).

    Returns:
        ``(n,)`` energies.
    """
    from scipy.special import logsumexp

    if not temperature > 0:
        raise LiverscopeError(f"energy temperature must be positive, got {temperature}")
    z = _as_2d(logits, "energy_score logits")
    return -temperature * logsumexp(z / temperature, axis=1)


def ood_scores(
    method: str, logits: np.ndarray, features: np.ndarray | None, stats: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The score of ``method`` for a batch (``mahalanobis`` needs ``features`` and ``stats``).

    Args:
        method: one of :data:`METHODS`.
        logits: ``(n, K)`` logits.
        features: ``(n, d)`` pooled features, or ``None`` for ``energy``.
        stats: ``{"means", "precision"}`` from :func:`fit_class_gaussian` (``mahalanobis``).
    """
    if method == "energy":
        return energy_score(logits)
    if method == "mahalanobis":
        if features is None or stats is None:
            raise LiverscopeError(
                "the mahalanobis score needs pooled features and the run's class means and precision"
            )
        return mahalanobis_score(features, stats["means"], stats["precision"])
    raise LiverscopeError(f"unknown OOD method '{method}' (choose from {', '.join(METHODS)})")


def fit_threshold(val_scores: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The split-conformal threshold of the run's own validation scores: a new image like them passes
    with probability at least ``quantile``.

    A plain ``quantile`` of few scores falls below the population's on average (with 45 validation
    images the 95th percentile flagged 10-17% of the demo's test images). The conformal quantile
    (Vovk et al. 2005; Angelopoulos & Bates 2021, *A Gentle Introduction to Conformal Prediction*)
    takes the ``ceil((n + 1) * quantile)``-th smallest of the ``n`` scores, so that an exchangeable new
    score exceeds it with probability at most ``1 - quantile``; with ``n < quantile / (1 - quantile)``
    that rank does not exist and the largest score is used (a new image is then flagged with probability
    ``1 / (n + 1)``, more than promised).

    Args:
        val_scores: ``(n,)`` scores of the validation images.
        quantile: share of in-distribution images meant to pass (default :data:`DEFAULT_QUANTILE`).
    """
    s = np.sort(np.asarray(val_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise LiverscopeError("fit_threshold: no validation scores (the run has no validation images)")
    if not 0 < quantile < 1:
        raise LiverscopeError(f"quantile must lie in (0, 1), got {quantile}")
    rank = int(np.ceil((s.size + 1) * quantile))  # 1-based rank of the conformal quantile
    return float(s[min(rank, s.size) - 1])


def flag_summary(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """``{"n", "flagged", "share", "threshold"}``: how many images score above ``threshold``."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    flagged = int((s > threshold).sum())
    return {
        "n": int(s.size),
        "flagged": flagged,
        "share": flagged / s.size if s.size else float("nan"),
        "threshold": float(threshold),
    }


def ood_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution images (positives) from in-distribution ones by the score:
    1.0 perfect, 0.5 chance. Uses :func:`sklearn.metrics.roc_auc_score`.

    Args:
        in_scores: scores of in-distribution images (e.g. the run's own test images).
        out_scores: scores of images from elsewhere.
    """
    from sklearn.metrics import roc_auc_score

    a = np.asarray(in_scores, dtype=np.float64).ravel()
    b = np.asarray(out_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise LiverscopeError(
            f"ood_auroc needs images on both sides (got {a.size} in-distribution, {b.size} out)"
        )
    return float(roc_auc_score(np.r_[np.zeros(a.size), np.ones(b.size)], np.r_[a, b]))


def ensemble_margin(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """A fold ensemble's score: the median over members of ``score - threshold`` (each member's score
    relative to its own threshold). Flag where it is above 0 — with an odd number of members, exactly
    where the majority of members flag the image.

    Args:
        scores: ``(m, n)`` scores of ``m`` members on ``n`` images.
        thresholds: ``(m,)`` the members' thresholds.

    Returns:
        ``(n,)`` margins.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1, 1)
    if s.ndim != 2 or t.shape[0] != s.shape[0]:
        raise LiverscopeError(f"ensemble_margin: scores {s.shape} and thresholds {t.shape[0]} do not match")
    return np.median(s - t, axis=0)


__all__ = [
    "METHODS",
    "DEFAULT_METHOD",
    "DEFAULT_QUANTILE",
    "fit_class_gaussian",
    "mahalanobis_score",
    "energy_score",
    "ood_scores",
    "fit_threshold",
    "flag_summary",
    "ood_auroc",
    "ensemble_margin",
]
