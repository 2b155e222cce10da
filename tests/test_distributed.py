"""Training on several devices through Lightning: the placement settings, the samplers of a distributed
run, and a real two-process DDP run on the CPU (gloo) that writes one complete run directory."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from liverscope.config import TrainConfig, load_config, parse_devices
from liverscope.errors import UsageError
from liverscope.utils import read_json

# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------


def test_devices_take_lightnings_forms_and_bad_ones_fail_before_any_work():
    assert parse_devices("2") == 2 and parse_devices(3) == 3 and parse_devices("-1") == -1
    assert parse_devices("auto") == "auto" and parse_devices("0,1") == [0, 1] and parse_devices("1,") == [1]
    for bad in ("0", "two", "", "1.5", "0;1", -2, True):
        with pytest.raises(UsageError, match="train.devices"):
            parse_devices(bad)
    with pytest.raises(UsageError, match="--devices"):
        load_config("cpu-quick", {"train.devices": "many"})
    with pytest.raises(UsageError, match="num_nodes"):
        load_config("cpu-quick", {"train.num_nodes": "0"})
    with pytest.raises(UsageError, match="choose one of: auto, ddp, ddp_spawn"):
        load_config("cpu-quick", {"train.strategy": "horovod"})
    cfg = load_config(
        "cpu-quick",
        {"train.devices": "2", "train.strategy": "ddp", "train.num_nodes": "2", "train.accelerator": "cpu"},
    )
    assert (cfg.train.devices, cfg.train.strategy, cfg.train.num_nodes, cfg.train.accelerator) == (
        "2",
        "ddp",
        2,
        "cpu",
    )


def test_placement_follows_train_device_unless_an_accelerator_is_named():
    from liverscope.training.lightning_module import placement

    assert placement(TrainConfig(device="cpu")) == {
        "accelerator": "cpu",
        "devices": 1,
        "strategy": "auto",
        "num_nodes": 1,
    }
    named = TrainConfig(accelerator="cpu", devices="2", strategy="ddp", num_nodes=3)
    assert placement(named) == {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_nodes": 3}


def test_a_placement_lightning_refuses_is_a_usage_error(tmp_path):
    import torch

    from liverscope.training.lightning_module import build_trainer

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = load_config(
        "cpu-quick", {"train.accelerator": "gpu", "train.devices": "2", "out_dir": str(tmp_path)}
    )
    with pytest.raises(UsageError, match="train.accelerator=gpu, devices=2"):
        build_trainer(cfg, tmp_path, [], [])


# --------------------------------------------------------------------------------------------------
# the samplers of a distributed run
# --------------------------------------------------------------------------------------------------


def _prepared(labels: list[str], splits: list[str]):
    from liverscope.data.datasets import Sample
    from liverscope.data.preprocess import PreprocessCache, Preprocessing
    from liverscope.training.datamodule import PreparedData

    pp = Preprocessing(size=32, denoise=False)
    samples = [Sample(Path(f"/nowhere/{i}.png"), lab) for i, lab in enumerate(labels)]  # listed, never read
    return PreparedData(samples, sorted(set(labels)), np.array(splits), PreprocessCache(pp, None), pp, [])


def test_the_weighted_draw_is_split_between_processes_not_drawn_twice():
    """Every process seeds its weighted sampler alike and Lightning's DistributedSamplerWrapper hands each
    its share of that one draw: together they see exactly the single-process epoch."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from liverscope.training.datamodule import train_loader

    labels = ["F0"] * 24 + ["F1"] * 6 + ["F2"] * 2  # 32 images: shares divide evenly, no padding
    prep = _prepared(labels, ["train"] * 32)
    cfg = load_config("cpu-quick", {"train.balance": "sampler", "train.batch_size": 4, "train.seed": 3})
    single = list(train_loader(prep, cfg, processes=1).sampler)
    shares = []
    for rank in (0, 1):
        loader = train_loader(prep, cfg, processes=2)  # each process builds its own loader
        wrapped = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, shuffle=True, seed=0)
        shares.append(list(wrapped))
    assert len(shares[0]) == len(shares[1]) == 16
    assert Counter(shares[0] + shares[1]) == Counter(single)  # one weighted draw, split
    drawn = Counter(labels[i] for i in single)
    assert drawn["F2"] > 2 and drawn["F0"] < 24  # and it is the weighted draw (F2 over-sampled)


def test_validation_shards_count_every_image_once():
    import torch.utils.data

    from liverscope.training.datamodule import eval_loader

    prep = _prepared(["F0", "F1"] * 2 + ["F0"], ["val"] * 5)
    cfg = load_config("cpu-quick")
    val = prep.samples
    seen = [list(eval_loader(val, prep, cfg, shard=(rank, 2)).sampler) for rank in (0, 1)]
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3, 4]  # 3 + 2: uneven, nothing repeated
    # what Lightning would have used: the last shard padded with a repeated image
    padded = [
        list(torch.utils.data.DistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False))
        for r in (0, 1)
    ]
    assert len(padded[0] + padded[1]) == 6


