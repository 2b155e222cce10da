"""Cross-validation on phantoms: k fold models, out-of-fold predictions, the ensemble, a report."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from liverscope.utils import read_json

from conftest import quick_config


def test_ensemble_is_mean_of_logits():
    from liverscope.cv import ensemble_logits
    from liverscope.utils import softmax

    rng = np.random.default_rng(0)
    folds = [rng.normal(size=(7, 4)) for _ in range(5)]
    ens = ensemble_logits(folds)
    assert np.allclose(ens, sum(folds) / 5)
    # averaging logits then softmax differs from averaging probabilities
    assert not np.allclose(softmax(ens), np.mean([softmax(f) for f in folds], axis=0))


@pytest.fixture(scope="module")
def cv_run(phantom_dir, tmp_path_factory):
    from liverscope.cv import cross_validate

    out = tmp_path_factory.mktemp("cv")
    cfg = quick_config(phantom_dir, out, "cv", **{"train.epochs": 6})
    return cross_validate(cfg, k=3, test_frac=0.2)


@pytest.mark.slow
def test_cv_outputs(cv_run):
    for i in range(3):
        fold = cv_run / "folds" / f"fold{i}"
        assert (fold / "model.safetensors").exists() and (fold / "predictions_val.csv").exists()
    with open(cv_run / "split.csv") as fh:
        rows = list(csv.DictReader(fh))
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    assert dev and test and {int(r["fold"]) for r in dev} == {0, 1, 2}
    # groups never straddle folds or the hold-out
    where = {}
    for r in rows:
        where.setdefault(r["group"], set()).add((r["split"], r["fold"]))
    assert all(len(v) == 1 for v in where.values())
    with open(cv_run / "oof_predictions.csv") as fh:
        oof = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in oof) == sorted(r["path"] for r in dev)  # every dev image exactly once
    m = read_json(cv_run / "metrics.json")
    assert m["k"] == 3 and len(m["folds"]) == 3
    assert m["oof"]["n"] == len(dev) and m["ensemble"]["n"] == len(test)
    assert (cv_run / "cv_folds.csv").exists() and (cv_run / "report.html").exists()
    assert read_json(cv_run / "model.json")["ensemble"] == ["folds/fold0", "folds/fold1", "folds/fold2"]


@pytest.mark.slow
def test_cv_ensemble_predictions_are_mean_fold_logits(cv_run):
    from liverscope.rundir import read_predictions

    names = read_json(cv_run / "model.json")["labels"]
    pred = read_predictions(cv_run / "predictions_test.csv", names)
    paths, ens = pred.paths, pred.logits
    fold_logits = []
    for i in range(3):
        fold = read_predictions(cv_run / "folds" / f"fold{i}" / "predictions_test.csv", names)
        p, lg = fold.paths, fold.logits
        assert p == paths
        fold_logits.append(lg)
    assert np.allclose(ens, np.mean(fold_logits, axis=0), atol=1e-5)


@pytest.mark.slow
def test_cv_resumes_and_keeps_finished_folds(cv_run):
    from liverscope.rundir import read_config
    from liverscope.cv import cross_validate

    before = (cv_run / "folds" / "fold1" / "model.safetensors").stat().st_mtime_ns
    cross_validate(read_config(cv_run), k=3, test_frac=0.2)
    assert (cv_run / "folds" / "fold1" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_evaluate_on_new_data_with_ensemble(cv_run, phantom_dir):
    from liverscope.external import evaluate_on_data

    out = evaluate_on_data(cv_run, phantom_dir, name="phantoms", device="cpu")
    m = read_json(out / "metrics.json")
    assert m["test"]["n"] == 120 and m["test"]["accuracy"] > 0.4
    assert (out / "report.html").exists()


@pytest.mark.slow
def test_cv_ensemble_temperature_is_fitted_on_out_of_fold_logits(cv_run):
    from liverscope.evaluate.stats import fit_temperature_checked
    from liverscope.rundir import read_predictions
    from liverscope.utils import softmax

    meta = read_json(cv_run / "model.json")
    names = meta["labels"]
    oof = read_predictions(cv_run / "oof_predictions.csv", names)
    fit = fit_temperature_checked(oof.logits, oof.y)
    assert meta["temperature_fit"]["fitted"] == pytest.approx(fit["fitted"], rel=1e-3)
    assert meta["temperature_fit"]["at_edge"] == fit["at_edge"] and meta["temperature"] == pytest.approx(fit["temperature"], rel=1e-3)
    m = read_json(cv_run / "metrics.json")
    for key in ("ensemble", "oof"):  # ECE before and after temperature scaling, for both sets
        assert 0 <= m[key]["ece"] <= 1 and 0 <= m[key]["ece_uncalibrated"] <= 1
    test = read_predictions(cv_run / "predictions_test.csv", names)  # the ensemble's probabilities use that temperature
    assert np.allclose(test.probs, softmax(test.logits, meta["temperature"]), atol=1e-5)


@pytest.mark.slow
def test_evaluate_with_an_ensemble_reports_the_majority_ood_flag(cv_run, phantom_dir):
    from liverscope.external import evaluate_on_data

    out = evaluate_on_data(cv_run, phantom_dir, name="phantoms-ood", device="cpu")
    m = read_json(out / "metrics.json")
    ood = m["ood"]
    assert ood["n"] == 120 and len(ood["member_thresholds"]) == 3 and ood["threshold"] == 0.0 and "majority" in ood["ensemble"]
    assert ood["share"] <= 0.3  # the kind of images the fold models were trained on
    with open(out / "predictions_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["ood"] == "true" for r in rows) == ood["flagged"]
