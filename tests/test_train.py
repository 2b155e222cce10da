"""Training on phantoms: it learns, writes a complete run directory, and resumes."""

from __future__ import annotations

import csv

import pytest

from conftest import quick_config
from liverscope.errors import LiverscopeError
from liverscope.rundir import read_config
from liverscope.utils import read_json


def test_run_directory_is_complete(trained_run):
    for f in (
        "config.yaml",
        "model.safetensors",
        "model.json",
        "history.csv",
        "split.csv",
        "predictions_test.csv",
        "metrics.json",
        "curves.png",
        "confusion_matrix.png",
    ):
        assert (trained_run / f).exists(), f
    meta = read_json(trained_run / "model.json")
    assert meta["labels"] == ["F0", "F1", "F2", "F3", "F4"]
    assert meta["architecture"]["name"] == "resnet10t"
    assert meta["weights_source"] == "random init"
    assert meta["preprocessing"]["size"] == 64
    assert meta["temperature"] is not None and meta["temperature"] > 0


def test_run_report_has_cam_gallery(trained_run):
    captions = read_json(trained_run / "cam_gallery" / "captions.json")
    assert captions and all((trained_run / "cam_gallery" / name).exists() for name in captions)
    report = (trained_run / "report.html").read_text(encoding="utf-8")
    first = next(iter(captions.values()))
    assert first.split(":")[0] in report  # the gallery section shows the captions


def test_run_records_its_training_data_and_flagged_gallery_images(trained_run, phantom_dir):
    """model.json names the data (path, images, the audit's sources, phantoms: yes), the report says so,
    and the gallery records which of its images the run's detector flags."""
    data = read_json(trained_run / "model.json")["training_data"]
    with open(trained_run / "split.csv", newline="") as fh:
        split = list(csv.DictReader(fh))
    assert data["path"] == str(phantom_dir.resolve()) and data["synthetic_phantoms"] is True
    assert data["images"] == len(split) and data["sources"] == {
        s: sum(r["source"] == s for r in split) for s in {r["source"] for r in split}
    }
    report = (trained_run / "report.html").read_text(encoding="utf-8")
    assert (
        f"Trained on {phantom_dir.resolve()}: {len(split)} images" in report and 'class="phantoms"' in report
    )
    with open(trained_run / "predictions_test.csv", newline="") as fh:
        ood = {row["path"].rsplit("/", 1)[-1]: row["ood"] == "true" for row in csv.DictReader(fh)}
    captions = read_json(trained_run / "cam_gallery" / "captions.json")
    flagged = set(read_json(trained_run / "cam_gallery" / "flagged.json"))
    assert flagged <= set(captions)
    assert all((name in flagged) == ood[caption.split(":")[0]] for name, caption in captions.items())


def test_training_learns_phantoms(trained_run):
    m = read_json(trained_run / "metrics.json")["test"]
    assert m["n"] >= 15
    assert m["accuracy"] > 0.6  # chance is 0.2
    with open(trained_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_model_json_records_provenance_and_the_report_shows_it(trained_run):
    from test_provenance import check_provenance

    meta = read_json(trained_run / "model.json")
    check_provenance(meta["provenance"], trained_run / "split.csv", 0)
    report = (trained_run / "report.html").read_text(encoding="utf-8")
    assert 'id="provenance"' in report
    for key in ("torch", "timm", "monai", "numpy"):
        assert f"{key} version" in report and meta["provenance"]["versions"][key] in report
    assert meta["provenance"]["split_sha256"] in report


def test_history_is_the_csv_loggers_figures_one_row_per_epoch(trained_run):
    from liverscope.training.lightning_module import HistoryWriter, epoch_rows

    logged = epoch_rows(trained_run / "logs" / "csv" / "version_0" / "metrics.csv")
    with open(trained_run / "history.csv") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == HistoryWriter.COLUMNS
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in logged] == [str(e) for e in range(8)]
    for row, log in zip(rows, logged):
        for key in ("train_loss", "val_loss", "val_acc", "val_balanced_acc", "lr", "epoch_seconds"):
            assert log[key] and float(row[key]) == pytest.approx(float(log[key]), rel=5e-3, abs=5e-3), (
                key
            )  # lr: 3 digits, seconds: 2 decimals
        assert f"{float(log['val_loss']):.6f}" == row["val_loss"]
    assert all(0 <= float(r["val_balanced_acc"]) <= 1 and float(r["epoch_seconds"]) > 0 for r in rows)


