"""nnU-Net as the segmenter's engine (segment.nnunet): the raw dataset it is given (names, dataset.json,
the run's split as splits_final.json), the short trainer, the checks before any work, and — slow, with the
``nnunetv2`` package — the round trip: nnU-Net plans, preprocesses and trains on phantoms, and the run's
segmenter contract (save, load, ``segment predict`` at the original size, the report) uses what it trained."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liverscope.data.datasets import make_phantoms
from liverscope.data.io import read_image, to_grey
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError, UsageError
from liverscope.models.registry import build_model
from liverscope.rundir import save_model
from liverscope.segment import nnunet as N
from liverscope.segment import train_segmenter
from liverscope.segment import unet as U
from liverscope.segment.commands import segmentation_split
from liverscope.segment.config import EngineConfig, FitConfig, SegmentConfig
from liverscope.segment.images import load_images
from liverscope.ui import cli_options
from liverscope.ui.cli import app
from liverscope.utils import read_csv_rows, read_json

HAVE_NNUNET = importlib.util.find_spec("nnunetv2") is not None
CLASSES = ("benign", "malignant", "normal")


def _pictures(n: int, size: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        masks[i, 2 + i % 5 : 9 + i % 5, 3:12] = i % 3 != 2  # every third image has nothing to outline
    return images, masks


# --------------------------------------------------------------------------------------------------
# the raw dataset and the split (no nnunetv2 needed)
# --------------------------------------------------------------------------------------------------


def test_raw_dataset_names_images_labels_and_dataset_json(tmp_path):
    images, masks = _pictures(7, size=24)
    split = np.array(["train", "val", "test", "train", "train", "val", "test"])
    paths = [f"/data/{c}/img{i}.png" for i, c in enumerate("abcdefg")]
    raw = N.write_raw_dataset(
        tmp_path / N.dataset_name("lesion"), images, masks, split, paths, "lesion", size=32
    )
    ds = tmp_path / "Dataset501_lesion"
    assert raw["folder"] == ds and raw["cases"] == [f"case_{i:04d}" for i in range(7)]
    trained = {i for i, s in enumerate(split) if s != "test"}
    for i, case in enumerate(raw["cases"]):
        sub = "Tr" if i in trained else "Ts"  # test images never reach nnU-Net's planning or training
        img, lab = ds / f"images{sub}" / f"{case}_0000.png", ds / f"labels{sub}" / f"{case}.png"
        assert img.is_file() and lab.is_file()
        assert not (ds / f"images{'Ts' if sub == 'Tr' else 'Tr'}" / f"{case}_0000.png").exists()
        grey, label = read_image(img), read_image(lab)
        assert grey.shape[:2] == (32, 32) and np.array_equal(
            to_grey(grey), N.grey_at(images[i], 32)
        )  # one channel: grey as the segmenter sees it
        label = to_grey(label)
        assert set(np.unique(label)) <= {0, 1}  # nnU-Net's labels are consecutive integers, not 0/255
        assert np.array_equal(label.astype(bool), U.resize_masks(masks[i : i + 1], 32)[0])
    meta = read_json(ds / "dataset.json")
    assert meta["labels"] == {"background": 0, "lesion": 1} and meta["channel_names"] == {"0": "ultrasound"}
    assert (
        meta["numTraining"] == len(trained) == len(list((ds / "imagesTr").glob("*.png")))
        and meta["file_ending"] == ".png"
    )
    assert meta["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    rows = read_csv_rows(ds / "cases.csv")
    assert [(r["case"], r["path"], r["split"]) for r in rows] == list(zip(raw["cases"], paths, split))


def test_splits_final_is_the_runs_split_as_fold_0(tmp_path):
    cases = [f"case_{i:04d}" for i in range(6)]
    split = ["val", "train", "test", "train", "val", "train"]
    splits = N.nnunet_splits(cases, split)
    assert splits == [{"train": ["case_0001", "case_0003", "case_0005"], "val": ["case_0000", "case_0004"]}]
    path = N.write_splits(tmp_path / "preprocessed" / "Dataset501_lesion", splits)
    assert path.name == "splits_final.json" and read_json(path) == splits
    with pytest.raises(LiverscopeError, match="validation"):
        N.nnunet_splits(
            cases[:3], ["train", "train", "test"]
        )  # nnU-Net validates fold 0: it needs val images


def test_the_grouped_split_reaches_nnunet_unchanged(tmp_path, phantom_dir):
    """The split segment train makes (duplicates grouped) is the one written as fold 0."""
    files = sorted((phantom_dir / "F0").glob("*.png"))[:6] + sorted((phantom_dir / "F4").glob("*.png"))[:6]
    items, _ = load_images(
        files, Preprocessing(size=32, denoise=False), roots=[phantom_dir], labels=["F0"] * 6 + ["F4"] * 6
    )
    split = segmentation_split(items, seed=3)
    masks = np.zeros((len(items), 32, 32), bool)
    raw = N.write_raw_dataset(
        tmp_path / "Dataset501_lesion",
        [it.input for it in items],
        masks,
        split,
        [str(it.path) for it in items],
        "lesion",
        32,
    )
    fold = raw["splits"][0]
    for _it, case, s in zip(items, raw["cases"], split):
        assert (case in fold["train"]) == (s == "train") and (case in fold["val"]) == (s == "val")
    assert set(fold["train"]).isdisjoint(fold["val"])


def test_nnunet_folders_and_device_go_to_the_child(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_def_n_proc", raising=False)
    env, device = N.nnunet_env(tmp_path, "cuda:1", 3)
    assert (env["nnUNet_raw"], env["nnUNet_preprocessed"], env["nnUNet_results"]) == (
        str(tmp_path / "raw"),
        str(tmp_path / "preprocessed"),
        str(tmp_path / "results"),
    )
    assert (
        device == "cuda" and env["CUDA_VISIBLE_DEVICES"] == "1" and env["nnUNet_def_n_proc"] == "3"
    )  # nnU-Net trains on the first visible GPU
    monkeypatch.setenv("nnUNet_def_n_proc", "5")
    env, device = N.nnunet_env(tmp_path, "cpu", 3)
    assert device == "cpu" and env["nnUNet_def_n_proc"] == "5"  # the user's setting wins


def test_short_trainer_subclasses_the_trainer(monkeypatch):
    import torch

    class FakeTrainer:  # nnU-Net's trainer constructor, in miniature
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
            self.args = (plans, configuration, fold, dataset_json, device)

    assert N.short_trainer(FakeTrainer) is FakeTrainer
    short = N.short_trainer(FakeTrainer, epochs=2, iterations=7)
    assert issubclass(short, FakeTrainer) and short.__name__ == "FakeTrainer_2epochs_7iters"
    t = short({"p": 1}, "2d", 0, {"d": 1}, torch.device("cpu"))
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (2, 7, 50)
    assert t.args == ({"p": 1}, "2d", 0, {"d": 1}, torch.device("cpu"))


def test_unique_tensors_keeps_each_tensor_once():
    import torch

    conv = torch.nn.Conv2d(1, 2, 3)
    net = torch.nn.Module()
    net.encoder, net.decoder = torch.nn.Sequential(conv), torch.nn.Module()
    net.decoder.encoder = net.encoder  # as nnU-Net's decoders hold their encoder
    full = net.state_dict()
    assert len(full) == 4
    unique = N.unique_tensors(full)
    assert list(unique) == ["encoder.0.weight", "encoder.0.bias"]


def test_checks_before_any_work(monkeypatch):
    assert N.check_engine("liverscope") == "liverscope"
    with pytest.raises(UsageError, match="--engine"):
        N.check_engine("nnU-Net")
    with pytest.raises(UsageError, match="--confident"):
        N.check_engine("nnunet", confident=(0.3, 0.6))
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # as if the [nnunet] extra were not installed
    with pytest.raises(LiverscopeError, match=r"pip install 'liverscope\[nnunet\]'"):
        N.check_engine("nnunet")


def test_cli_engine_choices_match_and_a_wrong_one_is_a_usage_error(tmp_path):
    assert cli_options.ENGINES == N.ENGINES
    result = CliRunner().invoke(
        app,
        ["segment", "train", str(tmp_path), str(tmp_path), "--masks", str(tmp_path), "--engine", "nnU-Net"],
    )
    assert result.exit_code == 2 and "--engine" in result.output


# --------------------------------------------------------------------------------------------------
# the round trip (slow; needs nnunetv2)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory):
    """12 phantoms of 64 px (lesion masks), an untrained 64 px classifier run, and nnU-Net trained on them:
    nnU-Net's own planning and preprocessing, its trainer for 1 epoch of 10 iterations, on the CPU."""
    if not HAVE_NNUNET:
        pytest.skip(
            "nnunetv2 is not installed (pip install 'liverscope[nnunet]'): the nnU-Net round trip needs it"
        )
    import torch

    data = make_phantoms(
        tmp_path_factory.mktemp("nnunet-data"), n_per_class=4, classes=CLASSES, size=64, seed=3
    )
    run = tmp_path_factory.mktemp("nnunet-runs") / "run"
    run.mkdir()
    torch.manual_seed(0)
    save_model(
        run,
        build_model("resnet10t", len(CLASSES), head="linear"),
        list(CLASSES),
        Preprocessing(size=64, denoise=False),
    )
    cfg = SegmentConfig(
        masks=str(data / "masks"),
        train=FitConfig(size=64, device="cpu", seed=0),
        engine=EngineConfig(name="nnunet", epochs=1, iterations=10, val_iterations=2, processes=1),
    )
    result = train_segmenter(run, data, cfg, report=False)
    return {"run": run, "data": data, "result": result}


