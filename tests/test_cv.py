"""Cross-validation on phantoms: k fold models, out-of-fold predictions, the ensemble, a report."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import quick_config
from liverscope.utils import read_json


def test_ensemble_is_mean_of_logits():
    from liverscope.training.cv import ensemble_logits
    from liverscope.utils import softmax

    rng = np.random.default_rng(0)
    folds = [rng.normal(size=(7, 4)) for _ in range(5)]
    ens = ensemble_logits(folds)
    assert np.allclose(ens, sum(folds) / 5)
    # averaging logits then softmax differs from averaging probabilities
    assert not np.allclose(softmax(ens), np.mean([softmax(f) for f in folds], axis=0))


@pytest.fixture(scope="module")
def cv_run(phantom_dir, tmp_path_factory):
    from liverscope.training.cv import cross_validate

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
    from liverscope.training.cv import cross_validate

    before = (cv_run / "folds" / "fold1" / "model.safetensors").stat().st_mtime_ns
    cross_validate(read_config(cv_run), k=3, test_frac=0.2)
    assert (cv_run / "folds" / "fold1" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_evaluate_on_new_data_with_ensemble(cv_run, phantom_dir):
    from liverscope.training.external import evaluate_on_data

    out = evaluate_on_data(cv_run, phantom_dir, name="phantoms", device="cpu")
    m = read_json(out / "metrics.json")
    assert m["test"]["n"] == 120 and m["test"]["accuracy"] > 0.4
    assert (out / "report.html").exists()


@pytest.mark.slow
def test_cv_ensemble_temperature_is_fitted_on_out_of_fold_logits(cv_run):
    from liverscope.evaluate.stats import ensemble_temperature, fit_temperature_checked
    from liverscope.rundir import read_predictions
    from liverscope.utils import softmax

    meta = read_json(cv_run / "model.json")
    names = meta["labels"]
    oof = read_predictions(cv_run / "oof_predictions.csv", names)
    fit = fit_temperature_checked(oof.logits, oof.y)
    assert meta["temperature_fit"]["fitted"] == pytest.approx(fit["fitted"], rel=1e-3)
    assert meta["temperature_fit"]["at_edge"] == fit["at_edge"]
    fold_test = [
        read_predictions(f / "predictions_test.csv", names).logits
        for f in sorted((cv_run / "folds").iterdir())
    ]
    ensemble = ensemble_temperature(fit, fold_test)  # the mean of the folds is flatter (rule: test_stats.py)
    assert meta["temperature"] == pytest.approx(ensemble["temperature"], rel=1e-3)
    m = read_json(cv_run / "metrics.json")
    for key in ("ensemble", "oof"):  # ECE before and after temperature scaling, for both sets
        assert 0 <= m[key]["ece"] <= 1 and 0 <= m[key]["ece_uncalibrated"] <= 1
    test = read_predictions(
        cv_run / "predictions_test.csv", names
    )  # the ensemble's probabilities use that temperature
    assert np.allclose(test.probs, softmax(test.logits, meta["temperature"]), atol=1e-5)


@pytest.mark.slow
def test_evaluate_with_an_ensemble_reports_the_majority_ood_flag(cv_run, phantom_dir):
    from liverscope.training.external import evaluate_on_data

    out = evaluate_on_data(cv_run, phantom_dir, name="phantoms-ood", device="cpu")
    m = read_json(out / "metrics.json")
    ood = m["ood"]
    assert (
        ood["n"] == 120
        and len(ood["member_thresholds"]) == 3
        and ood["threshold"] == 0.0
        and "majority" in ood["ensemble"]
    )
    assert ood["share"] <= 0.3  # the kind of images the fold models were trained on
    with open(out / "predictions_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["ood"] == "true" for r in rows) == ood["flagged"]


# --------------------------------------------------------------------------------------------------
# cluster use: --prepare, --fold I into one shared run directory, --aggregate (docs/scaling.md)
# --------------------------------------------------------------------------------------------------


def _copy_of(cv_run, tmp_path, drop=()):
    """A copy of the cv run under tmp_path/cv (its recipe pointing there), without the files in ``drop``."""
    import shutil

    from liverscope.rundir import read_config, write_config

    copy = tmp_path / "cv"
    shutil.copytree(cv_run, copy)
    cfg = read_config(copy)
    cfg.out_dir, cfg.name = str(tmp_path), "cv"
    write_config(copy, cfg)
    for rel in drop:
        p = copy / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return copy, cfg


def test_prepare_audits_and_splits_once_and_trains_nothing(phantom_dir, tmp_path):
    from typer.testing import CliRunner

    from liverscope.rundir import read_config, read_split
    from liverscope.ui.cli import app

    args = [
        "cv",
        str(phantom_dir),
        "--k",
        "3",
        "--name",
        "prep",
        "--out-dir",
        str(tmp_path),
        "--recipe",
        "cpu-quick",
        "--image-size",
        "32",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--prepare",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "prep"
    _, outer, folds = read_split(run / "split.csv")
    assert sorted(set(folds[outer == "dev"])) == [0, 1, 2] and (run / "audit.json").exists()
    assert read_config(run).data.image_size == 32 and not (run / "folds").exists()
    res = CliRunner().invoke(app, ["cv", "--recipe", str(run / "config.yaml"), "--fold", "5"])
    assert res.exit_code == 2 and "folds 0..2" in res.output
    res = CliRunner().invoke(app, ["cv", "--recipe", str(run / "config.yaml"), "--prepare", "--fold", "1"])
    assert res.exit_code == 2 and "exclude each other" in res.output


@pytest.mark.slow
def test_a_fold_task_reads_the_shared_split_and_the_last_fold_aggregates(cv_run, tmp_path, monkeypatch):
    """`cv --fold 2` into a run whose other folds are trained: no audit (the split is read), the fold
    trains on the split's fold 2, and as the last fold it aggregates the run."""
    import liverscope.training.datamodule as train
    from liverscope.rundir import read_split
    from liverscope.training.cv import cross_validate

    copy, cfg = _copy_of(
        cv_run, tmp_path, drop=["folds/fold2", "metrics.json", "oof_predictions.csv", "cv_folds.csv"]
    )

    def no_audit(samples):
        raise AssertionError("a fold process audited the data again")

    monkeypatch.setattr(train, "audit_dataset", no_audit)
    cross_validate(cfg, folds=[2])
    fold_split = read_split(copy / "folds" / "fold2" / "split.csv")
    original = read_split(cv_run / "folds" / "fold2" / "split.csv")
    assert [str(s.path) for s in fold_split[0]] == [str(s.path) for s in original[0]] and list(
        fold_split[1]
    ) == list(original[1])
    m = read_json(copy / "metrics.json")
    assert m["k"] == 3 and m["oof"]["n"] == read_json(cv_run / "metrics.json")["oof"]["n"]
    assert (copy / "folds" / "fold2" / "model.safetensors").exists() and (copy / "report.html").exists()


