"""Statistics and calibration: paired t-test, bootstrap confidence intervals, ECE, temperature scaling.

Pure functions on NumPy arrays. SciPy does the t-test and the one-dimensional optimisation, torchmetrics
the top-label expected calibration error. The reliability curve (the bars of the calibration plot) is
written here: scikit-learn's ``calibration_curve`` is binary only and torchmetrics keeps its bins private.
The batched bootstrap is written here too (the comment above :func:`bootstrap_ci` says why not SciPy's).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from liverscope.errors import LiverscopeError
from liverscope.utils import softmax

# Replicates per chunk are chosen so one chunk holds about this many resampled elements: bounds the
# memory of a vectorised bootstrap on large test sets (1000 replicates x 100k images would be 800 MB).
_BOOT_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------------
# Paired t-test
# --------------------------------------------------------------------------------------------------


def paired_ttest(scores_a: Sequence[float], scores_b: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """Paired (dependent-samples) t-test of two runs' fold-wise scores, as in the ResNet-50 + CBAM study.

    Tests whether the mean of ``a - b`` differs from zero (two-sided); the same as
    ``scipy.stats.ttest_rel(scores_a, scores_b)``, with the confidence interval of the mean difference.

    Args:
        scores_a: one score per fold of run A (e.g. validation balanced accuracy).
        scores_b: the same folds' scores of run B, in the same order.
        alpha: 1 - confidence level of the interval.

    Returns:
        ``{"mean_diff", "ci95": [lo, hi], "t", "p", "n", "df", "sd_diff", "mean_a", "mean_b", "alpha"}``;
        ``t`` and ``p`` are NaN when every difference is identical (no variance to test against).
    """
    from scipy import stats

    a = np.asarray(scores_a, dtype=np.float64).ravel()
    b = np.asarray(scores_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise LiverscopeError(
            f"paired t-test needs one score per fold for both runs (got {a.size} and {b.size})"
        )
    if a.size < 2:
        raise LiverscopeError(f"paired t-test needs at least 2 paired scores (got {a.size}): run more folds")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise LiverscopeError(
            "paired t-test: scores contain NaN or infinity (a fold without a defined metric?)"
        )
    if not 0 < alpha < 1:
        raise LiverscopeError(f"alpha must lie in (0, 1), got {alpha}")
    d = a - b
    n = int(d.size)
    if d.std(ddof=1) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        # every fold differs by the same amount (up to rounding): there is no variance to test against;
        # scipy would return NaN, or a huge t from rounding noise, with a precision warning
        t = p = float("nan")
        lo = hi = float(d.mean())
    else:
        res = stats.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
        ci = res.confidence_interval(confidence_level=1 - alpha)
        lo, hi = float(ci.low), float(ci.high)
    return {
        "mean_diff": float(d.mean()),
        "ci95": [lo, hi],
        "t": t,
        "p": p,
        "n": n,
        "df": n - 1,
        "sd_diff": float(d.std(ddof=1)),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "alpha": float(alpha),
    }


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


# Hand-written rather than scipy.stats.bootstrap: SciPy's percentile interval turns NaN as soon as one
# replicate's statistic is undefined (an AUC on a resample without a positive case), where this one leaves
# such replicates out and counts the valid ones; the same seed also keeps the intervals of earlier runs.
def bootstrap_ci(
    fn: Callable[..., Any],
    *arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batched: bool = False,
) -> dict[str, Any]:
    """Percentile bootstrap confidence interval of a statistic (resampling cases, no stratification).

    All bootstrap indices are drawn in one vectorised call per chunk; with ``batched=True`` the statistic
    itself is computed for a whole chunk of replicates at once, which is what makes 1000 replicates of
    several metrics cost milliseconds.

    Args:
        fn: the statistic. Called as ``fn(*arrays)`` on the data; it returns a number or a 1-D vector of
            numbers (several statistics on the same resamples). With ``batched=True`` it is called with
            arrays of shape ``(B, n, ...)`` (B replicates) and must return shape ``(B,)`` or ``(B, m)``.
            NaN results (a statistic undefined on a replicate) are left out of the percentiles.
        *arrays: arrays sharing their first dimension ``n`` (the cases resampled together).
        n_boot: number of bootstrap replicates.
        seed: seed of NumPy's generator; the same seed gives the same interval.
        alpha: 1 - confidence level.
        batched: whether ``fn`` takes a leading replicate axis.

    Returns:
        ``{"value", "ci": [lo, hi], "level", "n_boot", "n_valid"}`` (for a vector statistic each field is
        a list, one entry per statistic). ``ci`` bounds are NaN when the statistic is undefined.
    """
    arrs = _checked_resampling(arrays, n_boot, alpha)
    if batched:
        value = np.asarray(fn(*[a[None] for a in arrs]), dtype=np.float64)[0]
    else:
        value = np.asarray(fn(*arrs), dtype=np.float64)
    scalar = value.ndim == 0
    value = np.atleast_1d(value)
    boot = _replicates(fn, arrs, n_boot, seed, batched)
    if boot.shape[1] != value.size:
        raise LiverscopeError(
            f"bootstrap_ci: the statistic returned {boot.shape[1]} values per replicate, {value.size} on the data"
        )
    lo = np.full(value.size, np.nan)
    hi = np.full(value.size, np.nan)
    n_valid = np.isfinite(boot).sum(axis=0)
    for j in range(value.size):
        vals = boot[:, j][np.isfinite(boot[:, j])]
        if np.isfinite(value[j]) and vals.size:
            lo[j], hi[j] = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    if scalar:
        ci = [float(lo[0]), float(hi[0])]
        return {
            "value": float(value[0]),
            "ci": ci,
            "level": 1 - alpha,
            "n_boot": int(n_boot),
            "n_valid": int(n_valid[0]),
        }
    return {
        "value": [float(v) for v in value],
        "ci": [[float(a), float(b)] for a, b in zip(lo, hi)],
        "level": 1 - alpha,
        "n_boot": int(n_boot),
        "n_valid": [int(v) for v in n_valid],
    }


def _checked_resampling(arrays: tuple, n_boot: int, alpha: float) -> list[np.ndarray]:
    """The arrays of :func:`bootstrap_ci` as NumPy arrays, or a LiverscopeError saying what is wrong."""
    if not arrays:
        raise LiverscopeError("bootstrap_ci needs at least one array to resample")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise LiverscopeError(f"bootstrap_ci: arrays differ in length ({[len(a) for a in arrs]})")
    if n == 0:
        raise LiverscopeError("bootstrap_ci: no cases to resample")
    if n_boot < 1:
        raise LiverscopeError(f"n_boot must be positive, got {n_boot}")
    if not 0 < alpha < 1:
        raise LiverscopeError(f"alpha must lie in (0, 1), got {alpha}")
    return arrs


def _replicates(
    fn: Callable[..., Any], arrs: list[np.ndarray], n_boot: int, seed: int, batched: bool
) -> np.ndarray:
    """``n_boot x m`` values of the statistic on resampled cases, the indices drawn chunk by chunk."""
    n = len(arrs[0])
    rng = np.random.default_rng(seed)
    width = sum(int(np.prod(a.shape[1:])) for a in arrs)
    chunk = max(1, min(n_boot, _BOOT_CHUNK_ELEMENTS // max(n * width, 1)))
    reps, done = [], 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        if batched:
            out = np.asarray(fn(*[a[idx] for a in arrs]), dtype=np.float64).reshape(b, -1)
        else:
            out = np.array(
                [np.atleast_1d(np.asarray(fn(*[a[i] for a in arrs]), dtype=np.float64)) for i in idx]
            )
        reps.append(out.reshape(b, -1))
        done += b
    return np.concatenate(reps, axis=0)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)`` (temperature scaling; argmax is unchanged)."""
    return softmax(logits, temperature)