def test_epoch_rows_merge_lightnings_train_and_validation_rows(tmp_path):
    from liverscope.training.lightning_module import epoch_rows

    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,lr,step,train_loss,val_loss\n0,,4,,0.9\n0,0.01,4,1.5,\n1,,9,,0.7\n1,0.005,9,1.2,\n,,10,,\n"
    )
    assert epoch_rows(path) == [
        {"epoch": "0", "lr": "0.01", "step": "4", "train_loss": "1.5", "val_loss": "0.9"},
        {"epoch": "1", "lr": "0.005", "step": "9", "train_loss": "1.2", "val_loss": "0.7"},
    ]
    assert epoch_rows(tmp_path / "missing.csv") == []


def test_split_is_stratified_and_disjoint(trained_run):
    with open(trained_run / "split.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_split = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r)
    assert set(by_split) == {"train", "val", "test"}
    for part in by_split.values():
        assert {r["label"] for r in part} == {"F0", "F1", "F2", "F3", "F4"}
    groups = {s: {r["group"] for r in part} for s, part in by_split.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]


@pytest.mark.slow
def test_resume_continues_interrupted_run(phantom_dir, tmp_path):
    from liverscope.training.run import fit

    cfg = quick_config(phantom_dir, tmp_path, "resumable", **{"train.epochs": 2, "train.scheduler": "none"})
    run = fit(cfg)
    split_before = (run / "split.csv").read_text()
    with open(run / "history.csv") as fh:
        history_before = list(csv.DictReader(fh))
    with pytest.raises(LiverscopeError, match="already holds a trained run"):
        fit(cfg)
    cfg.train.epochs = 4
    fit(cfg, resume=True)
    with open(run / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3]
    assert history[:2] == history_before  # the first session's epochs are kept as they were logged
    # one CSV logger file per session: the resumed one holds epochs 2 and 3 only
    assert sorted(p.name for p in (run / "logs" / "csv").iterdir()) == ["version_0", "version_1"]
    assert (run / "split.csv").read_text() == split_before


def test_resume_without_checkpoint_is_clear(phantom_dir, tmp_path):
    from liverscope.training.run import fit

    with pytest.raises(LiverscopeError, match="nothing to resume"):
        fit(quick_config(phantom_dir, tmp_path, "fresh"), resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("balance,scheduler", [("weighted_ce", "plateau"), ("sampler", "step")])
def test_other_recipes_options_run(phantom_dir, tmp_path, balance, scheduler):
    from liverscope.training.run import fit

    cfg = quick_config(
        phantom_dir,
        tmp_path,
        f"{balance}-{scheduler}",
        **{
            "train.epochs": 1,
            "train.balance": balance,
            "train.scheduler": scheduler,
            "model.head": "mlp128",
            "model.freeze_backbone": True,
            "data.augment": "light",
            "train.early_stop_patience": 1,
        },
    )
    run = fit(cfg)
    assert (run / "model.safetensors").exists()


@pytest.mark.real
@pytest.mark.slow
def test_quick_recipe_on_real_fibrosis(real_fibrosis, tmp_path):
    """One short epoch of the quick recipe on ../shared/data/liver-fibrosis, then predict on it."""
    from liverscope.inference.predict import Predictor
    from liverscope.training.run import fit

    cfg = quick_config(
        real_fibrosis,
        tmp_path,
        "real",
        **{"train.epochs": 1, "train.max_train_batches": 4, "data.image_size": 64},
    )
    run = fit(cfg)
    meta = read_json(run / "model.json")
    assert meta["labels"] == ["F0", "F1", "F2", "F3", "F4"]
    files = sorted((real_fibrosis / "F2").iterdir())[:3] + sorted((real_fibrosis / "F0").iterdir())[:3]
    results = list(Predictor.from_run(run, device="cpu").predict_paths(files))
    assert len(results) == 6 and all(r.error is None for r in results)
    assert all(abs(sum(r.probs.values()) - 1) < 1e-5 for r in results)


@pytest.mark.slow
def test_bf16_mixed_training_learns_and_its_run_is_like_any_other(phantom_dir, tmp_path):
    """bf16-mixed (emulated on CPUs without native bf16: slow, so few epochs) still learns the phantoms,
    and predict and export read the run as they read an fp32 one."""
    from liverscope.inference.export import export_onnx
    from liverscope.inference.predict import Predictor
    from liverscope.training.run import fit

    cfg = quick_config(phantom_dir, tmp_path, "bf16", **{"train.precision": "bf16-mixed", "train.epochs": 4})
    run = fit(cfg)
    test = read_json(run / "metrics.json")["test"]
    assert test["balanced_accuracy"] > 0.5  # chance is 0.2 with five classes
    files = sorted((phantom_dir / "F4").glob("*.png"))[:3]
    results = list(Predictor.from_run(run, backend="torch", device="cpu").predict_paths(files))
    assert all(r.error is None and abs(sum(r.probs.values()) - 1) < 1e-5 for r in results)
    assert export_onnx(run)["max_abs_logit_diff"] <= 1e-3


@pytest.mark.slow
def test_training_on_tissue_windows_learns_and_predicts_on_whole_images(phantom_dir, tmp_path):
    """``data.train_crop``: trained on 40 px windows of the 64 px input, the model is validated, tested
    and used for prediction on the whole 64 px image, and it still learns the phantoms."""
    from liverscope.inference.predict import Predictor
    from liverscope.training.datamodule import eval_loader, prepare_data, train_loader
    from liverscope.training.run import fit

    cfg = quick_config(phantom_dir, tmp_path, "windows", **{"data.train_crop": 40})
    run = fit(cfg)
    assert read_config(run).data.train_crop == 40
    prep = prepare_data(cfg, run)  # the run's own split, read back
    images, _ = next(iter(train_loader(prep, cfg)))
    assert images.shape[-2:] == (40, 40)  # training batches are windows
    images, _ = next(iter(eval_loader(prep.samples[:4], prep, cfg)))
    assert images.shape[-2:] == (64, 64)  # evaluation sees the whole input
    assert read_json(run / "metrics.json")["test"]["balanced_accuracy"] > 0.5  # chance is 0.2
    files = sorted((phantom_dir / "F4").glob("*.png"))[:2]
    results = list(Predictor.from_run(run, backend="torch", device="cpu").predict_paths(files))
    assert all(r.error is None for r in results)


def test_a_training_window_as_large_as_the_input_fails_before_any_data_is_read(phantom_dir, tmp_path):
    from liverscope.training.run import fit

    with pytest.raises(LiverscopeError, match="train_crop is 64"):
        fit(quick_config(phantom_dir, tmp_path, "bad-window", **{"data.train_crop": 64}))
    assert not (tmp_path / "cache").exists()  # failed before the preprocessing cache was filled


def test_auto_precision_is_fp32_on_cpu():
    from liverscope.training.lightning_module import training_precision

    assert training_precision("auto", "cpu") == "32-true"
    assert training_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_ordinal_penalty_costs_more_for_a_farther_stage():
    import torch

    from liverscope.config import TrainConfig
    from liverscope.models import build_model
    from liverscope.training.lightning_module import LitClassifier

    model = build_model("resnet10t", 5, head="linear")
    y = torch.tensor([0])
    near = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0]])  # true F0 called F1
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0, 5.0]])  # true F0 called F4: same cross-entropy
    plain = LitClassifier(model, TrainConfig(ordinal_weight=0.0), stage_of_class=[0, 1, 2, 3, 4])
    assert torch.isclose(plain.loss(near, y), plain.loss(far, y))
    ordinal = LitClassifier(model, TrainConfig(ordinal_weight=1.0), stage_of_class=[0, 1, 2, 3, 4])
    assert ordinal.loss(far, y) > ordinal.loss(near, y) > plain.loss(near, y)
    unordered = LitClassifier(
        model, TrainConfig(ordinal_weight=1.0), stage_of_class=None
    )  # e.g. normal / fatty / tumour
    assert torch.isclose(unordered.loss(near, y), unordered.loss(far, y))


@pytest.mark.slow
def test_a_run_without_validation_images_keeps_the_best_training_loss(phantom_dir, tmp_path):
    from liverscope.training.run import fit

    run = fit(
        quick_config(
            phantom_dir, tmp_path, "noval", **{"data.val_frac": 0.0, "train.epochs": 2, "data.image_size": 32}
        )
    )
    meta = read_json(run / "model.json")
    assert meta["monitor"] == "train_loss" and meta["processes"] == 1
    with open(run / "split.csv") as fh:
        assert "val" not in {r["split"] for r in csv.DictReader(fh)}
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["train_loss"] and not r["val_loss"] for r in rows)
