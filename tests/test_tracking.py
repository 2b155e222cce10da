"""Experiment tracking (`--logger csv|tensorboard|mlflow`): the resolved recipe, the per-epoch figures
and the final ones reach Lightning's loggers; history.csv stays."""

from __future__ import annotations

import csv
import sys

import pytest
import yaml

from conftest import quick_config
from liverscope.errors import LiverscopeError
from liverscope.utils import read_json


def test_csv_logger_keeps_the_resolved_recipe_and_the_counted_validation_images(trained_run):
    from liverscope.rundir import read_config

    logged = yaml.safe_load((trained_run / "logs" / "csv" / "version_0" / "hparams.yaml").read_text())
    assert logged == read_config(trained_run).to_dict()
    with open(trained_run / "logs" / "csv" / "version_0" / "metrics.csv") as fh:
        counts = {float(r["val_images"]) for r in csv.DictReader(fh) if r.get("val_images")}
    with open(trained_run / "split.csv") as fh:
        n_val = sum(r["split"] == "val" for r in csv.DictReader(fh))
    assert counts == {float(n_val)}


@pytest.mark.slow
def test_tensorboard_gets_the_recipe_the_epochs_and_the_final_figures(phantom_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from liverscope.training.run import fit

    run = fit(
        quick_config(
            phantom_dir,
            tmp_path,
            "tb",
            **{"train.epochs": 2, "data.image_size": 32, "train.logger": "tensorboard"},
        )
    )
    events = EventAccumulator(str(run / "logs" / "tensorboard" / "version_0"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train_loss",
        "val_loss",
        "val_balanced_acc",
        "lr",
        "test/accuracy",
        "validation/balanced_accuracy",
    } <= scalars
    assert len(events.Scalars("train_loss")) == 2  # one per epoch
    test = read_json(run / "metrics.json")["test"]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(test["accuracy"], abs=1e-6)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    hparams = start.session_start_info.hparams
    assert (
        hparams["train/lr"].number_value == pytest.approx(3e-3)
        and hparams["model/name"].string_value == "resnet10t"
    )
    with open(run / "history.csv") as fh:  # the CSV logger and history.csv are still there
        assert len(list(csv.DictReader(fh))) == 2
    assert (run / "logs" / "csv" / "version_0" / "metrics.csv").exists()


def test_mlflow_without_its_extra_names_the_pip_line_before_any_work(phantom_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if `liverscope[mlflow]` were not installed
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(phantom_dir),
            "--recipe",
            "cpu-quick",
            "--name",
            "ml",
            "--out-dir",
            str(tmp_path),
            "--logger",
            "mlflow",
        ],
    )
    assert res.exit_code == 1 and "pip install 'liverscope[mlflow]'" in res.output
    assert not (tmp_path / "ml").exists()


def test_mlflow_defaults_to_a_local_folder_never_a_server_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from liverscope.training.lightning_module import tracking_loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example.org")
    cfg = quick_config(tmp_path, tmp_path, "ml", **{"train.logger": "mlflow"})
    (logger,) = tracking_loggers(cfg, cfg.run_dir)
    assert logger._tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    cfg.train.mlflow_uri = "http://mlflow.internal:5000"
    assert tracking_loggers(cfg, cfg.run_dir)[0]._tracking_uri == "http://mlflow.internal:5000"


def test_unknown_logger_is_a_usage_error():
    from liverscope.config import load_config

    with pytest.raises(LiverscopeError, match="choose one of: csv, tensorboard, mlflow"):
        load_config("cpu-quick", {"train.logger": "wandb"})
