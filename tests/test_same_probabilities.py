"""One path from a file to its probabilities: ``explain``, ``predict`` and the app read an image the same
way (:meth:`Predictor.load`) and score it with the same backend and precision, so they give the same
probabilities to within 1e-4 (in fp32 and in bf16, which runs on any CPU), and ONNX Runtime's are within
1e-3 of PyTorch's. Images: phantoms, a large one on a grey-10 background, an RGB one."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import liverscope.ui.app as appmod
from liverscope.explain.files import explain_paths
from liverscope.inference.export import export_onnx
from liverscope.inference.predict import Predictor


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory):
    """A copy of the trained run (an ONNX export is added to it)."""
    out = tmp_path_factory.mktemp("same") / "run"
    shutil.copytree(trained_run, out, ignore=shutil.ignore_patterns("checkpoints"))
    return out


@pytest.fixture(scope="module")
def files(phantom_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    picked = [sorted((phantom_dir / c).glob("*.png"))[2] for c in ("F0", "F1", "F2", "F3", "F4")]
    for f in picked:
        shutil.copy(f, folder / f.name)
    grey = cv2.imread(str(picked[4]), cv2.IMREAD_GRAYSCALE)
    big = np.full(
        (1800, 2400), 10, np.uint8
    )  # a fan image on a grey-10 background, far larger than the model input
    big[100:1700, 400:2000] = cv2.resize(grey, (1600, 1600), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(folder / "large.png"), big)
    rgb = cv2.cvtColor(cv2.resize(cv2.imread(str(picked[2])), (120, 90)), cv2.COLOR_BGR2RGB)
    rgb[5:15, 5:40] = (255, 200, 0)  # a coloured annotation: a true RGB image
    cv2.imwrite(str(folder / "colour.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return sorted(folder.glob("*.png"))


def _three_ways(
    run: Path, files: list[Path], out: Path, backend: str, precision: str = "auto"
) -> tuple[dict, dict, dict, dict]:
    """Probabilities per file name from explain's cams.csv, from predict's Predictor, and from the app's
    upload path; and explain's summary. Each with its own batch size, as a user runs it."""
    summary = explain_paths(run, files, out, backend=backend, device="cpu", precision=precision)
    with open(out / "cams.csv", newline="") as fh:
        explained = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    predicted = {
        Path(r.path).name: r
        for r in Predictor.from_run(run, backend=backend, device="cpu", precision=precision).predict_paths(
            files
        )
    }
    app_predictor = Predictor.from_run(
        run, backend=backend, batch_size=1, precision=precision
    )  # as the app loads it
    served = {
        f.name: appmod.analyse_upload(app_predictor, f.name, f.read_bytes(), 2**30, with_cam=False).result
        for f in files
    }
    return explained, predicted, served, summary


def _agree(explained: dict, predicted: dict, served: dict, atol: float) -> None:
    for name, r in predicted.items():
        assert r.error is None and served[name].error is None and explained[name]["error"] == ""
        assert served[name].label == r.label == explained[name]["predicted"], name
        np.testing.assert_allclose(
            [served[name].probs[c] for c in r.probs], list(r.probs.values()), atol=atol, err_msg=name
        )
        assert abs(float(explained[name]["prob_predicted"]) - r.probs[r.label]) <= atol, name


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_explain_predict_and_the_app_give_the_same_probabilities(precision, run, files, tmp_path):
    explained, predicted, served, summary = _three_ways(run, files, tmp_path / "cams", "torch", precision)
    want = "fp32" if precision == "auto" else "bf16"
    assert summary["precision"] == want and {r.precision for r in predicted.values()} == {
        r.precision for r in served.values()
    } == {want}
    _agree(explained, predicted, served, 1e-4)


def test_onnx_agrees_with_torch_and_explain_follows_the_backend(run, files, tmp_path):
    export_onnx(run)
    explained, predicted, served, summary = _three_ways(run, files, tmp_path / "cams", "onnx")
    assert summary["backend"] == "onnx"
    _agree(explained, predicted, served, 1e-4)
    torch_probs = {
        Path(r.path).name: r.probs
        for r in Predictor.from_run(run, backend="torch", precision="fp32").predict_paths(files)
    }
    for name, r in predicted.items():
        np.testing.assert_allclose(
            list(r.probs.values()), [torch_probs[name][c] for c in r.probs], atol=1e-3, err_msg=name
        )
