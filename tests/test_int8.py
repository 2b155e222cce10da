"""int8 export: ONNX Runtime's static quantisation calibrated on the run's own validation images,
reported against the fp32 export on the run's test images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from liverscope import rundir
from liverscope.errors import LiverscopeError
from liverscope.inference import quantize
from liverscope.inference.quantize import export_int8, layer_sensitivity
from liverscope.models.stem import first_stage_convolutions


def _fold_run(run, phantom_dir, model_name: str):
    """An untrained 32 px run like a cv fold (train and val only): 2 phantoms per stage, 4 train, 6 val."""
    import torch

    from liverscope.data.datasets import Sample
    from liverscope.data.preprocess import Preprocessing
    from liverscope.models import build_model

    torch.manual_seed(0)
    labels = ["F0", "F1", "F2", "F3", "F4"]
    rundir.save_model(
        run, build_model(model_name, len(labels)), labels, Preprocessing(size=32, denoise=False)
    )
    files = [p for c in labels for p in sorted((phantom_dir / c).glob("*.png"))[:2]]
    rundir.write_split(
        run / rundir.SPLIT, [Sample(p, p.parent.name) for p in files], ["train"] * 4 + ["val"] * 6
    )
    return run


@pytest.mark.slow
def test_int8_export_is_calibrated_and_reported_against_fp32(trained_run, tmp_path):
    import onnxruntime as ort

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = export_int8(run, calibration=16, force=True)
    assert (run / rundir.ONNX_INT8).exists() and rundir.onnx_state(run)[1] == "current"  # fp32 exported first
    meta = rundir.read_model_meta(run)
    assert meta["onnx_int8"] == info and info["calibration_images"] == 16 and info["compared_on"] == "test"
    samples, assignment, _ = rundir.read_split(run / rundir.SPLIT)
    assert info["n"] == int(np.sum(assignment == "test"))
    # int8 keeps the decisions of fp32 on the phantoms (coarse: 64 px, tiny model)
    assert info["label_agreement"] >= 0.8 and 0 <= info["max_prob_diff"] < 0.5
    assert info["changed"] == round((1 - info["label_agreement"]) * info["n"])
    assert (info["changed_fp32_margin"] is None) == (info["changed"] == 0)
    if info[
        "changed"
    ]:  # a changed label: fp32's top-two gap there is at most what int8 moved a probability by, twice
        assert 0 <= info["changed_fp32_margin"] <= 2 * info["max_prob_diff"] + 1e-6
    assert info["meets_bar"] == (
        info["label_agreement"] >= 0.99
        and info["balanced_accuracy_fp32"] - info["balanced_accuracy_int8"] <= 0.005
    )
    assert info["forced"] == (not info["meets_bar"])
    assert abs(info["balanced_accuracy_int8"] - info["balanced_accuracy_fp32"]) <= 0.2
    sess = ort.InferenceSession(str(run / rundir.ONNX_INT8), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(run / rundir.ONNX_INT8)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # really quantised
    assert [o.name for o in sess.get_outputs()][:2] == ["logits", "features"]

    # predict / serve use it when asked: the same labels as the fp32 export on the test images
    from liverscope.inference.predict import Predictor

    test_files = [s.path for s, a in zip(samples, assignment) if a == "test"]
    p8 = Predictor.from_run(run, int8=True)
    p32 = Predictor.from_run(run, backend="onnx")
    assert p8.precision == "int8" and "int8" in p8.describe() and p32.precision == "fp32"
    r8, r32 = list(p8.predict_paths(test_files)), list(p32.predict_paths(test_files))
    agree = np.mean([a.label == b.label for a, b in zip(r8, r32)])
    assert abs(agree - info["label_agreement"]) < 1e-9
    with pytest.raises(LiverscopeError, match="--backend onnx"):
        Predictor.from_run(run, backend="torch", int8=True)
    (run / rundir.ONNX_INT8).write_bytes(b"changed")  # a tampered or outdated file is not used
    with pytest.raises(LiverscopeError, match="stale"):
        Predictor.from_run(run, int8=True)


def test_int8_needs_a_split(tmp_path):
    with pytest.raises(LiverscopeError, match="split.csv"):
        export_int8(tmp_path)


def test_int8_without_test_split_compares_on_images_it_did_not_calibrate_on_and_keeps_the_ends_fp32(
    phantom_dir, tmp_path
):
    """A cv fold has no test split: the report uses the validation images the quantiser did not see;
    the first stage's convolutions (resnet10t's deep stem: three) and the classifier stay fp32."""
    import onnx

    run = _fold_run(tmp_path / "fold", phantom_dir, "resnet10t")
    info = export_int8(run, calibration=4, force=True)
    assert (
        info["calibration_images"] == 4
        and info["compared_on"] == "val (not used to calibrate)"
        and info["n"] == 2
    )
    assert (
        f"{8 if quantize.cpu_has_vnni() else 7}-bit weights" in info["format"] and "in fp32" in info["format"]
    )  # 7-bit only without VNNI
    graph = onnx.load(str(run / rundir.ONNX_INT8)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    first = first_stage_convolutions(rundir.load_model(run)[0].backbone)
    assert first == 3 and "first stage (3 convolutions)" in info["format"]
    assert all(convs[i].input[1] not in dequantised for i in range(first)) and all(
        not set(n.input) & dequantised for n in gemms
    )  # fp32 ends: the first stage's weights and the classifier
    assert all(set(n.input) & dequantised for n in convs[first:])  # every other convolution is int8


def test_int8_export_of_resnet50_cbam(phantom_dir, tmp_path):
    """ONNX Runtime's symbolic shape inference fails on the CBAM graph; the export falls back to ONNX's
    own shape inference and still writes a quantised model that runs."""
    import onnx
    import onnxruntime as ort

    run = _fold_run(tmp_path / "cbam", phantom_dir, "resnet50_cbam")
    info = export_int8(run, calibration=4, force=True)
    assert info["n"] == 2 and 0.0 <= info["label_agreement"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(run / rundir.ONNX_INT8)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    sess = ort.InferenceSession(str(run / rundir.ONNX_INT8), providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert out.shape == (1, 5) and np.isfinite(out).all()


def test_int8_below_the_bar_is_refused_unless_forced(phantom_dir, tmp_path, monkeypatch):
    """Nothing is written when int8 does not keep the labels; --force writes it flagged, and prediction's
    backend choice never times it."""
    from typer.testing import CliRunner

    from liverscope.speed.serving import candidates
    from liverscope.ui.cli import app

    run = _fold_run(tmp_path / "fold", phantom_dir, "resnet10t")
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # a bar no model meets
    with pytest.raises(LiverscopeError, match="does not keep the labels.*--force") as refused:
        export_int8(run, calibration=4)
    assert "agreement with fp32" in str(refused.value) and "lower" not in str(
        refused.value
    )  # what missed, only
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(quantize, "MAX_BA_DROP", -1.01)  # balanced accuracy would have to rise by more than 1
    with pytest.raises(LiverscopeError, match="more than -1.01 lower") as refused:
        export_int8(run, calibration=4)
    assert "agreement with fp32" not in str(refused.value)
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)
    monkeypatch.setattr(quantize, "MAX_BA_DROP", 0.005)
    assert not (run / rundir.ONNX_INT8).exists() and "onnx_int8" not in rundir.read_model_meta(run)
    res = CliRunner().invoke(app, ["export", str(run), "--int8", "--calibration", "4"])
    assert (
        res.exit_code == 1
        and "does not keep the labels" in res.output
        and not (run / rundir.ONNX_INT8).exists()
    )
    res = CliRunner().invoke(app, ["export", str(run), "--int8", "--calibration", "4", "--force"])
    assert res.exit_code == 0 and "WARNING" in res.output and (run / rundir.ONNX_INT8).exists()
    meta = rundir.read_model_meta(run)["onnx_int8"]
    assert (
        meta["forced"]
        and not meta["meets_bar"]
        and meta["bar"] == {"min_label_agreement": 1.01, "max_balanced_accuracy_drop": 0.005}
    )
    assert rundir.onnx_int8_state(run)[1] == "current" and "onnx-int8" not in candidates(run, "cpu")


def test_the_most_sensitive_convolutions_stay_fp32(phantom_dir, tmp_path):
    import onnx

    run = _fold_run(tmp_path / "fold", phantom_dir, "resnet10t")
    info = export_int8(run, calibration=4, sensitive=2, force=True)
    extra = info["fp32_nodes"]["sensitive"]
    assert len(extra) == 2 and "2 most sensitive convolutions in fp32" in info["format"]
    graph = onnx.load(str(run / rundir.ONNX_INT8)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    # left in fp32: their weights are not quantised (their input may be the dequantised output of a shared tensor)
    assert all(convs[name].input[1] not in dequantised for name in extra)
    first = first_stage_convolutions(rundir.load_model(run)[0].backbone)
    assert (
        sum(n.input[1] in dequantised for n in convs.values()) == len(convs) - first - 2
    )  # every other but the first stage's


def test_layer_sensitivity_ranks_the_quantised_convolutions(phantom_dir, tmp_path):
    from liverscope.speed.serving import split_inputs

    run = _fold_run(tmp_path / "fold", phantom_dir, "resnet10t")
    export_int8(run, calibration=4, force=True)
    prep = quantize.prepare(run / rundir.ONNX, tmp_path / "prep.onnx")
    x, _, _ = split_inputs(run, "val", 4)
    drops = layer_sensitivity(prep, run / rundir.ONNX_INT8, x)
    values = list(drops.values())
    assert drops and values == sorted(values, reverse=True) and all(np.isfinite(values))
    conv_names = {n.name for n in __import__("onnx").load(str(prep)).graph.node if n.op_type == "Conv"}
    assert set(drops) <= conv_names
