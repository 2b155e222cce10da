"""Metrics agree with scikit-learn on random inputs and with hand-computed values on small cases."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from liverscope.errors import LiverscopeError
from liverscope.evaluate import metrics as M
from liverscope.utils import softmax


def _random_case(seed: int, n: int | None = None, k: int | None = None, absent: bool = False):
    rng = np.random.default_rng(seed)
    k = k or int(rng.integers(2, 7))
    n = n or int(rng.integers(20, 300))
    y = rng.integers(0, k, n)
    if absent:
        y[y == k - 1] = 0  # one class never occurs in y_true
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 3)
    logits[np.arange(n), y] += rng.uniform(0, 2)
    return y, softmax(logits), [f"class{i}" for i in range(k)]


@pytest.mark.parametrize("seed", range(12))
def test_compute_metrics_agrees_with_sklearn(seed):
    y, p, names = _random_case(seed, absent=seed % 4 == 3)
    k = len(names)
    pred = p.argmax(1)
    m = M.compute_metrics(y, p, names, ordered=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about ill-defined figures of absent classes
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
        for avg in ("macro", "weighted"):
            pr, rc, f1, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
            assert m[f"{avg}_precision"] == pytest.approx(pr)
            assert m[f"{avg}_recall"] == pytest.approx(rc)
            assert m[f"{avg}_f1"] == pytest.approx(f1)
        assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
        assert m["quadratic_kappa"] == pytest.approx(
            skm.cohen_kappa_score(y, pred, labels=range(k), weights="quadratic")
        )
    pr, rc, f1, sup = skm.precision_recall_fscore_support(
        y, pred, labels=range(k), average=None, zero_division=0
    )
    for i, name in enumerate(names):
        c = m["per_class"][name]
        assert c["support"] == sup[i]
        assert c["recall"] == (pytest.approx(rc[i]) if sup[i] else None)
        assert c["precision"] == (pytest.approx(pr[i]) if (pred == i).any() else None)
        if 0 < sup[i] < len(y):
            assert c["auc"] == pytest.approx(skm.roc_auc_score(y == i, p[:, i]))
        else:
            assert c["auc"] is None
    if len(np.unique(y)) == k:
        assert m["macro_auc"] == pytest.approx(
            skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=range(k))
            if k > 2
            else skm.roc_auc_score(y, p[:, 1])
        )
    else:
        defined = [i for i in range(k) if 0 < (y == i).sum() < y.size]
        if defined:
            assert m["macro_auc"] == pytest.approx(
                np.mean([skm.roc_auc_score(y == i, p[:, i]) for i in defined])
            )
        else:  # a single class in y_true: no AUC at all
            assert m["macro_auc"] is None
        assert m["per_class"][names[-1]]["support"] == 0
    norm = np.asarray(m["confusion_matrix_normalised"])
    sup_rows = np.asarray(m["confusion_matrix"]).sum(1) > 0
    assert np.allclose(norm[sup_rows].sum(1), 1.0)
    json.dumps(m, allow_nan=False)  # JSON-serialisable, no NaN


def test_hand_computed_confusion_matrix():
    # rows true, columns predicted; n = 20
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 7]])
    y = np.repeat(np.repeat(np.arange(3), 3), cm.ravel())
    pred = np.repeat(np.tile(np.arange(3), 3), cm.ravel())
    probs = np.full((y.size, 3), 0.2)
    probs[np.arange(y.size), pred] = 0.6
    m = M.compute_metrics(y, probs, ["low", "mid", "high"], ordered=True)
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(15 / 20)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 6 + 7 / 8) / 3)
    expected = {  # (sensitivity, specificity, PPV, NPV, TP, FP, FN, TN) worked out by hand
        "low": (5 / 6, 12 / 14, 5 / 7, 12 / 13, 5, 2, 1, 12),
        "mid": (3 / 6, 12 / 14, 3 / 5, 12 / 15, 3, 2, 3, 12),
        "high": (7 / 8, 11 / 12, 7 / 8, 11 / 12, 7, 1, 1, 11),
    }
    for name, (sens, spec, ppv, npv, tp, fp, fn, tn) in expected.items():
        c = m["per_class"][name]
        assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (tp, fp, fn, tn)
        assert c["sensitivity"] == pytest.approx(sens)
        assert c["specificity"] == pytest.approx(spec)
        assert c["ppv"] == pytest.approx(ppv)
        assert c["npv"] == pytest.approx(npv)
    # quadratic kappa: sum w*O = 5, sum w*E = 28.8 (w = (i-j)^2, E = row x col / n)
    assert m["quadratic_kappa"] == pytest.approx(1 - 5 / 28.8)
    assert M.quadratic_weighted_kappa(y, pred, 3) == pytest.approx(1 - 5 / 28.8)
    counts = M.per_class_counts(cm)
    assert counts["tp"].tolist() == [5, 3, 7] and counts["tn"].tolist() == [12, 12, 11]
    assert "endpoints" not in m  # not METAVIR labels


def test_unordered_labels_have_no_kappa_unless_declared():
    y, p, names = _random_case(1, k=3)
    assert "quadratic_kappa" not in M.compute_metrics(y, p, ["normal", "fatty", "tumour"])
    assert "quadratic_kappa" in M.compute_metrics(y, p, ["normal", "fatty", "tumour"], ordered=True)


def test_metavir_kappa_follows_stage_order_not_column_order():
    y, p, _ = _random_case(5, n=200, k=3)
    names = ["F2", "F0", "F1"]  # columns out of stage order
    stage = np.array([2, 0, 1])
    m = M.compute_metrics(y, p, names)
    assert m["ordered"] and m["metavir"] and m["ordinal_order"] == ["F0", "F1", "F2"]
    expected = skm.cohen_kappa_score(stage[y], stage[p.argmax(1)], weights="quadratic", labels=[0, 1, 2])
    assert m["quadratic_kappa"] == pytest.approx(expected)


def test_fibrosis_endpoints_hand_case():
    names = ["F0", "F1", "F2", "F3", "F4"]
    y = np.array([0, 1, 2, 3, 4])
    probs = np.array(
        [
            [0.70, 0.10, 0.10, 0.05, 0.05],  # F0 -> F0
            [0.20, 0.30, 0.35, 0.10, 0.05],  # F1 -> F2 (false positive for >=F2)
            [0.10, 0.50, 0.20, 0.10, 0.10],  # F2 -> F1 (false negative for >=F2)
            [0.00, 0.10, 0.20, 0.60, 0.10],  # F3 -> F3
            [0.00, 0.00, 0.10, 0.30, 0.60],  # F4 -> F4
        ]
    )
    ep = M.compute_metrics(y, probs, names)["endpoints"]
    assert list(ep) == ["≥F2", "≥F3", "F4"]
    f2 = ep["≥F2"]
    assert f2["positive"] == ["F2", "F3", "F4"] and f2["n"] == 5 and f2["n_positive"] == 3
    assert (f2["tp"], f2["fp"], f2["fn"], f2["tn"]) == (2, 1, 1, 1)
    assert f2["sensitivity"] == pytest.approx(2 / 3) and f2["specificity"] == pytest.approx(1 / 2)
    # endpoint scores: positives {0.4, 0.9, 1.0}, negatives {0.2, 0.5}: 5 of 6 pairs ordered
    assert f2["auc"] == pytest.approx(5 / 6)
    f3 = ep["≥F3"]
    assert (f3["tp"], f3["fp"], f3["fn"], f3["tn"]) == (2, 0, 0, 3) and f3["auc"] == pytest.approx(1.0)
    f4 = ep["F4"]
    assert (f4["n_positive"], f4["sensitivity"], f4["specificity"]) == (1, 1.0, 1.0)


def test_endpoint_detection():
    y, p, _ = _random_case(2, k=3, n=60)
    ep = M.compute_metrics(y, p, ["f0", "f1", "f2"])["endpoints"]  # lower case, a subset of stages
    assert list(ep) == ["≥F2"]  # >=F3 and F4 have no positive stage among the labels
    assert M.fibrosis_endpoints(y, p, ["normal", "fatty", "tumour"]) is None
    assert "endpoints" not in M.compute_metrics(y, p, ["F0", "F1", "F2"], endpoints=False)
    with pytest.raises(LiverscopeError):
        M.compute_metrics(y, p, ["normal", "fatty", "tumour"], endpoints=True)
    custom = M.compute_metrics(
        y, p, ["normal", "fatty", "tumour"], endpoints={"abnormal": ["fatty", "tumour"]}
    )["endpoints"]
    pos = y > 0
    assert custom["abnormal"]["auc"] == pytest.approx(skm.roc_auc_score(pos, p[:, 1:].sum(1)))
    assert M.metavir_stages(["F0", "F0"]) is None and M.metavir_stages(["F0", "F5"]) is None


@pytest.mark.parametrize("seed", range(4))
def test_weighted_auc_matches_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = 80
    y = rng.random(n) < 0.4
    score = rng.random(n) if seed % 2 else np.round(rng.random(n), 1)  # odd seeds: ties
    idx = rng.integers(0, n, (6, n))
    w = M.resample_counts(idx, n)
    assert np.array_equal(w.sum(1), np.full(6, n))
    got = M.weighted_auc(y, score, w)
    for b in range(6):
        assert got[b] == pytest.approx(skm.roc_auc_score(y[idx[b]], score[idx[b]]))
        assert got[b] == pytest.approx(skm.roc_auc_score(y, score, sample_weight=w[b]))
    assert np.isnan(M.weighted_auc(np.zeros(n, bool), score, w)).all()


@pytest.mark.parametrize("seed", range(4))
def test_batched_confusion_metrics_match_sklearn(seed):
    y, p, names = _random_case(seed + 20, absent=seed == 3)
    k = len(names)
    pred = p.argmax(1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, (5, y.size))
    cm = M.batched_confusion(y[idx], pred[idx], k)
    bal, f1, kap = M.batched_balanced_accuracy(cm), M.batched_macro_f1(cm), M.batched_quadratic_kappa(cm)
    for b in range(5):
        yt, yp = y[idx[b]], pred[idx[b]]
        assert cm[b].tolist() == skm.confusion_matrix(yt, yp, labels=range(k)).tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert bal[b] == pytest.approx(skm.balanced_accuracy_score(yt, yp))
            assert f1[b] == pytest.approx(skm.f1_score(yt, yp, average="macro", zero_division=0))
            assert kap[b] == pytest.approx(
                skm.cohen_kappa_score(yt, yp, labels=range(k), weights="quadratic")
            )


def test_bootstrap_ci_in_compute_metrics():
    y, p, _ = _random_case(7, n=240, k=5)
    names = ["F0", "F1", "F2", "F3", "F4"]
    m = M.compute_metrics(y, p, names, ci=True, n_boot=300, seed=3)
    expected = {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_auc",
        "quadratic_kappa",
        "auc_≥F2",
        "auc_≥F3",
        "auc_F4",
    }
    assert set(m["ci"]) == expected
    for key, entry in m["ci"].items():
        lo, hi = entry["ci95"]
        assert lo < entry["value"] < hi, key
        assert hi - lo < 0.3
    assert m["ci"]["accuracy"]["value"] == m["accuracy"]
    assert m["endpoints"]["≥F2"]["auc_ci95"] == m["ci"]["auc_≥F2"]["ci95"]
    again = M.compute_metrics(y, p, names, ci=True, n_boot=300, seed=3)
    assert again["ci"] == m["ci"]  # same seed, same interval
    other = M.compute_metrics(y, p, names, ci=True, n_boot=300, seed=4)
    assert other["ci"] != m["ci"]
    json.dumps(m, allow_nan=False)


def test_ci_of_undefined_metric_is_none():
    y = np.zeros(30, dtype=int)  # one class only: no AUC can be computed
    p = softmax(np.random.default_rng(0).normal(size=(30, 2)))
    m = M.compute_metrics(y, p, ["a", "b"], ci=True, n_boot=50)
    assert m["macro_auc"] is None and m["ci"]["macro_auc"] == {"value": None, "ci95": None}
    assert m["ci"]["accuracy"]["ci95"] is not None


def test_metrics_by_group_scores_each_group_and_skips_small_ones():
    y, p, names = _random_case(3, n=200, k=3)
    groups = np.array(["A"] * 120 + ["B"] * 75 + ["C"] * 5)
    res = M.metrics_by_group(y, p, groups, names, min_size=10)
    assert list(res["groups"]) == ["A", "B"]
    assert res["skipped"] == {"C": 5} and "C (n=5)" in res["note"]
    sel = groups == "B"
    assert res["groups"]["B"]["n"] == 75
    assert res["groups"]["B"]["accuracy"] == pytest.approx(skm.accuracy_score(y[sel], p[sel].argmax(1)))
    with_none = M.metrics_by_group(y, p, [None] * 200, names)
    assert list(with_none["groups"]) == ["unknown"]


def test_string_labels_and_bad_input():
    y, p, names = _random_case(4, k=3)
    as_names = [names[i] for i in y]
    assert M.compute_metrics(as_names, p, names)["accuracy"] == M.compute_metrics(y, p, names)["accuracy"]
    with pytest.raises(LiverscopeError, match="not among"):
        M.compute_metrics(["zzz"] * len(y), p, names)
    with pytest.raises(LiverscopeError, match="shape"):
        M.compute_metrics(y, p[:, :2], names)
    with pytest.raises(LiverscopeError, match="labels"):
        M.compute_metrics(y[:-1], p, names)
    with pytest.raises(LiverscopeError, match="indices"):
        M.compute_metrics(np.full(len(y), 7), p, names)
    with pytest.raises(LiverscopeError, match="no samples"):
        M.compute_metrics([], np.zeros((0, 3)), names)
    bad = p.copy()
    bad[0, 0] = np.nan
    with pytest.raises(LiverscopeError, match="NaN"):
        M.compute_metrics(y, bad, names)
