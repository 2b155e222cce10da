"""The README's table of exit codes, one test per row: 0 done (bad inputs listed as skipped), 1 nothing
to process, 1 every input failed, 1 a failure while running, 1 ``audit --strict`` with leakage risks,
2 a value outside its choices or range, 2 options that exclude each other, 2 a recipe or model that
does not exist. The usage errors (2) are also checked to come before any work: nothing is written.

Kept fast: the run is an untrained ResNet-10-T at 32 px (exit codes do not need a trained model) and the
images are a handful of tiny phantoms."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from liverscope.data.datasets import make_phantoms
from liverscope.data.preprocess import Preprocessing
from liverscope.models import build_model
from liverscope.rundir import save_model
from liverscope.ui.cli import app

LABELS = ["F0", "F1", "F2", "F3", "F4"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory holding an untrained resnet10t at 32 px."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("exit-codes") / "tiny-run"
    run_dir.mkdir()
    save_model(run_dir, build_model("resnet10t", len(LABELS)), LABELS, Preprocessing(size=32, denoise=False))
    return run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A class-per-folder tree: 2 phantoms of 32 px per stage."""
    return make_phantoms(tmp_path_factory.mktemp("exit-phantoms"), n_per_class=2, size=32, seed=0)


@pytest.fixture
def broken(tmp_path) -> Path:
    """A folder in which every image file is unreadable: a text file named .png and an empty .jpg."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "notes.png").write_text("this is not an image")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder (the current one): default outputs land here, so 'nothing written' is checkable."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------------
# 0: done; inputs that could not be read are listed as skipped and the rest finish
# --------------------------------------------------------------------------------------------------


def test_0_done_with_unreadable_inputs_listed_as_skipped(run, images, broken, work):
    mixed = work / "mixed"
    shutil.copytree(images / "F0", mixed)
    shutil.copy(broken / "notes.png", mixed / "notes.png")
    res = _invoke(
        "predict",
        run,
        mixed,
        "--out",
        work / "p.csv",
        "--backend",
        "torch",
        "--precision",
        "fp32",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert (
        "predicted 2 image(s)" in res.output
        and "skipped 1 file(s)" in res.output
        and "notes.png" in res.output
    )
    with open(work / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and sum(bool(r["error"]) for r in rows) == 1
    # the format follows the extension: .json writes JSON
    res = _invoke(
        "predict",
        run,
        mixed,
        "--out",
        work / "p.json",
        "--backend",
        "torch",
        "--precision",
        "fp32",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert len(json.loads((work / "p.json").read_text())) == 3


# --------------------------------------------------------------------------------------------------
# 1: nothing to process (no path exists, or no image file is found)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["predict"], ["explain"], ["segment", "predict"]], ids=" ".join)
def test_1_nothing_to_process(command, run, work):
    empty = work / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")  # a file, but not an image file
    out = work / ("out.csv" if command == ["predict"] else "out")
    res = _invoke(*command, run, empty, "--out", out)
    assert res.exit_code == 1, res.output
    assert "no image files in" in res.output and str(empty) in res.output
    res = _invoke(*command, run, work / "missing.png", "--out", out)
    assert res.exit_code == 1, res.output
    assert "missing.png: does not exist" in res.output
    assert not out.exists()  # refused before any output was written


# --------------------------------------------------------------------------------------------------
# 1: every input failed
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["predict", "--backend", "torch"], ["explain"], ["segment", "pseudo"]],
    ids=["predict", "explain", "segment pseudo"],
)
def test_1_every_input_failed(command, run, broken, work):
    out = work / ("out.csv" if command[0] == "predict" else "out")
    res = _invoke(*command, run, broken, "--out", out)
    assert res.exit_code == 1, res.output
    assert "all 2 input file(s) failed" in res.output
    assert "notes.png" in res.output and "empty.jpg" in res.output  # each listed with its reason
    assert "file is empty" in res.output


def test_1_predict_keeps_the_reasons_when_every_input_failed(run, broken, work):
    res = _invoke("predict", run, broken, "--out", work / "p.csv", "--backend", "torch")
    assert res.exit_code == 1 and "no image predicted" in res.output
    with open(work / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["error"] and not r["prediction"] for r in rows)


# --------------------------------------------------------------------------------------------------
# 1: a failure while running (bad data, a folder that is not a run, a missing export)
# --------------------------------------------------------------------------------------------------


def test_1_failure_while_running(run, images, work):
    no_classes = work / "flat"
    no_classes.mkdir()
    res = _invoke("train", no_classes, "--out-dir", work / "runs", "--epochs", "1")
    assert res.exit_code == 1 and "no class folders" in res.output, res.output
    not_a_run = work / "not-a-run"
    not_a_run.mkdir()
    res = _invoke("predict", not_a_run, images, "--out", work / "p.csv")
    assert res.exit_code == 1 and str(not_a_run) in res.output, res.output
    res = _invoke("predict", run, images, "--backend", "onnx", "--out", work / "p.csv")
    assert res.exit_code == 1 and "liverscope export" in res.output, res.output


# --------------------------------------------------------------------------------------------------
# 1: audit --strict found leakage risks
# --------------------------------------------------------------------------------------------------


def test_1_audit_strict_with_leakage_risks(images, work):
    data = work / "data"
    shutil.copytree(images, data, ignore=shutil.ignore_patterns("masks"))
    res = _invoke("audit", data, "--out", work / "audit-clean", "--strict")
    assert res.exit_code == 0, res.output  # distinct images: nothing to refuse
    first = sorted((data / "F1").glob("*.png"))[0]
    shutil.copy(first, data / "F1" / "copy-of-first.png")
    res = _invoke("audit", data, "--out", work / "audit-dup", "--strict")
    assert res.exit_code == 1, res.output
    res = _invoke("audit", data, "--out", work / "audit-lax")
    assert res.exit_code == 0, res.output  # without --strict the risk is reported, not an error


# --------------------------------------------------------------------------------------------------
# 2: usage errors, found before any work: nothing is written, the run is untouched
# --------------------------------------------------------------------------------------------------


def _usage_error(args, expected, run, work):
    before = _listing(run)
    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert expected in res.output, res.output
    assert _listing(work) == [] and _listing(run) == before  # before any work


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "{data}", "--optimizer", "adma", "--out-dir", "{work}"], "adamw"),
        (["train", "{data}", "--epochs", "0", "--out-dir", "{work}"], "train.epochs (--epochs) is 0"),
        (
            ["train", "{data}", "--set", "train.epochs=0", "--out-dir", "{work}"],
            "train.epochs (--epochs) is 0",
        ),
        (["cv", "{data}", "--epochs", "0", "--out-dir", "{work}"], "train.epochs (--epochs) is 0"),
        (["demo", "--epochs", "0", "--out-dir", "{work}"], "train.epochs (--epochs) is 0"),
        (["train", "{data}", "--device", "gpu", "--out-dir", "{work}"], "cuda:N"),
        (["segment", "train", "{run}", "{data}", "--epochs", "0"], "--epochs"),
        (["segment", "train", "{run}", "{data}", "--loss", "dice"], "bce+dice"),
        (["segment", "train", "{run}", "{data}", "--confident", "0.6,0.3"], "LOW < HIGH"),
        (["segment", "train", "{run}", "{data}", "--size", "30"], "multiple of 8"),
        (["segment", "pseudo", "{run}", "{data}", "--rule", "magic"], "otsu"),
        (["predict", "{run}", "{data}", "--out", "{work}/x.txt"], "name a .csv or .json file"),
        (["predict", "{run}", "{data}", "--out", "{work}/x.parquet"], "name a .csv or .json file"),
        (["predict", "{run}", "{data}", "--device", "gpu"], "cuda:N"),
        (["predict", "{run}", "{data}", "--batch-size", "0"], "--batch-size"),
        (["explain", "{run}", "{data}", "--method", "foo"], "unknown CAM method 'foo'"),
        (["explain", "{run}", "{data}", "--class", "F9"], "not a label"),
        (["cv", "{data}", "--k", "1", "--out-dir", "{work}"], "--k"),
        (["cv", "{data}", "--test-frac", "1", "--out-dir", "{work}"], "--test-frac"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_2_value_outside_its_choices_or_range(args, expected, run, images, work):
    _usage_error([a.format(run=run, data=images, work=work) for a in args], expected, run, work)


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["predict", "{run}", "{data}", "--int8", "--backend", "torch"],
            "--int8 and --backend torch exclude each other",
        ),
        (["predict", "{run}", "{data}", "--precision", "bf16", "--backend", "onnx"], "exclude each other"),
        (["predict", "{run}", "{data}", "--precision", "fp32", "--int8"], "exclude each other"),
        (["evaluate", "{run}", "--out", "{work}/x", "--in-run"], "--out and --in-run exclude each other"),
        (["evaluate", "{run}", "--tta", "flip"], "give DATA or drop --tta"),
        (["cv", "{data}", "--prepare", "--aggregate", "--out-dir", "{work}"], "exclude each other"),
        (["serve", "{run}", "--int8", "--backend", "torch"], "--int8 and --backend torch exclude each other"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_2_options_that_exclude_each_other(args, expected, run, images, work, monkeypatch):
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("serve started the app"))
    _usage_error([a.format(run=run, data=images, work=work) for a in args], expected, run, work)


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["demo", "--recipe", "nope", "--out-dir", "{work}"],
            "recipe 'nope' not found",
        ),  # no phantoms generated
        (
            ["train", "{data}", "--recipe", "nope", "--out-dir", "{work}"],
            "lesions",
        ),  # the error lists the shipped recipes
        (["cv", "{data}", "--recipe", "nope", "--out-dir", "{work}"], "cpu-quick"),
        (["train", "{data}", "--model", "resnet99", "--out-dir", "{work}"], "resnet10t"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_2_recipe_or_model_that_does_not_exist(args, expected, run, images, work):
    _usage_error([a.format(run=run, data=images, work=work) for a in args], expected, run, work)
