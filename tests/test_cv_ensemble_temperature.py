"""A cv run's ensemble temperature (issue 23): the out-of-fold fit times how much averaging flattens the
fold models' logits on the hold-out, written to model.json and used for the hold-out's probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from liverscope import rundir
from liverscope.config import RunConfig
from liverscope.data.datasets import Sample
from liverscope.data.preprocess import Preprocessing
from liverscope.evaluate.stats import ensemble_spread_ratio, fit_temperature_checked
from liverscope.training.cv import aggregate_cv
from liverscope.utils import read_json, softmax

NAMES = ["F0", "F1", "F2"]


def _cv_run(tmp_path, with_test: bool):
    """Two folds of over-confident, disagreeing logits (scaled by 3), with or without a hold-out."""
    run = tmp_path / "cv"
    run.mkdir()
    rundir.write_config(run, RunConfig(name="cv", out_dir=str(tmp_path)))
    rng = np.random.default_rng(0)
    dev = [Sample(tmp_path / f"d{i}.png", NAMES[i % 3]) for i in range(90)]
    test = [Sample(tmp_path / f"t{i}.png", NAMES[i % 3]) for i in range(30)] if with_test else []
    rundir.write_split(
        run / rundir.SPLIT,
        dev + test,
        ["dev"] * 90 + ["test"] * len(test),
        folds=[i % 2 for i in range(120)][: 90 + len(test)],
    )
    members = []
    for f in range(2):
        fd = rundir.fold_dir(run, f)
        fd.mkdir(parents=True)
        part = [s for i, s in enumerate(dev) if i % 2 == f]
        for samples, file in ((part, rundir.PREDICTIONS_VAL), (test, rundir.PREDICTIONS_TEST)):
            if samples:
                y = np.array([NAMES.index(s.label) for s in samples])
                logits = 3 * (rng.normal(size=(len(samples), 3)) + 1.5 * np.eye(3)[y])
                rundir.write_predictions(fd / file, samples, logits, NAMES)
                members += [logits] if file == rundir.PREDICTIONS_TEST else []
        rundir.write_model_meta(
            fd, {"architecture": {"name": "resnet10t", "num_classes": 3}, "labels": NAMES}
        )
    aggregate_cv(run, NAMES, 2, Preprocessing())
    return run, members


def test_the_ensemble_temperature_is_the_fold_fit_times_the_spread_ratio(tmp_path):
    run, members = _cv_run(tmp_path, with_test=True)
    oof = rundir.read_predictions(run / rundir.OOF_PREDICTIONS, NAMES)
    fit = fit_temperature_checked(oof.logits, oof.y)
    assert fit["applied"] and fit["fitted"] > 1.5  # over-confident folds: a real fit to scale
    ratio = ensemble_spread_ratio(members)
    assert 0.5 < ratio < 0.95
    meta = read_json(run / rundir.MODEL_META)
    assert meta["temperature"] == pytest.approx(fit["fitted"] * ratio, rel=1e-4)
    assert meta["temperature_fit"]["ensemble_spread_ratio"] == pytest.approx(ratio)
    test = rundir.read_predictions(run / rundir.PREDICTIONS_TEST, NAMES)
    assert np.allclose(test.probs, softmax(np.mean(members, axis=0), meta["temperature"]), atol=1e-5)


def test_without_a_hold_out_the_ensemble_keeps_the_fold_fit(tmp_path):
    run, _ = _cv_run(tmp_path, with_test=False)
    meta = read_json(run / rundir.MODEL_META)
    assert meta["temperature"] == pytest.approx(meta["temperature_fit"]["fitted"], rel=1e-6)
    assert "ensemble_spread_ratio" not in meta["temperature_fit"]