@pytest.mark.slow
def test_aggregate_rebuilds_the_ensemble_from_the_run_directory(cv_run, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    copy, _ = _copy_of(
        cv_run, tmp_path, drop=["metrics.json", "oof_predictions.csv", "cv_folds.csv", "predictions_test.csv"]
    )
    res = CliRunner().invoke(app, ["cv", "--recipe", str(copy / "config.yaml"), "--aggregate"])
    assert res.exit_code == 0, res.output
    assert "out-of-fold (3 folds)" in res.output
    before, after = read_json(cv_run / "metrics.json"), read_json(copy / "metrics.json")
    assert after["oof"]["balanced_accuracy"] == pytest.approx(before["oof"]["balanced_accuracy"])
    assert after["ensemble"]["accuracy"] == pytest.approx(before["ensemble"]["accuracy"])
    import shutil

    shutil.rmtree(copy / "folds" / "fold1")
    res = CliRunner().invoke(app, ["cv", "--recipe", str(copy / "config.yaml"), "--aggregate"])
    assert res.exit_code == 1 and "folds [1] are not trained yet" in res.output


@pytest.mark.slow
def test_cv_folds_choose_nothing_on_their_oof_images_and_the_ensemble_sits_beside_the_oof_figures(cv_run):
    """Issue 23: the folds keep their last epoch (train.select auto), the out-of-fold probabilities take
    temperatures fitted on the other folds, and the ensemble on the hold-out is reported beside the OOF figures."""
    from liverscope.evaluate.stats import expected_calibration_error
    from liverscope.rundir import read_predictions
    from liverscope.training.cv import cross_fitted_temperatures
    from liverscope.utils import softmax

    m = read_json(cv_run / "metrics.json")
    for i in range(3):
        meta = read_json(cv_run / "folds" / f"fold{i}" / "model.json")
        assert (
            meta["select"] == "last" and meta["best_epoch"] == 5
        )  # the sixth epoch of six, chosen by nothing
    assert m["oof_protocol"]["honest"] and m["oof_protocol"]["temperature"] == "cross-fitted"
    names = m["class_names"]
    folds = [read_predictions(cv_run / "folds" / f"fold{i}" / "predictions_val.csv", names) for i in range(3)]
    temps = cross_fitted_temperatures([f.logits for f in folds], [f.y for f in folds])
    assert m["oof_protocol"]["fold_temperatures"] == pytest.approx(temps)
    oof_probs = np.concatenate([softmax(f.logits, t) for f, t in zip(folds, temps)])
    assert m["oof"]["ece"] == pytest.approx(
        expected_calibration_error(oof_probs, np.concatenate([f.y for f in folds])), abs=1e-9
    )
    gap = m["ensemble_vs_oof"]["overall"]["balanced_accuracy"]
    assert (
        gap["oof"] == m["oof"]["balanced_accuracy"] and gap["ensemble"] == m["ensemble"]["balanced_accuracy"]
    )
    assert gap["gap"] == pytest.approx(gap["ensemble"] - gap["oof"])
    page = (cv_run / "report.html").read_text()
    assert "Out of fold and the fold ensemble" in page and "chose nothing" in page