def _check_probs_labels(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != y.size:
        raise LiverscopeError(
            f"expected probabilities of shape (n, classes) and n labels; got {p.shape} and {y.size}"
        )
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise LiverscopeError(
            f"labels must be class indices in [0, {p.shape[1]}), got range [{y.min()}, {y.max()}]"
        )
    return p, y


def reliability_curve(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability curve: confidence (max probability) against accuracy in equal-width bins.

    Bins are ``(lo, hi]`` on [0, 1] as in Guo et al. (2017); a confidence of exactly 0 falls in the first.

    Args:
        probs: ``(n, K)`` class probabilities.
        y_true: ``(n,)`` true class indices.
        n_bins: number of equal-width confidence bins.

    Returns:
        ``{"edges": (n_bins+1,), "confidence": (n_bins,), "accuracy": (n_bins,), "count": (n_bins,)}``;
        mean confidence and accuracy are NaN in empty bins.
    """
    p, y = _check_probs_labels(probs, y_true)
    if n_bins < 1:
        raise LiverscopeError(f"n_bins must be positive, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "count": count}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (top label): ``sum_b (n_b / n) |accuracy_b - confidence_b|``, by
    torchmetrics' ``multiclass_calibration_error`` (L1 norm).

    Guo, Pleiss, Sun & Weinberger (2017), *On Calibration of Modern Neural Networks*, ICML.

    torchmetrics bins confidences in float32 into ``[lo, hi)`` bins with a confidence of exactly 1 in
    a bin of its own, where :func:`reliability_curve` bins in float64 into ``(lo, hi]``: the two agree
    to within 1e-6 unless confidences sit exactly on a bin edge (tests/test_library_equivalence.py).

    Args:
        probs: ``(n, K)`` class probabilities.
        y_true: ``(n,)`` true class indices.
        n_bins: number of equal-width confidence bins (15 as in the paper).

    Returns:
        ECE in [0, 1] (NaN for no samples).
    """
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    p, y = _check_probs_labels(probs, y_true)
    if n_bins < 1:
        raise LiverscopeError(f"n_bins must be positive, got {n_bins}")
    if y.size == 0:
        return float("nan")
    # clipped: torchmetrics takes any value outside [0, 1] for a logit and would apply a softmax
    p = torch.from_numpy(np.clip(p, 0.0, 1.0))
    return float(
        multiclass_calibration_error(
            p, torch.from_numpy(y), num_classes=p.shape[1], n_bins=int(n_bins), norm="l1"
        )
    )


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / T)`` against the true classes."""
    from scipy.special import log_softmax

    z, y = _check_probs_labels(logits, y_true)
    logp = log_softmax(z / temperature, axis=1)
    return float(-logp[np.arange(y.size), y].mean())


#: Search range of the temperature. A fit that ends at (within :data:`TEMPERATURE_EDGE_TOL` of) either
#: end is not a calibration but a symptom: perfectly separated validation logits drive T towards 0 (the
#: NLL keeps falling as the logits are sharpened), near-random ones drive it up.
TEMPERATURE_BOUNDS = (0.1, 10.0)
#: How close (relative, on T) a fitted temperature may come to a bound before it counts as at the edge.
TEMPERATURE_EDGE_TOL = 0.01


def fit_temperature_checked(
    logits: np.ndarray,
    y_true: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    edge_tol: float = TEMPERATURE_EDGE_TOL,
) -> dict[str, Any]:
    """Temperature scaling with a check: the T > 0 that minimises the NLL of ``softmax(logits / T)``,
    applied only when the fit is an interior minimum of the search range.

    Guo, Pleiss, Sun & Weinberger (2017), *On Calibration of Modern Neural Networks*, ICML. One scalar
    fitted on held-out logits; it leaves the argmax (and so accuracy) unchanged and shrinks the
    over-confidence typical of deep networks (T > 1) or the under-confidence of heavily regularised
    ones (T < 1).

    The NLL is minimised over ``log T`` (so T stays positive) with SciPy's bounded Brent method: the
    objective is one-dimensional and unimodal, so no gradient machinery is needed. When every held-out
    image is classified correctly the NLL decreases all the way to T = 0 and the optimiser stops at the
    lower bound: such a "temperature" would multiply the logits by 1/T and make the model sure of
    itself on anything; it is reported (``at_edge``, ``warning``) and not applied.

    Args:
        logits: ``(n, K)`` held-out logits (before softmax).
        y_true: ``(n,)`` true class indices.
        bounds: search interval for T.
        edge_tol: a fit within this relative distance of a bound counts as at the edge.

    Returns:
        ``{"fitted": T found (None with nothing to fit), "temperature": T to apply (1.0 unless applied),
        "applied": bool, "at_edge": bool, "warning": text or None, "bounds": [lo, hi], "n": images,
        "nll_uncalibrated", "nll_fitted"}``.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 < lo < 1 < hi:
        raise LiverscopeError(f"temperature bounds must satisfy 0 < low < 1 < high, got {bounds}")
    z, y = _check_probs_labels(logits, y_true)
    out: dict[str, Any] = {
        "fitted": None,
        "temperature": 1.0,
        "applied": False,
        "at_edge": False,
        "warning": None,
        "bounds": [lo, hi],
        "n": int(y.size),
        "nll_uncalibrated": None,
        "nll_fitted": None,
    }
    if y.size == 0 or z.shape[1] < 2:
        return out
    if not np.all(np.isfinite(z)):
        raise LiverscopeError("fit_temperature: logits contain NaN or infinity")
    rows = np.arange(y.size)

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-5})
    t = float(np.exp(res.x))
    out.update(fitted=t, nll_uncalibrated=nll(0.0), nll_fitted=nll(float(res.x)))
    if t <= lo * (1 + edge_tol) or t >= hi / (1 + edge_tol):
        side = "lower" if t <= lo * (1 + edge_tol) else "upper"
        why = (
            "every held-out image is classified with a margin, so the NLL keeps falling as the logits are sharpened"
            if side == "lower"
            else "the held-out logits carry almost no information about the class"
        )
        out.update(
            at_edge=True,
            warning=(
                f"temperature fit stopped at the {side} edge of its range (T = {t:.3g}, range {lo:g}-{hi:g}) on {y.size} images: "
                f"{why}; no temperature applied (probabilities stay uncalibrated). More (or harder) validation images give a real fit."
            ),
        )
    elif out["nll_fitted"] < out["nll_uncalibrated"]:
        # Brent may stop in a bound's neighbourhood without testing T = 1: never apply worse than no scaling
        out.update(temperature=t, applied=True)
    return out


