"""The prediction backend of an exported run chosen by measurement (issue 26, item 2): candidates,
the fastest that keeps the fp32 labels, the per-machine cache, and ``--backend`` still deciding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from liverscope import rundir
from liverscope.inference import predict
from liverscope.inference.export import export_onnx
from liverscope.inference.predict import Predictor
from liverscope.speed import cache, serving
from liverscope.speed.serving import candidates, choose_backend, pick


def _t(seconds: float, agree: float = 1.0, kept: bool = True) -> dict:
    return {
        "seconds_per_image": seconds,
        "label_agreement": agree,
        "precision_kept": kept,
        "batch": 4,
        "max_prob_diff": 0.0,
    }


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt"))
    export_onnx(run)
    return run


def test_pick_is_the_fastest_that_keeps_the_labels():
    assert pick({"torch-fp32": _t(2.0), "onnx-fp32": _t(1.0)}) == "onnx-fp32"
    assert pick({"torch-fp32": _t(1.0), "onnx-fp32": _t(2.0)}) == "torch-fp32"
    # faster but changes a label, or its own bf16 check fell back: not chosen
    assert (
        pick({"torch-fp32": _t(2.0), "onnx-fp32": _t(1.5), "onnx-int8": _t(0.5, agree=15 / 16)})
        == "onnx-fp32"
    )
    assert pick({"torch-fp32": _t(2.0), "torch-bf16": _t(0.5, kept=False)}) == "torch-fp32"
    assert pick({"torch-fp32": _t(2.0), "onnx-fp32": _t(1.5), "torch-bf16": _t(0.5)}) == "torch-bf16"
    # a lower precision must be clearly faster than the fastest fp32
    assert pick({"torch-fp32": _t(2.0), "onnx-fp32": _t(1.0), "onnx-int8": _t(0.99)}) == "onnx-fp32"


def test_candidates_follow_the_exports_and_the_int8_bar(trained_run, exported, tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "native_bf16", lambda device: False)
    assert candidates(trained_run, "cpu") == ["torch-fp32"]  # no export
    assert candidates(exported, "cpu") == ["torch-fp32", "onnx-fp32"]
    monkeypatch.setattr(serving, "native_bf16", lambda device: True)
    assert candidates(exported, "cpu") == ["torch-fp32", "torch-bf16", "onnx-fp32"]
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    (run / rundir.ONNX_INT8).write_bytes((run / rundir.ONNX).read_bytes())  # stands in for a quantised file
    int8 = {
        "onnx_sha256": rundir.file_sha256(run / rundir.ONNX_INT8),
        "fp32_onnx_sha256": rundir.file_sha256(run / rundir.ONNX),
    }
    rundir.update_model_meta(run, onnx_int8={**int8, "meets_bar": False})
    assert rundir.onnx_int8_state(run)[1] == "current"
    assert "onnx-int8" not in candidates(run, "cpu")  # below the label bar: never timed
    rundir.update_model_meta(run, onnx_int8={**int8, "meets_bar": True})
    assert candidates(run, "cpu")[-1] == "onnx-int8"


def test_choice_is_measured_on_the_runs_images_and_cached(exported, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "timings.json"))
    first = choose_backend(exported, "cpu", {"torch-fp32": 4, "torch-bf16": 4, "onnx-fp32": 2})
    assert not first["cached"] and "images of the run" in first["inputs"]
    assert first["choice"] in first["timings"] and first["timings"]["torch-fp32"]["label_agreement"] == 1.0
    assert first["timings"]["onnx-fp32"]["label_agreement"] == 1.0  # the export keeps fp32's labels
    assert (
        all(t["seconds_per_image"] > 0 for t in first["timings"].values())
        and first["choice"] in first["reason"]
    )
    monkeypatch.setattr(serving, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = choose_backend(exported, "cpu", {"torch-fp32": 4, "torch-bf16": 4, "onnx-fp32": 2})
    assert again["cached"] and again["choice"] == first["choice"] and again["timings"] == first["timings"]


def test_auto_follows_the_measurement_and_backend_overrides_it(exported, monkeypatch):
    made = {}

    def fake(run_dir, device="auto", batch_sizes=None, use_cache=True, model_loader=None):
        made["batch_sizes"] = batch_sizes
        return {"choice": "torch-bf16", "backend": "torch", "precision": "bf16", "reason": "chosen by a test"}

    monkeypatch.setattr(predict, "choose_backend", fake)
    p = Predictor.from_run(exported)
    assert (
        p.backend == "torch" and p.engine.precision == "bf16" and p.backend_choice["choice"] == "torch-bf16"
    )
    assert (
        "chosen by measurement" in p.describe()
        and made["batch_sizes"]["onnx-fp32"] == predict.DEFAULT_BATCH_SIZE[("onnx", "cpu")]
    )
    monkeypatch.setattr(
        predict, "choose_backend", lambda *a, **k: pytest.fail("measured though the backend was given")
    )
    assert Predictor.from_run(exported, backend="onnx").backend == "onnx"
    assert Predictor.from_run(exported, backend="torch").precision == "fp32"
    assert (
        Predictor.from_run(exported, precision="fp32").backend == "torch"
    )  # a torch precision asked for: torch, no timing
    assert Predictor.from_run(exported, backend="onnx").backend_choice is None


def test_chosen_predictor_scores_like_fp32(exported, phantom_dir, monkeypatch):
    monkeypatch.setattr(serving, "native_bf16", lambda device: False)
    p = Predictor.from_run(exported, device="cpu")
    ref = Predictor.from_run(exported, backend="torch", precision="fp32")
    files = [sorted((phantom_dir / c).glob("*.png"))[0] for c in ("F0", "F2", "F4")]
    got, want = list(p.predict_paths(files)), list(ref.predict_paths(files))
    assert p.backend_choice and p.backend == p.backend_choice["backend"]
    assert [r.label for r in got] == [r.label for r in want]
    np.testing.assert_allclose([r.logits for r in got], [r.logits for r in want], atol=1e-3)


def test_one_candidate_is_not_timed(trained_run, monkeypatch):
    monkeypatch.setattr(serving, "native_bf16", lambda device: False)
    monkeypatch.setattr(serving, "measure", lambda *a, **k: pytest.fail("timed a single candidate"))
    out = choose_backend(trained_run, "cpu")  # no export
    assert out["choice"] == "torch-fp32" and out["timings"] == {} and "only candidate" in out["reason"]