# --------------------------------------------------------------------------------------------------
# a real DDP run: two CPU processes, gloo
# --------------------------------------------------------------------------------------------------

DDP_EPOCHS = 2


@pytest.fixture(scope="module")
def ddp_phantoms(tmp_path_factory) -> Path:
    from liverscope.data.datasets import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("ddp-phantoms"), n_per_class=8, size=48, seed=2)


@pytest.fixture(scope="module")
def ddp_run(ddp_phantoms, tmp_path_factory):
    """``liverscope train ... --accelerator cpu --devices 2 --strategy ddp``: Lightning launches the
    second process (the same command line), the two train together over gloo."""
    out = tmp_path_factory.mktemp("ddp-runs")
    cmd = [
        sys.executable,
        "-m",
        "liverscope",
        "train",
        str(ddp_phantoms),
        "--recipe",
        "cpu-quick",
        "--name",
        "ddp",
        "--out-dir",
        str(out),
        "--image-size",
        "32",
        "--epochs",
        str(DDP_EPOCHS),
        "--batch-size",
        "4",
        "--max-train-batches",
        "2",
        "--cache-dir",
        str(out / "cache"),
        "--device",
        "cpu",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--set",
        "train.progress=false",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out / "ddp", res.stdout + res.stderr


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_ddp_run_writes_one_complete_run_directory_from_rank_zero(ddp_run):
    run, output = ddp_run
    # two processes took part; the data was audited and cached once, the summary printed once
    assert "GLOBAL_RANK: 0" in output and "GLOBAL_RANK: 1" in output, output[-2000:]
    assert output.count("audit: ") == 1 and output.count("images ready") == 1
    assert [line for line in output.splitlines() if line.startswith("run directory: ")] == [
        f"run directory: {run}"
    ]
    for f in (
        "config.yaml",
        "model.safetensors",
        "model.json",
        "ood.safetensors",
        "split.csv",
        "audit.json",
        "audit.html",
        "history.csv",
        "metrics.json",
        "predictions_val.csv",
        "predictions_test.csv",
        "curves.png",
        "confusion_matrix.png",
        "report.html",
    ):
        assert (run / f).is_file(), f
    assert not [p for p in run.rglob(".*")], "a half-written (temporary) file was left behind"
    assert sorted(p.name for p in (run / "logs" / "csv").iterdir()) == ["version_0"]  # one logger, rank 0's
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    meta = read_json(run / "model.json")
    assert meta["processes"] == 2 and meta["labels"] == ["F0", "F1", "F2", "F3", "F4"]
    assert [int(r["epoch"]) for r in _rows(run / "history.csv")] == list(range(DDP_EPOCHS))


@pytest.mark.slow
def test_ddp_validation_figures_count_each_image_once(ddp_run):
    run, _ = ddp_run
    n_val = sum(r["split"] == "val" for r in _rows(run / "split.csv"))
    assert n_val % 2 == 1  # an odd count: Lightning's default sampler would have repeated one image
    logged = [r for r in _rows(run / "logs" / "csv" / "version_0" / "metrics.csv") if r.get("val_images")]
    assert len(logged) == DDP_EPOCHS and all(float(r["val_images"]) == n_val for r in logged)
    for r in logged:  # an accuracy over n_val images is a multiple of 1 / n_val
        assert float(r["val_acc"]) * n_val == pytest.approx(round(float(r["val_acc"]) * n_val), abs=1e-4)
    val = _rows(run / "predictions_val.csv")
    assert len(val) == len({r["path"] for r in val}) == n_val
    assert read_json(run / "metrics.json")["validation"]["n"] == n_val


@pytest.mark.slow
def test_a_ddp_run_is_read_by_predict_evaluate_explain_and_serve(
    ddp_run, ddp_phantoms, tmp_path, monkeypatch
):
    from liverscope.explain.files import explain_paths
    from liverscope.inference.predict import Predictor
    from liverscope.training.external import evaluate_on_data

    run, _ = ddp_run
    files = sorted(ddp_phantoms.glob("F*/*.png"))[::8]
    results = list(Predictor.from_run(run, device="cpu").predict_paths(files))
    assert len(results) == 5 and all(
        r.error is None and abs(sum(r.probs.values()) - 1) < 1e-5 for r in results
    )
    out = evaluate_on_data(run, ddp_phantoms, name="phantoms", device="cpu", out=tmp_path / "eval")
    assert read_json(out / "metrics.json")["test"]["n"] == 40 and (out / "report.html").exists()
    explained = explain_paths(run, files[:2], tmp_path / "cams", device="cpu")
    assert explained["explained"] == 2 and not explained["skipped"]

    from test_app import page_errors, png_bytes, start

    at = start(run, monkeypatch)
    at.file_uploader[0].set_value([("liver.png", png_bytes(files[0]), "image/png")])
    at.run()
    assert not at.exception and not page_errors(at)
    assert {m.label: m.value for m in at.metric}["Predicted class"] in ["F0", "F1", "F2", "F3", "F4"]
