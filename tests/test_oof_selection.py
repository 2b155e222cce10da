"""Out of fold means out of fold (issue 23): ``train.select``, the cv folds' default, cross-fitted
temperatures, and the fold ensemble on the hold-out beside the out-of-fold figures."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import quick_config
from liverscope.errors import UsageError
from liverscope.utils import read_json


def test_select_is_validated_before_any_work():
    from liverscope.config import CHOICES, load_config

    assert load_config("cpu-quick").train.select == "auto" and CHOICES["train.select"] == (
        "auto",
        "best",
        "last",
    )
    assert load_config("cpu-quick", {"train.select": "last"}).train.select == "last"
    with pytest.raises(UsageError, match="'train.select' is 'middle'; choose one of: auto, best, last"):
        load_config("cpu-quick", {"train.select": "middle"})


def test_cv_folds_keep_the_last_epoch_unless_told_otherwise(phantom_dir, tmp_path):
    from liverscope.training.cv import fold_config
    from liverscope.training.train import selection

    auto = quick_config(phantom_dir, tmp_path, "cv")
    assert selection(auto) == "best"  # a train run: its validation images are not its test images
    assert fold_config(auto, 0).train.select == "last" and selection(fold_config(auto, 0)) == "last"
    assert auto.train.select == "auto"  # the cv run's own recipe is left as it was
    old_way = quick_config(phantom_dir, tmp_path, "cv", **{"train.select": "best"})
    assert fold_config(old_way, 1).train.select == "best"


def test_oof_protocol_names_the_old_way():
    from liverscope.training.cv import oof_protocol

    honest = oof_protocol(["last"] * 5)
    assert honest["honest"] and honest["temperature"] == "cross-fitted" and honest["warning"] is None
    old = oof_protocol(["best"] * 5)
    assert not old["honest"] and "optimistic" in old["warning"]
    mixed = oof_protocol(["last", "best", "last"])
    assert mixed["select"] == "mixed" and not mixed["honest"] and "different train.select" in mixed["warning"]


def test_each_folds_temperature_is_fitted_on_the_other_folds_only():
    from liverscope.evaluate.stats import fit_temperature_checked
    from liverscope.training.cv import cross_fitted_temperatures

    rng = np.random.default_rng(0)
    y = [rng.integers(0, 3, 40) for _ in range(3)]
    # fold 0 over-confident (big logits), the others mild: a fold's own images would pull its temperature
    logits = [np.eye(3)[yi] * s + rng.normal(0, 1.5, (40, 3)) * s for yi, s in zip(y, (6.0, 1.0, 1.0))]
    temps = cross_fitted_temperatures(logits, y)
    expected = fit_temperature_checked(np.concatenate(logits[1:]), np.concatenate(y[1:]))["temperature"]
    assert temps[0] == pytest.approx(expected)
    own = fit_temperature_checked(logits[0], y[0])["temperature"]
    assert abs(temps[0] - own) > 0.5  # fitted without fold 0's images, not on them


def test_ensemble_vs_oof_sets_the_figures_side_by_side_with_the_gap():
    from liverscope.training.cv import ensemble_vs_oof

    result = {
        "oof": {"n": 80, "balanced_accuracy": 0.70, "macro_auc": 0.90},
        "ensemble": {"n": 20, "balanced_accuracy": 0.75, "macro_auc": 0.88},
        "oof_by_source": {
            "groups": {"a": {"n": 50, "balanced_accuracy": 0.6}, "b": {"n": 30, "balanced_accuracy": 0.9}}
        },
        "ensemble_by_source": {"groups": {"a": {"n": 12, "balanced_accuracy": 0.5}}},
    }
    table = ensemble_vs_oof(result)
    assert table["overall"]["balanced_accuracy"] == {
        "oof": 0.70,
        "ensemble": 0.75,
        "gap": pytest.approx(0.05),
    }
    assert table["overall"]["macro_auc"]["gap"] == pytest.approx(-0.02)
    assert (table["overall"]["n_oof"], table["overall"]["n_ensemble"]) == (80, 20)
    assert list(table["by_source"]) == ["a"] and table["by_source"]["a"]["balanced_accuracy"][
        "gap"
    ] == pytest.approx(-0.1)


def _weights(path, key="state_dict"):
    state = torch.load(path, map_location="cpu", weights_only=True)[key]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.slow
def test_select_last_keeps_the_final_epoch_and_trains_every_epoch(phantom_dir, tmp_path):
    from liverscope import rundir
    from liverscope.training.run import fit

    common = {"train.epochs": 3, "data.image_size": 32, "train.early_stop_patience": 1, "train.lr": 3e-2}
    run = fit(quick_config(phantom_dir, tmp_path, "last", **common, **{"train.select": "last"}))
    meta = read_json(run / "model.json")
    with open(run / "history.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert (
        epochs == [0, 1, 2] and meta["select"] == "last" and meta["best_epoch"] == 2
    )  # no early stop under last
    model, _ = rundir.load_model(run)
    last = _weights(rundir.last_checkpoint(run))
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items() if k in last)

    best_run = fit(quick_config(phantom_dir, tmp_path, "best", **common, **{"train.select": "best"}))
    meta = read_json(best_run / "model.json")
    best = _weights(best_run / "checkpoints" / "best.ckpt")
    model, _ = rundir.load_model(best_run)
    assert meta["select"] == "best" and all(
        torch.equal(v, best[k]) for k, v in model.state_dict().items() if k in best
    )
