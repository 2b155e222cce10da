"""Numeric precision: ``auto`` is fp32 on every CPU (native bf16 or not: the same answers everywhere),
``evaluate`` scores in fp32, bf16 runs only when asked (on any CPU: autocast is emulated where not
native, only slower, so these tests exercise the bf16 path everywhere), and every output says which
precision made it."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from liverscope import utils
from liverscope.inference.predict import Predictor, write_results
from liverscope.models import backends, build_model
from liverscope.models.backends import BF16_TOLERANCE, TorchBackend
from liverscope.training.external import evaluate_on_data
from liverscope.utils import read_json, softmax, strict_fp32


@pytest.fixture
def native_bf16(monkeypatch):
    """Look like a CPU with native bf16 (AVX512-BF16/AMX) to anything that asks, whatever this one has."""
    monkeypatch.setattr(utils, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True, raising=False)


@pytest.fixture(scope="module")
def site(phantom_dir, tmp_path_factory):
    """A small labelled set: 3 phantoms of each of F0, F2, F4."""
    data = tmp_path_factory.mktemp("site")
    for c in ("F0", "F2", "F4"):
        (data / c).mkdir()
        for f in sorted((phantom_dir / c).glob("*.png"))[:3]:
            shutil.copy(f, data / c / f.name)
    return data


def _files(site):
    return sorted(site.rglob("*.png"))


def test_auto_is_fp32_even_on_a_native_bf16_cpu(native_bf16, trained_run, site):
    assert TorchBackend(build_model("resnet10t", 3), "cpu", "auto").precision == "fp32"
    p = Predictor.from_run(trained_run, backend="torch")
    assert {r.precision for r in p.predict_paths(_files(site))} == {"fp32"} and p.engine.bf16_check is None


def test_strict_fp32_turns_tf32_off_on_a_gpu_only_and_restores_it():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with strict_fp32("cpu"):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with strict_fp32("cuda:0"):  # flags only: no GPU needed
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_bf16_runs_on_any_cpu_and_every_batch_in_it(trained_run, site):
    """bf16 asked for: kept after the first-batch check, every result (the first batch's too) computed
    in bf16 and saying so, within the check's tolerance of fp32."""
    files = _files(site)
    ref = Predictor.from_run(trained_run, backend="torch", precision="fp32", batch_size=3)
    low = Predictor.from_run(trained_run, backend="torch", precision="bf16", batch_size=3)
    want, got = list(ref.predict_paths(files)), list(low.predict_paths(files))
    assert low.precision == "bf16" and low.engine.bf16_check["kept"]
    assert {r.precision for r in got} == {"bf16"} and {r.precision for r in want} == {"fp32"}
    logits_ref, logits_low = np.array([r.logits for r in want]), np.array([r.logits for r in got])
    assert np.abs(logits_low - logits_ref).max() > 1e-4  # bf16 really ran (it rounds the logits)
    assert np.abs(softmax(logits_low) - softmax(logits_ref)).max() <= BF16_TOLERANCE
    # the first batch is not special: the same image scores the same first or last
    again = Predictor.from_run(trained_run, backend="torch", precision="bf16", batch_size=3)
    reordered = {r.path: r.logits for r in again.predict_paths(files[::-1])}
    first = {r.path: r.logits for r in got[:3]}
    for path, lg in first.items():
        np.testing.assert_allclose(reordered[path], lg, atol=1e-6)


def test_outputs_say_the_precision(trained_run, site, tmp_path):
    p = Predictor.from_run(trained_run, backend="torch", precision="bf16")
    files = _files(site)
    write_results(p.predict_paths(files), p.labels, tmp_path / "out.csv")
    write_results(p.predict_paths(files), p.labels, tmp_path / "out.json")
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert len(rows) == len(files) and {r["precision"] for r in rows} == {"bf16"}
    assert {item["precision"] for item in json.loads((tmp_path / "out.json").read_text())} == {"bf16"}
    assert p.predict(files[0]).precision == "bf16"


def test_evaluate_scores_in_fp32_on_a_native_bf16_cpu(native_bf16, trained_run, site, tmp_path):
    """The figures of ``evaluate`` do not depend on the CPU: fp32 unless asked, recorded in
    ``metrics.json``, the predictions CSV and the report; asked for bf16, it says bf16."""
    out = evaluate_on_data(trained_run, site, out=tmp_path / "eval", device="cpu")
    metrics = read_json(out / "metrics.json")
    assert metrics["test"]["precision"] == "fp32"
    rows = {r["path"]: r for r in csv.DictReader(open(out / "predictions_test.csv"))}
    fp32 = Predictor.from_run(trained_run, backend="torch", precision="fp32", calibrated=False)
    labels = fp32.labels
    for r in fp32.predict_paths(_files(site)):
        assert rows[r.path]["precision"] == "fp32"
        np.testing.assert_allclose([float(rows[r.path][f"logit_{c}"]) for c in labels], r.logits, atol=2e-5)
    report = (out / "report.html").read_text()
    assert "numeric precision" in report and "fp32" in report

    low = evaluate_on_data(trained_run, site, out=tmp_path / "eval-bf16", device="cpu", precision="bf16")
    assert read_json(low / "metrics.json")["test"]["precision"] == "bf16"
    low_rows = {r["path"]: r for r in csv.DictReader(open(low / "predictions_test.csv"))}
    assert {r["precision"] for r in low_rows.values()} == {"bf16"}
    diff = max(
        abs(float(low_rows[p][f"logit_{c}"]) - float(rows[p][f"logit_{c}"])) for p in rows for c in labels
    )
    assert diff > 1e-4  # bf16 figures are not fp32's
    assert "bf16" in (low / "report.html").read_text()


def test_training_records_fp32_for_its_own_splits(trained_run):
    assert read_json(trained_run / "metrics.json")["test"]["precision"] == "fp32"
    rows = list(csv.DictReader(open(trained_run / "predictions_test.csv")))
    assert rows and {r["precision"] for r in rows} == {"fp32"}
