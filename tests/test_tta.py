"""Flip test-time augmentation (``Predictor(tta="flip")``, ``predict --tta flip``): each image's logits
are the mean of the model's logits on it and on its mirror, with either backend, and the
out-of-distribution score stays the one of the image as it is."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from liverscope.errors import LiverscopeError
from liverscope.inference.export import export_onnx
from liverscope.inference.predict import Predictor
from liverscope.ui.cli import app
from liverscope.utils import read_json


def _images(phantom_dir, predictor, n=3):
    files = [sorted((phantom_dir / c).glob("*.png"))[0] for c in ("F0", "F2", "F4")][:n]
    return [predictor.prepare(f) for f in files]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_flip_averages_the_logits_of_the_image_and_its_mirror(trained_run, phantom_dir, tmp_path, backend):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt"))
    if backend == "onnx":
        export_onnx(run)
    kwargs = dict(backend=backend, precision="fp32") if backend == "torch" else dict(backend=backend)
    plain = Predictor.from_run(run, **kwargs)
    flip = Predictor.from_run(run, tta="flip", **kwargs)
    images = _images(phantom_dir, plain)
    mirrored = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    expected = (plain.logits(images) + plain.logits(mirrored)) / 2
    assert np.abs(flip.logits(images) - expected).max() < 1e-4
    assert not np.allclose(
        plain.logits(images), plain.logits(mirrored), atol=1e-4
    )  # the mirror is a different input
    a, b = plain.predict_arrays(images), flip.predict_arrays(images)
    assert [r.ood_score for r in a] == pytest.approx([r.ood_score for r in b], rel=1e-4)
    assert "flip-averaged" in flip.describe() and flip.precision == plain.precision


def test_flip_on_files_through_the_onnx_layout_and_energy_ood(trained_run, phantom_dir, tmp_path):
    """``predict_paths`` with ONNX Runtime builds channels-first batches: the mirror must flip their
    width there too. The energy score stays the one of the plain logits."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt"))
    export_onnx(run)
    plain = Predictor.from_run(run, backend="onnx")
    flip = Predictor.from_run(run, backend="onnx", tta="flip")
    assert flip.engine.channels_first
    files = [sorted((phantom_dir / c).glob("*.png"))[1] for c in ("F0", "F2", "F4")]
    images = [plain.prepare(f) for f in files]
    mirrored = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    expected = (plain.logits(images) + plain.logits(mirrored)) / 2
    got = np.array([r.logits for r in flip.predict_paths(files)])
    assert np.abs(got - expected).max() < 1e-4
    for p in (plain, flip):
        p.ood = {"method": "energy", "threshold": 0.0}
    a, b = plain.predict_arrays(images), flip.predict_arrays(images)
    assert [r.ood_score for r in a] == pytest.approx([r.ood_score for r in b], rel=1e-5)
    assert not np.allclose([r.logits for r in a], [r.logits for r in b], atol=1e-4)


def test_evaluate_on_new_data_with_flip(trained_run, phantom_dir, tmp_path):
    """``liverscope evaluate RUN DATA --tta flip`` scores each image with the flip average and says so."""
    data = tmp_path / "site"
    for c in ("F0", "F2", "F4"):
        (data / c).mkdir(parents=True)
        for f in sorted((phantom_dir / c).glob("*.png"))[:2]:
            shutil.copy(f, data / c / f.name)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["evaluate", str(trained_run), str(data), "--out", str(out), "--device", "cpu", "--tta", "flip"]
    )
    assert result.exit_code == 0, result.output
    metrics = read_json(out / "metrics.json")
    assert (
        metrics["tta"] == "flip" and metrics["test"]["precision"] == "fp32"
    )  # evaluate scores in fp32 on every CPU
    plain = Predictor.from_run(trained_run, backend="torch", precision="fp32", calibrated=False)
    rows = {r["path"]: r for r in csv.DictReader(open(out / "predictions_test.csv"))}
    flip = Predictor.from_run(trained_run, backend="torch", precision="fp32", tta="flip", calibrated=False)
    files = sorted(data.rglob("*.png"))
    for r, q in zip(flip.predict_paths(files), plain.predict_paths(files)):
        assert rows[r.path]["precision"] == "fp32"
        got = [float(rows[r.path][f"logit_{c}"]) for c in flip.labels]
        assert got == pytest.approx(
            r.logits, abs=1e-4
        )  # both fp32: only the CSV's 6 decimals and kernel rounding differ
        assert (
            np.abs(np.array(r.logits) - q.logits).max() > 1e-2
        )  # what plain scoring would have written differs


def test_unknown_tta_is_a_clear_error(trained_run):
    with pytest.raises(LiverscopeError, match="tta 'rotate'"):
        Predictor.from_run(trained_run, backend="torch", tta="rotate")