@pytest.mark.slow
def test_nnunet_trains_in_the_run_with_the_runs_split(nnunet_run):
    run, result = nnunet_run["run"], nnunet_run["result"]
    work = run / "nnunet"
    ds = work / "raw" / "Dataset501_lesion"
    assert (ds / "dataset.json").is_file() and (work / "log.txt").is_file()
    assert (work / "preprocessed" / "Dataset501_lesion" / "nnUNetPlans.json").is_file()  # nnU-Net's own plans
    folds = read_json(work / "preprocessed" / "Dataset501_lesion" / "splits_final.json")
    by_path = {r["path"]: r["split"] for r in read_csv_rows(run / "seg_split.csv")}
    cases = read_csv_rows(ds / "cases.csv")
    assert {r["case"] for r in cases if by_path[r["path"]] == "train"} == set(folds[0]["train"])
    assert {r["case"] for r in cases if by_path[r["path"]] == "val"} == set(folds[0]["val"])
    fold = Path(result["meta"]["nnunet"]["results"])
    assert fold.is_relative_to(work / "results") and (fold / "checkpoint_final.pth").is_file()
    meta = read_json(run / "segmenter.json")
    assert meta["engine"] == "nnunet" and meta["architecture"]["name"] == N.NNUNET_ARCH
    assert (
        meta["nnunet"]["trainer"] == "nnUNetTrainer_1epochs_10iters_2valiters"
        and meta["nnunet"]["base_trainer"] == "nnUNetTrainer"
    )
    assert meta["epochs"] == 1 and meta["epochs_run"] == 1 and len(meta["history"]) == 1
    assert result["scores"]["n_test"] >= 1 and "vs_expert" in result["scores"]


