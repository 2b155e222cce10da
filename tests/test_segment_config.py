"""The typed configuration of ``segment train`` (issue 25): defaults as before (masks vs pseudo-masks),
defaults < YAML (--config) < flags < --set, usage errors before any work, the config saved in the
segmenter's .json and read back from it."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from liverscope import segment as S
from liverscope.errors import UsageError
from liverscope.segment.config import (
    FLAGS,
    FitConfig,
    SegmentConfig,
    checked,
    load_segment_config,
    segment_config,
)
from liverscope.segment.unet import MASKS_DEFAULTS, PSEUDO_DEFAULTS, segmenter_defaults
from liverscope.ui.cli import app


def test_defaults_resolve_as_before_with_and_without_masks():
    pseudo, given = segment_config(), segment_config(masks="m")
    assert (pseudo.network.arch, pseudo.train.loss, pseudo.train.epochs) == segmenter_defaults(False)
    assert (given.network.arch, given.train.loss, given.train.epochs) == segmenter_defaults(True)
    assert (given.network.arch, given.train.loss, given.train.size) == (
        MASKS_DEFAULTS["arch"],
        MASKS_DEFAULTS["loss"],
        192,
    )
    assert (
        pseudo.network.arch == PSEUDO_DEFAULTS["arch"] and pseudo.train.size is None
    )  # the classifier's size, read with the run
    # what the flags defaulted to before the config
    assert (
        pseudo.target,
        pseudo.network.channels,
        pseudo.train.batch_size,
        pseudo.train.lr,
        pseudo.train.seed,
    ) == ("lesion", [8, 16, 32, 64], 8, 1e-3, 0)
    assert (pseudo.pseudo.rule, pseudo.pseudo.q, pseudo.pseudo.method, pseudo.engine.name) == (
        "threshold",
        20.0,
        "gradcam",
        "liverscope",
    )
    # given values are kept; checking twice changes nothing
    mine = segment_config(masks="m", arch="attention-unet", loss="bce", epochs=5, size=64)
    assert (mine.network.arch, mine.train.loss, mine.train.epochs, mine.train.size) == (
        "attention-unet",
        "bce",
        5,
        64,
    )
    assert checked(mine) == mine and checked(SegmentConfig()) == pseudo


def test_nnunet_keeps_its_own_epochs_unless_given():
    assert (
        segment_config(engine="nnunet").engine.epochs is None
        and segment_config(engine="nnunet").train.epochs is None
    )
    assert segment_config(engine="nnunet", epochs=3).engine.epochs == 3


def test_yaml_then_flags_then_set(tmp_path):
    f = tmp_path / "seg.yaml"
    f.write_text(
        "target: liver\ntrain:\n  epochs: 5\n  lr: 0.01\n  patience: 3\n"
        "pseudo:\n  rule: otsu\n  confident: [0.2, 0.7]\n"
    )
    cfg = load_segment_config(f)
    assert (cfg.target, cfg.train.epochs, cfg.train.lr, cfg.train.patience, cfg.pseudo.rule) == (
        "liver",
        5,
        0.01,
        3,
        "otsu",
    )
    assert cfg.pseudo.confident == [0.2, 0.7]
    cfg = load_segment_config(f, {"epochs": 7, "rule": None})  # None: a flag not given keeps the file's value
    assert cfg.train.epochs == 7 and cfg.pseudo.rule == "otsu" and cfg.train.lr == 0.01
    cfg = load_segment_config(
        f,
        {"epochs": 7},
        ["train.epochs=9", "train.patience=null", "network.channels=4,8", "pseudo.positive=a, b"],
    )
    assert (cfg.train.epochs, cfg.train.patience, cfg.network.channels, cfg.pseudo.positive) == (
        9,
        None,
        [4, 8],
        ["a", "b"],
    )
    assert cfg.train.lr == 0.01 and cfg.target == "liver"


def test_text_takes_the_type_of_the_setting():
    cfg = load_segment_config(
        settings=["train.lr=3e-4", "train.flip=false", "train.size=64", "pseudo.threshold=0.4", "masks=m"]
    )
    assert (cfg.train.lr, cfg.train.flip, cfg.train.size, cfg.pseudo.threshold, cfg.masks) == (
        3e-4,
        False,
        64,
        0.4,
        "m",
    )
    for bad, named in [
        ("train.epochs=many", "train.epochs"),
        ("train.flip=3", "train.flip"),
        ("network.channels=8,x", "network.channels"),
    ]:
        with pytest.raises(UsageError, match=named):
            load_segment_config(settings=[bad])


@pytest.mark.parametrize(
    "item, expected",
    [
        ("train.epochz=3", "unknown setting 'train.epochz'"),
        ("colour=red", "unknown setting 'colour'"),
        ("train.epochs=many", "'train.epochs' must be a number"),
        ("train.loss=dice", "'train.loss' is 'dice'; choose one of: bce, bce+dice"),
        ("network.arch=unet9", "attention-unet, unet-lite0"),
        ("pseudo.rule=magic", "threshold, otsu, top, grabcut"),
        ("engine.name=nnU-Net", "liverscope, nnunet"),
        ("pseudo.method=foo", "unknown CAM method 'foo'"),
        ("train.epochs=0", "train.epochs (--epochs) is 0"),
        ("pseudo.confident=0.6,0.3", "LOW < HIGH"),
        ("train.size=30", "multiple of 8"),
        ("train.device=gpu", "cuda:N"),
        ("train", "KEY=VALUE"),
    ],
)
def test_set_errors_exit_2_before_any_work(item, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "train_segmenter", lambda *a, **k: pytest.fail("segment train started"))
    run, data = tmp_path / "run", tmp_path / "data"
    res = CliRunner().invoke(app, ["segment", "train", str(run), str(data), "--set", item])
    assert res.exit_code == 2, res.output
    assert expected in res.output, res.output
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--loss", "dice"], "--loss: 'train.loss' is 'dice'; choose one of: bce, bce+dice"),
        (["--arch", "unet9"], "--arch"),
        (["--rule", "magic"], "--rule"),
        (["--method", "foo"], "--method"),
        (["--config", "no-such.yaml"], "--config no-such.yaml: no such file"),
    ],
)
def test_flag_errors_name_the_flag(args, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "train_segmenter", lambda *a, **k: pytest.fail("segment train started"))
    res = CliRunner().invoke(app, ["segment", "train", str(tmp_path / "run"), str(tmp_path / "data"), *args])
    assert res.exit_code == 2 and expected in res.output, res.output


def test_cli_flags_given_override_the_file_and_defaults_do_not(tmp_path, monkeypatch):
    seen = {}

    def fake_train(run_dir, data, cfg, **kw):
        seen.update(cfg=cfg, kw=kw)
        return {"summary_lines": ["ok"]}

    monkeypatch.setattr(S, "train_segmenter", fake_train)
    f = tmp_path / "seg.yaml"
    f.write_text(
        "masks: somewhere\ntrain:\n  batch_size: 16\n  seed: 4\n  epochs: 5\nnetwork:\n  channels: [4, 8]\n"
    )
    res = CliRunner().invoke(
        app,
        [
            "segment",
            "train",
            "run",
            "data",
            "--config",
            str(f),
            "--seed",
            "0",
            "--epochs",
            "6",
            "--set",
            "train.lr=0.01",
            "--resume",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.masks, cfg.train.batch_size, cfg.network.channels) == (
        "somewhere",
        16,
        [4, 8],
    )  # not given: the file's
    assert (cfg.train.seed, cfg.train.epochs, cfg.train.lr) == (
        0,
        6,
        0.01,
    )  # given (even at the default value), --set
    assert cfg.network.arch == "unet-lite0" and cfg.train.size == 192 and seen["kw"] == {"resume": True}


def test_every_settings_flag_of_segment_train_has_a_setting():
    import typer.main

    command = typer.main.get_command(app).commands["segment"].commands["train"]
    params = {p.name for p in command.params} - {"ctx", "run_dir", "data", "resume", "config", "settings"}
    assert params <= set(FLAGS), params - set(FLAGS)


def test_config_round_trips_through_the_segmenters_json(tmp_path):
    import torch

    from liverscope.data.datasets import make_phantoms
    from liverscope.data.preprocess import Preprocessing
    from liverscope.models.registry import build_model
    from liverscope.rundir import save_model
    from liverscope.utils import read_json

    data = make_phantoms(
        tmp_path / "data", n_per_class=3, classes=("benign", "malignant", "normal"), size=32, seed=3
    )
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    save_model(
        run,
        build_model("resnet10t", 3, head="linear"),
        ["benign", "malignant", "normal"],
        Preprocessing(size=32, denoise=False),
    )
    cfg = segment_config(
        masks=data / "masks",
        target="liver",
        arch="attention-unet",
        channels=(4, 8),
        epochs=1,
        max_steps=1,
        size=32,
        device="cpu",
    )
    result = S.train_segmenter(run, data, cfg, report=False)
    saved = read_json(run / "segmenter-liver.json")
    assert saved["config"] == result["meta"]["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert (
        saved["config"]["train"]["loss"] == saved["loss"] == "bce+dice"
        and saved["config"]["train"]["size"] == saved["size"] == 32
    )
    again = load_segment_config(run / "segmenter-liver.json")  # --config reads a segmenter's .json back
    assert again == cfg
    f = tmp_path / "rerun.yaml"
    f.write_text(yaml.safe_dump(saved["config"]))
    assert load_segment_config(f) == cfg
    assert isinstance(again.train, FitConfig)
