"""Classification metrics: pure functions, arrays in, numbers out.

scikit-learn computes every point estimate. The only metric code written here is the vectorised form
of the headline metrics used inside the bootstrap (confusion matrices, balanced accuracy, macro F1,
quadratic kappa and ROC AUC for a whole batch of bootstrap replicates at once): scikit-learn
scores one sample at a time, and calling it 1000 times per metric would make every confidence interval
cost seconds. The vectorised forms are tested against scikit-learn.

Labels are class indices ``0..K-1`` into ``class_names`` (names are accepted too); probabilities are
``(n, K)``. :func:`compute_metrics` returns a JSON-serialisable dict (Python floats, lists; ``None``
where a figure is undefined, e.g. the AUC of a class absent from the data).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from liverscope.errors import LiverscopeError
from liverscope.evaluate.stats import bootstrap_ci
from liverscope.labels import endpoint_definitions, metavir_stages

#: Headline figures that get a bootstrap confidence interval with ``compute_metrics(..., ci=True)``.
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_kappa")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """scikit-learn warns for every ill-defined figure (a class never predicted, absent from y_true);
    the outputs say so with ``None`` instead, so the warnings are noise in a metrics report."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        yield


def _num(x: Any) -> float | None:
    """A Python float, or ``None`` for NaN/inf (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _check_inputs(y_true: Any, probs: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    names = [str(c) for c in class_names]
    k = len(names)
    if k < 2:
        raise LiverscopeError(f"metrics need at least 2 classes, got {names}")
    if len(set(names)) != k:
        raise LiverscopeError(f"class names must be distinct, got {names}")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != k:
        raise LiverscopeError(f"probabilities must have shape (n, {k}) for classes {names}; got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise LiverscopeError("probabilities contain NaN or infinity")
    y = np.asarray(y_true).ravel()
    if y.dtype.kind in "USO":
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted({str(v) for v in y} - set(index))
        if unknown:
            raise LiverscopeError(f"labels {unknown} are not among the classes {names}")
        y = np.array([index[str(v)] for v in y], dtype=np.int64)
    else:
        if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
            raise LiverscopeError("labels must be class indices (integers) or class names")
        y = y.astype(np.int64)
    if y.size != p.shape[0]:
        raise LiverscopeError(f"{y.size} labels for {p.shape[0]} rows of probabilities")
    if y.size == 0:
        raise LiverscopeError("no samples to score")
    if y.min() < 0 or y.max() >= k:
        raise LiverscopeError(f"labels must be class indices in [0, {k}), got range [{y.min()}, {y.max()}]")
    return y, p


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``(K, K)`` counts: rows are true classes, columns predicted classes (every class, even absent)."""
    from sklearn.metrics import confusion_matrix as _cm

    return _cm(np.asarray(y_true), np.asarray(y_pred), labels=list(range(n_classes))).astype(np.int64)