def fit_temperature(
    logits: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature to apply: :func:`fit_temperature_checked`'s ``temperature`` (1.0 when there is
    nothing to fit on, when no scaling beats T = 1, or when the fit stopped at the edge of ``bounds``)."""
    return float(fit_temperature_checked(logits, y_true, bounds)["temperature"])


def ensemble_spread_ratio(member_logits: Sequence[np.ndarray]) -> float:
    """How much averaging shrinks the members' logits: the mean spread of the members' mean logits
    over the members' own mean spread, on images none of them trained on (the spread of an image's
    logits: their norm once centred, so adding a constant to every class changes nothing). Uses no label.

    Members that disagree average to flatter logits, so a temperature fitted on single members'
    held-out logits (the out-of-fold fit of a cv run) over-softens their mean; multiplying it by this
    ratio undoes the flattening. It is a partial correction: the mean is also less noisy than a member,
    so the NLL-optimal factor can be smaller still (on liverscope's fibrosis hold-outs the ratio was 0.92
    and the optimum about 0.7; the ensemble's ECE went 0.105 → 0.079 and 0.111 → 0.078: docs/benchmarks.md).

    Args:
        member_logits: ``(n, K)`` logits of each member on the same images.

    Returns:
        The ratio in [0, 1] (the norm of a mean is at most the mean of the norms); 1.0 when all members
        agree, with fewer than two members or no image.
    """
    stack = np.asarray([np.asarray(z, dtype=np.float64) for z in member_logits])
    if stack.ndim != 3 or stack.shape[0] < 2 or stack.shape[1] == 0:
        return 1.0

    def spread(z: np.ndarray) -> float:
        return float(np.linalg.norm(z - z.mean(axis=-1, keepdims=True), axis=-1).mean())

    own = float(np.mean([spread(z) for z in stack]))
    return spread(stack.mean(axis=0)) / own if own > 0 else 1.0


def ensemble_temperature(
    fit: dict[str, Any],
    member_logits: Sequence[np.ndarray] | None,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> dict[str, Any]:
    """The temperature of a logit-averaging ensemble from a fit on its members' held-out logits
    (:func:`fit_temperature_checked`): the fitted T times :func:`ensemble_spread_ratio` on
    ``member_logits`` (the members' logits on images none of them trained on), kept within ``bounds``.
    The fit is left as it is when it was not applied, when there are no such logits, or when the ratio
    is not a positive number (members whose logits cancel, or NaN): then a ``warning`` says so.

    Returns:
        A copy of ``fit`` with ``temperature`` replaced and ``ensemble_spread_ratio`` added when it was used.
    """
    out = dict(fit)
    if not fit.get("applied") or not member_logits:
        return out
    ratio = ensemble_spread_ratio(member_logits)
    if not (np.isfinite(ratio) and ratio > 0):
        out["warning"] = (
            f"ensemble spread ratio {ratio} is not a positive number; the members' temperature is kept"
        )
        return out
    out["ensemble_spread_ratio"] = ratio
    out["temperature"] = float(np.clip(fit["fitted"] * ratio, *bounds))
    return out


__all__ = [
    "paired_ttest",
    "bootstrap_ci",
    "apply_temperature",
    "ensemble_spread_ratio",
    "ensemble_temperature",
    "reliability_curve",
    "expected_calibration_error",
    "negative_log_likelihood",
    "fit_temperature",
    "fit_temperature_checked",
    "TEMPERATURE_BOUNDS",
]