@pytest.mark.slow
def test_the_saved_segmenter_is_nnunets_network(nnunet_run):
    """segmenter.safetensors holds nnU-Net's final weights, and the loaded segmenter predicts what nnU-Net's
    own validation predicted for the validation cases (its preprocessing, sliding window and mirroring)."""
    import torch

    run, result = nnunet_run["run"], nnunet_run["result"]
    seg = U.load_segmenter(run)
    assert isinstance(seg.model, N.NnUNetNetwork) and seg.size == 64 and seg.in_channels == 1
    fold = Path(result["meta"]["nnunet"]["results"])
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    own = seg.model.network.state_dict()
    assert set(own) == set(ckpt["network_weights"])
    assert all(torch.equal(own[k], ckpt["network_weights"][k]) for k in own)
    val = sorted((fold / "validation").glob("case_*.png"))
    assert val
    inputs = [
        N.grey_at(
            read_image(run / "nnunet" / "raw" / "Dataset501_lesion" / "imagesTr" / f"{p.stem}_0000.png"), 64
        )
        for p in val
    ]
    probs = U.predict_proba(seg, [np.repeat(g[..., None], 3, 2) for g in inputs])
    theirs = [to_grey(read_image(p)) > 0 for p in val]
    assert any(t.any() for t in theirs) and not all(
        t.all() for t in theirs
    )  # nnU-Net outlines something: the comparison can fail
    assert all(p.shape == t.shape for p, t in zip(probs, theirs))
    agree = np.mean([np.mean((p > 0.5) == t) for p, t in zip(probs, theirs)])
    assert agree > 0.995, agree


@pytest.mark.slow
def test_segment_predict_uses_it_at_the_original_size(nnunet_run, tmp_path):
    run, data = nnunet_run["run"], nnunet_run["data"]
    out = tmp_path / "masks"
    result = CliRunner().invoke(
        app, ["segment", "predict", str(run), str(data / "malignant"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    originals = sorted((data / "malignant").glob("*.png"))
    for f in originals:
        mask, outline = read_image(out / f"{f.stem}_mask.png"), out / f"{f.stem}_outline.png"
        assert mask.shape[:2] == read_image(f).shape[:2] and outline.is_file()
    assert "nnUNet_raw is not defined" not in result.stdout  # nnU-Net's notices stay off the command's output