def per_class_counts(cm: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest counts and rates of every class from a confusion matrix.

    Args:
        cm: ``(K, K)`` counts, rows true, columns predicted.

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` (int arrays) and ``{"sensitivity", "specificity", "ppv", "npv"}``
        (float arrays, NaN where the denominator is 0: e.g. the PPV of a class never predicted).
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise LiverscopeError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def quadratic_weighted_kappa(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int | None = None
) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2`` for ordered labels (scikit-learn).

    Args:
        y_true: true class positions in their natural order (e.g. stage F0 = 0 ... F4 = 4).
        y_pred: predicted class positions.
        n_classes: number of ordered classes (default: the largest index + 1); fixes the weights even
            when some classes are absent.

    Returns:
        Kappa in [-1, 1]; NaN when undefined (every case and prediction in one class).
    """
    from sklearn.metrics import cohen_kappa_score

    yt, yp = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = int(n_classes if n_classes is not None else max(yt.max(initial=0), yp.max(initial=0)) + 1)
    with _quiet():
        return float(cohen_kappa_score(yt, yp, labels=list(range(k)), weights="quadratic"))


def one_vs_rest_auc(y_true: Sequence[int], probs: np.ndarray) -> np.ndarray:
    """ROC AUC of every class against the rest (scikit-learn), NaN for a class that is absent from
    ``y_true`` or is the only class present.

    Returns:
        ``(K,)`` float array.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    out = np.full(p.shape[1], np.nan)
    for k in range(p.shape[1]):
        pos = y == k
        if 0 < pos.sum() < pos.size:
            out[k] = roc_auc_score(pos, p[:, k])
    return out


def _binary_summary(y_pos: np.ndarray, pred_pos: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    tp = int(np.sum(y_pos & pred_pos))
    fp = int(np.sum(~y_pos & pred_pos))
    fn = int(np.sum(y_pos & ~pred_pos))
    tn = int(np.sum(~y_pos & ~pred_pos))
    n_pos = int(y_pos.sum())
    auc = roc_auc_score(y_pos, score) if 0 < n_pos < y_pos.size else np.nan
    return {
        "n": int(y_pos.size),
        "n_positive": n_pos,
        "auc": _num(auc),
        "sensitivity": _num(tp / (tp + fn)) if tp + fn else None,
        "specificity": _num(tn / (tn + fp)) if tn + fp else None,
        "ppv": _num(tp / (tp + fp)) if tp + fp else None,
        "npv": _num(tn / (tn + fn)) if tn + fn else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def fibrosis_endpoints(
    y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str], endpoints: Any = None
) -> dict[str, dict] | None:
    """Binary clinical endpoints of fibrosis staging: ≥F2 (significant), ≥F3 (advanced), F4 (cirrhosis).

    The endpoint probability is the sum of the probabilities of the stages in its positive set (the
    ROC AUC uses it); the decision is the model's own: positive when the argmax stage is in the set.

    Args:
        y_true: ``(n,)`` true class indices.
        probs: ``(n, K)`` class probabilities.
        class_names: the labels (METAVIR stages, a subset is fine).
        endpoints: see :func:`liverscope.labels.endpoint_definitions` (custom endpoints for other label sets).

    Returns:
        ``{"≥F2": {"name", "positive", "n", "n_positive", "auc", "sensitivity", "specificity", "ppv",
        "npv", "tp", "fp", "fn", "tn"}, ...}``, or ``None`` when no endpoint applies.
    """
    y, p = _check_inputs(y_true, probs, class_names)
    defs = endpoint_definitions(class_names, endpoints)
    if not defs:
        return None
    pred = p.argmax(axis=1)
    out = {}
    for key, d in defs.items():
        idx = np.asarray(d["index"])
        out[key] = {
            "name": d["name"],
            "positive": d["positive"],
            **_binary_summary(np.isin(y, idx), np.isin(pred, idx), p[:, idx].sum(axis=1)),
        }
    return out


# --------------------------------------------------------------------------------------------------
# vectorised forms for the bootstrap (a leading replicate axis B)
# --------------------------------------------------------------------------------------------------


def batched_confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``(B, K, K)`` confusion matrices of ``(B, n)`` label and prediction arrays (one bincount)."""
    b = y.shape[0]
    code = (np.arange(b)[:, None] * k + y) * k + pred
    return np.bincount(code.ravel(), minlength=b * k * k).reshape(b, k, k)


def batched_balanced_accuracy(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in y_true (scikit-learn's definition), per matrix."""
    support = cm.sum(axis=-1)
    recall = _ratio(np.diagonal(cm, axis1=-2, axis2=-1), support)
    with _quiet():
        return np.nanmean(recall, axis=-1)


def batched_macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes present in y_true or y_pred (scikit-learn's default labels)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denom = 2 * tp + (cm.sum(axis=-2) - tp) + (cm.sum(axis=-1) - tp)
    f1 = _ratio(2 * tp, denom)
    with _quiet():
        return np.nanmean(f1, axis=-1)


def batched_quadratic_kappa(cm: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of each ``(K, K)`` matrix whose rows/columns are in label order."""
    cm = cm.astype(np.float64)
    k = cm.shape[-1]
    i = np.arange(k)
    w = (i[:, None] - i[None, :]) ** 2
    n = cm.sum(axis=(-2, -1))
    expected = (
        cm.sum(axis=-1)[..., :, None] * cm.sum(axis=-2)[..., None, :] / np.where(n > 0, n, 1)[..., None, None]
    )
    observed = (w * cm).sum(axis=(-2, -1))
    chance = (w * expected).sum(axis=(-2, -1))
    return 1.0 - _ratio(observed, chance)


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(B, n)`` float counts: how often each of the ``n`` cases occurs in each row of ``idx``."""
    b = idx.shape[0]
    return (
        np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n)
        .reshape(b, n)
        .astype(np.float64)
    )


def weighted_auc(y_pos: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC with case weights, for a batch of weight vectors (e.g. bootstrap counts).

    Equal to ``sklearn.metrics.roc_auc_score(y_pos, score, sample_weight=w)`` for each row ``w`` (ties
    count one half), NaN where a row weighs only one class. Written here because scikit-learn would sort
    the scores again for every replicate: here they are sorted once into blocks of equal value, and
    AUC = sum over blocks of positive weight x (negative weight in lower blocks + half the negative
    weight in the same block), a cumulative sum over the batch.

    Args:
        y_pos: ``(n,)`` booleans (positive class).
        score: ``(n,)`` scores.
        weights: ``(B, n)`` non-negative case weights.

    Returns:
        ``(B,)`` AUCs.
    """
    y_pos = np.asarray(y_pos, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(score, kind="stable")
    s = score[order]
    w = w[:, order]
    yp = y_pos[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    if starts.size == s.size:
        # no ties (the usual case with continuous probabilities): a positive's own position holds no
        # negative weight, so the inclusive cumulative sum is the negative weight strictly below it
        cneg = np.cumsum(w * ~yp, axis=1)
        wp = w[:, yp]
        u = np.einsum("bn,bn->b", wp, cneg[:, yp])
        return _ratio(u, wp.sum(axis=1) * cneg[:, -1])
    pos = np.add.reduceat(w * yp, starts, axis=1)  # ties: merge equal scores into one block
    neg = np.add.reduceat(w * ~yp, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    u = (pos * (below + 0.5 * neg)).sum(axis=1)
    return _ratio(u, pos.sum(axis=1) * neg.sum(axis=1))


def _headline_batched(
    y: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray,
    order: np.ndarray,
    with_kappa: bool,
    endpoints: list[tuple[np.ndarray, np.ndarray]],
):
    """The batched statistic for :func:`liverscope.evaluate.stats.bootstrap_ci`: called with ``(B, n)``
    resample indices, it returns one column per headline figure."""
    n, k = probs.shape
    cell = np.zeros((n, k * k))
    cell[np.arange(n), y * k + pred] = 1.0  # one-hot confusion cell of each case

    def fn(idx: np.ndarray) -> np.ndarray:
        w = resample_counts(idx, n)
        cm = (w @ cell).reshape(-1, k, k)
        cols = [
            np.trace(cm, axis1=-2, axis2=-1) / idx.shape[-1],
            batched_balanced_accuracy(cm),
            batched_macro_f1(cm),
        ]
        aucs = np.stack([weighted_auc(y == c, probs[:, c], w) for c in range(k)], axis=-1)
        with _quiet():
            cols.append(np.nanmean(aucs, axis=-1))
        if with_kappa:
            cols.append(batched_quadratic_kappa(cm[..., order[:, None], order[None, :]]))
        for y_pos, score in endpoints:
            cols.append(weighted_auc(y_pos, score, w))
        return np.stack(cols, axis=-1)

    return fn


# --------------------------------------------------------------------------------------------------
# the full set
# --------------------------------------------------------------------------------------------------


def compute_metrics(
    y_true: Sequence[int] | Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    ordered: bool | None = None,
    endpoints: Any = None,
    ci: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every classification figure the reference studies report, and the ones they should have.

    Args:
        y_true: ``(n,)`` true class indices into ``class_names`` (or class names).
        probs: ``(n, K)`` class probabilities; the prediction is their argmax.
        class_names: the K labels, in the column order of ``probs``.
        ordered: whether the labels are ordinal (adds quadratic-weighted kappa). Default: ordinal when
            the labels are METAVIR stages (then ordered by stage, whatever their column order), else
            not; ``True`` declares ``class_names`` order as the ordinal order.
        endpoints: binary endpoints, see :func:`liverscope.labels.endpoint_definitions` (default: ≥F2, ≥F3 and F4 for
            METAVIR labels).
        ci: add percentile-bootstrap 95% confidence intervals of the headline figures under ``"ci"``.
        n_boot: bootstrap replicates.
        seed: bootstrap seed.

    Returns:
        A JSON-serialisable dict: ``n``, ``class_names``, ``accuracy``, ``balanced_accuracy``,
        ``macro_/weighted_precision|recall|f1``, ``macro_specificity``, ``macro_auc`` (mean of the
        defined one-vs-rest AUCs), ``per_class`` (``{name: {support, precision, recall, f1, auc, tp, fp,
        fn, tn, sensitivity, specificity, ppv, npv}}``), ``confusion_matrix`` (counts, rows true),
        ``confusion_matrix_normalised`` (rows sum to 1; an absent class's row is zeros),
        ``quadratic_kappa`` (ordered labels), ``endpoints`` (when any apply) and ``ci`` (when asked:
        ``{figure: {"value", "ci95": [lo, hi]}}``). Undefined figures are ``None``. Macro averages
        count an undefined precision/recall as 0 and average over the classes present in ``y_true``
        or the predictions (scikit-learn's conventions); the per-class table shows ``None`` instead.
    """
    names = [str(c) for c in class_names]
    y, p = _check_inputs(y_true, probs, names)
    k = len(names)
    pred = p.argmax(axis=1)
    stages = metavir_stages(names)
    if ordered is None:
        ordered = stages is not None
    # ``order[r]`` = the class index at ordinal position r (stage order for METAVIR labels)
    order = np.argsort(stages, kind="stable") if stages is not None else np.arange(k)
    position = np.empty(k, dtype=np.int64)
    position[order] = np.arange(k)

    out: dict[str, Any] = {
        "n": int(y.size),
        "class_names": names,
        "metavir": stages is not None,
        "ordered": bool(ordered),
    }
    out.update(_class_figures(y, pred, p, names))
    if ordered:
        out["quadratic_kappa"] = _num(quadratic_weighted_kappa(position[y], position[pred], k))
        out["ordinal_order"] = [names[i] for i in order]

    defs = endpoint_definitions(names, endpoints)
    if defs:
        out["endpoints"] = fibrosis_endpoints(y, p, names, endpoints)

    if ci:
        out["ci"] = _bootstrap_headline(out, y, pred, p, order, bool(ordered), defs, n_boot, seed)
        out["ci_method"] = {
            "method": "percentile bootstrap over cases",
            "level": 0.95,
            "n_boot": int(n_boot),
            "seed": int(seed),
        }
    return out


def _class_figures(y: np.ndarray, pred: np.ndarray, p: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted precision-recall-F1, macro AUC and specificity, the
    confusion matrices and the per-class table of :func:`compute_metrics`."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

    k = len(names)
    out: dict[str, Any] = {}
    with _quiet():
        out["accuracy"] = _num(accuracy_score(y, pred))
        out["balanced_accuracy"] = _num(balanced_accuracy_score(y, pred))
        for avg in ("macro", "weighted"):
            pr, rc, f1, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
            out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = _num(pr), _num(rc), _num(f1)
        pc_p, pc_r, pc_f, support = precision_recall_fscore_support(
            y, pred, labels=list(range(k)), average=None, zero_division=np.nan
        )
        auc = one_vs_rest_auc(y, p)
        out["macro_auc"] = _num(np.nanmean(auc)) if np.isfinite(auc).any() else None
    out["macro_auc_classes"] = [names[i] for i in range(k) if np.isfinite(auc[i])]

    cm = confusion_matrix(y, pred, k)
    counts = per_class_counts(cm)
    rows = cm.sum(axis=1, keepdims=True)
    out["confusion_matrix"] = cm.tolist()
    out["confusion_matrix_normalised"] = np.where(rows > 0, cm / np.where(rows > 0, rows, 1), 0.0).tolist()
    spec = counts["specificity"]
    out["macro_specificity"] = _num(np.nanmean(spec)) if np.isfinite(spec).any() else None
    out["per_class"] = {
        name: {
            "support": int(support[i]),
            "precision": _num(pc_p[i]),
            "recall": _num(pc_r[i]),
            "f1": _num(pc_f[i]),
            "auc": _num(auc[i]),
            **{c: int(counts[c][i]) for c in ("tp", "fp", "fn", "tn")},
            **{c: _num(counts[c][i]) for c in ("sensitivity", "specificity", "ppv", "npv")},
        }
        for i, name in enumerate(names)
    }
    return out


def _bootstrap_headline(out: dict, y, pred, p, order, ordered, defs, n_boot, seed) -> dict[str, dict]:
    keys = [h for h in HEADLINE if h != "quadratic_kappa" or ordered]
    ep = [(np.isin(y, d["index"]), p[:, d["index"]].sum(axis=1)) for d in defs.values()]
    fn = _headline_batched(y, pred, p, order, ordered, ep)
    res = bootstrap_ci(fn, np.arange(y.size), n_boot=n_boot, seed=seed, alpha=0.05, batched=True)
    ci: dict[str, dict] = {}
    values = [out.get(h) for h in keys] + [out["endpoints"][e]["auc"] for e in defs]
    names = keys + [f"auc_{e}" for e in defs]
    for name, value, (lo, hi) in zip(names, values, res["ci"]):
        bounds = [_num(lo), _num(hi)] if value is not None else [None, None]
        ci[name] = {"value": value, "ci95": bounds if None not in bounds else None}
    for e in defs:
        out["endpoints"][e]["auc_ci95"] = ci[f"auc_{e}"]["ci95"]
    return ci


def metrics_by_group(
    y_true: Sequence[int] | Sequence[str],
    probs: np.ndarray,
    groups: Sequence[Any],
    class_names: Sequence[str],
    *,
    min_size: int = 10,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`compute_metrics` within each group (e.g. acquisition source), so a figure that only holds
    on one scanner cannot hide in the pooled number.

    Args:
        y_true: ``(n,)`` true class indices (or names).
        probs: ``(n, K)`` probabilities.
        groups: ``(n,)`` group of each case (``None`` counts as ``"unknown"``).
        class_names: the labels.
        min_size: groups with fewer cases are not scored (listed under ``skipped``).
        **kwargs: passed to :func:`compute_metrics` (``ci=True``, ``ordered``, ``endpoints`` ...).

    Returns:
        ``{"groups": {group: metrics}, "skipped": {group: n}, "min_size": int, "note": str}`` (groups
        sorted by name; ``note`` explains any skipped groups).
    """
    y, p = _check_inputs(y_true, probs, class_names)
    g = np.array(["unknown" if v is None or v == "" else str(v) for v in groups], dtype=object)
    if g.size != y.size:
        raise LiverscopeError(f"{g.size} group labels for {y.size} cases")
    result: dict[str, Any] = {"groups": {}, "skipped": {}, "min_size": int(min_size)}
    for name in sorted(set(g.tolist())):
        sel = g == name
        if sel.sum() < min_size:
            result["skipped"][name] = int(sel.sum())
            continue
        result["groups"][name] = compute_metrics(y[sel], p[sel], class_names, **kwargs)
    if result["skipped"]:
        listed = ", ".join(f"{k} (n={v})" for k, v in result["skipped"].items())
        result["note"] = f"groups with fewer than {min_size} cases are not scored: {listed}"
    else:
        result["note"] = ""
    return result


__all__ = [
    "HEADLINE",
    "compute_metrics",
    "metrics_by_group",
    "confusion_matrix",
    "per_class_counts",
    "quadratic_weighted_kappa",
    "one_vs_rest_auc",
    "fibrosis_endpoints",
    "batched_confusion",
    "batched_balanced_accuracy",
    "batched_macro_f1",
    "batched_quadratic_kappa",
    "weighted_auc",
    "resample_counts",
]
