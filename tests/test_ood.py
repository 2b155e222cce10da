"""Calibration that refuses a temperature at the edge of its range, and the out-of-distribution flag:
pure scores, the run's detector, Predictor/CSV/JSON, ONNX, evaluate, report and the app's warning."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from liverscope import rundir
from liverscope.data.datasets import Sample
from liverscope.errors import LiverscopeError
from liverscope.evaluate import ood as O
from liverscope.evaluate import stats as S
from liverscope.inference.predict import Predictor, write_results
from liverscope.models import build_model
from liverscope.training.postrun import score_test
from liverscope.utils import read_json, softmax

LABELS = ["F0", "F1", "F2", "F3", "F4"]


def _photo() -> Path:
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not p.exists():
        pytest.skip(f"matplotlib's sample photograph is not installed ({p})")
    return p


def _calibrated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    y = (rng.random(n)[:, None] > np.cumsum(softmax(z), axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


# --------------------------------------------------------------------------------------------------
# temperature scaling with an edge check
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.4, 3.0])
def test_temperature_fit_gives_back_a_known_factor(factor):
    z, y = _calibrated(20000, 4, seed=3)
    fit = S.fit_temperature_checked(factor * z, y)
    assert fit["applied"] and not fit["at_edge"] and fit["warning"] is None
    assert fit["fitted"] == pytest.approx(factor, rel=0.06) and fit["temperature"] == fit["fitted"]
    assert fit["nll_fitted"] < fit["nll_uncalibrated"]
    assert S.fit_temperature(factor * z, y) == pytest.approx(fit["temperature"])


def test_temperature_fit_at_the_edge_is_reported_and_not_applied():
    y = np.repeat(np.arange(3), 10)
    separated = 4.0 * np.eye(3)[y] + np.random.default_rng(0).normal(
        0, 0.3, (30, 3)
    )  # every image right, with a margin
    fit = S.fit_temperature_checked(separated, y)
    assert fit["at_edge"] and not fit["applied"] and fit["temperature"] == 1.0
    assert fit["fitted"] == pytest.approx(0.1, rel=0.02) and fit["bounds"] == [0.1, 10.0]
    assert "lower edge" in fit["warning"] and "no temperature applied" in fit["warning"]
    assert S.fit_temperature(separated, y) == 1.0
    # the upper edge: logits that say nothing about the class
    noise = np.random.default_rng(1).normal(0, 1, (300, 3))
    fit = S.fit_temperature_checked(noise, np.random.default_rng(2).integers(0, 3, 300), bounds=(0.1, 2.0))
    assert fit["at_edge"] and "upper edge" in fit["warning"] and fit["temperature"] == 1.0
    with pytest.raises(LiverscopeError, match="bounds"):
        S.fit_temperature_checked(separated, y, bounds=(2.0, 5.0))


# --------------------------------------------------------------------------------------------------
# the pure scores
# --------------------------------------------------------------------------------------------------


def test_mahalanobis_flags_shifted_features_and_the_threshold_passes_95_percent():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 40))
    y_train, y_val = rng.integers(0, 3, 300), rng.integers(0, 3, 2000)
    train = centres[y_train] + rng.normal(0, 1, (300, 40))
    val = centres[y_val] + rng.normal(0, 1, (2000, 40))
    far = rng.normal(0, 1, (200, 40)) + 6.0  # nowhere near a class
    g = O.fit_class_gaussian(train, y_train)
    assert (
        g["means"].shape == (3, 40) and g["precision"].shape == (40, 40) and list(g["classes"]) == [0, 1, 2]
    )
    s_val, s_far = (
        O.mahalanobis_score(val, g["means"], g["precision"]),
        O.mahalanobis_score(far, g["means"], g["precision"]),
    )
    t = O.fit_threshold(s_val, 0.95)
    assert O.flag_summary(s_val, t)["share"] == pytest.approx(0.05, abs=0.002)
    assert O.flag_summary(s_far, t)["share"] == 1.0
    assert O.ood_auroc(s_val, s_far) == 1.0 and O.ood_auroc(s_far, s_val) == 0.0
    # with the identity as precision the score is the squared distance to the nearest mean
    x = np.array([[1.0, 0.0], [4.0, 4.0]])
    assert np.allclose(O.mahalanobis_score(x, np.array([[0.0, 0.0], [5.0, 5.0]]), np.eye(2)), [1.0, 2.0])
    # a class without training images gets no mean
    assert list(O.fit_class_gaussian(train, np.where(y_train == 1, 2, y_train), 3)["classes"]) == [0, 2]


def test_conformal_threshold_keeps_the_flag_rate_of_new_familiar_images_at_most_five_percent():
    # few validation images (the demo has 45): the plain 95th percentile flags well over 5% of new images
    # like them on average; the conformal rank keeps the expected share at most 5%
    rng = np.random.default_rng(1)
    plain, conformal = [], []
    for _ in range(400):
        val, new = rng.gamma(3.0, 1.0, 45), rng.gamma(3.0, 1.0, 500)
        plain.append((new > np.quantile(val, 0.95)).mean())
        conformal.append(O.flag_summary(new, O.fit_threshold(val, 0.95))["share"])
    assert np.mean(plain) > 0.055
    assert 0.03 < np.mean(conformal) <= 0.05
    assert O.fit_threshold(np.arange(10.0), 0.95) == 9.0  # too few scores for the rank: the largest
    assert O.fit_threshold(np.arange(1.0, 100.0), 0.95) == 95.0  # ceil(100 * 0.95) = 95th smallest of 1..99


def test_energy_score_and_method_dispatch():
    z = np.array([[0.0, 0.0], [10.0, 0.0]])
    e = O.energy_score(z)
    assert e[0] == pytest.approx(-np.log(2)) and e[1] < e[0]  # a confident logit has low energy
    assert np.allclose(O.ood_scores("energy", z, None), e)
    with pytest.raises(LiverscopeError, match="features"):
        O.ood_scores("mahalanobis", z, None)
    with pytest.raises(LiverscopeError, match="unknown OOD method"):
        O.ood_scores("knn", z, None)
    with pytest.raises(LiverscopeError, match="no validation scores"):
        O.fit_threshold(np.zeros(0))


def test_ensemble_margin_flags_where_the_majority_flags():
    scores = np.array([[5.0, 1.0, 9.0], [5.0, 3.0, 1.0], [0.0, 3.0, 1.0]])  # 3 members x 3 images
    thresholds = np.array([2.0, 2.0, 2.0])
    margin = O.ensemble_margin(scores, thresholds)
    majority = (scores > thresholds[:, None]).sum(0) >= 2
    assert list(margin > 0) == list(majority) == [True, True, False]


# --------------------------------------------------------------------------------------------------
# prediction mechanics on an untrained run (no training needed)
# --------------------------------------------------------------------------------------------------


def _make_run(run_dir: Path, size: int = 32) -> Path:
    from liverscope.data.preprocess import Preprocessing
    from liverscope.models import build_model

    torch.manual_seed(0)
    rundir.save_model(
        run_dir, build_model("resnet10t", len(LABELS)), LABELS, Preprocessing(size=size, denoise=False)
    )
    return run_dir


def _fit_detector_on(run: Path, images: list[Path], quantile: float = 0.95) -> dict:
    """A Mahalanobis detector fitted on some images' features, saved the way a training run saves it."""
    p = Predictor.from_run(run, backend="torch", precision="fp32")
    x = np.stack([p._load(f) for f in images])
    logits, feats = p.engine.logits_and_features(x)
    g = O.fit_class_gaussian(feats, np.arange(len(images)) % len(LABELS), len(LABELS))
    stats = {
        "means": g["means"].astype(np.float32),
        "classes": g["classes"],
        "precision": g["precision"].astype(np.float32),
    }
    t = O.fit_threshold(O.mahalanobis_score(feats, stats["means"], stats["precision"]), quantile)
    rundir.save_ood(run, stats, {"method": "mahalanobis", "threshold": t, "quantile": quantile})
    return stats


def test_run_without_detector_predicts_as_before_with_empty_ood_fields(phantom_dir, tmp_path):
    run = _make_run(tmp_path / "old")
    files = sorted((phantom_dir / "F1").glob("*.png"))[:3]
    p = Predictor.from_run(run, backend="torch")
    assert p.ood is None and p.ood_threshold is None
    results = list(p.predict_paths(files))
    assert all(r.error is None and r.ood_score is None and r.ood is None for r in results)
    write_results(results, p.labels, tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").read_text().splitlines()))
    assert {"ood_score", "ood"} <= set(rows[0]) and all(r["ood_score"] == "" and r["ood"] == "" for r in rows)
    write_results(results, p.labels, tmp_path / "out.json")
    assert all(
        item["ood"] is None and "ood_score" in item
        for item in json.loads((tmp_path / "out.json").read_text())
    )


def test_predictor_scores_and_flags_with_the_stored_detector(phantom_dir, tmp_path):
    run = _make_run(tmp_path / "run")
    fit_on = [f for c in LABELS for f in sorted((phantom_dir / c).glob("*.png"))[:8]]
    stats = _fit_detector_on(run, fit_on)
    meta = read_json(run / "model.json")
    assert (
        meta["ood"]["method"] == "mahalanobis"
        and meta["ood"]["file"] == "ood.safetensors"
        and (run / "ood.safetensors").exists()
    )
    p = Predictor.from_run(run, backend="torch", precision="fp32")
    assert np.allclose(p.ood["precision"], stats["precision"])
    results = list(p.predict_paths(fit_on + [_photo()]))
    scores = np.array([r.ood_score for r in results])
    assert np.all(np.isfinite(scores)) and all(
        (r.ood is True) == (r.ood_score > p.ood_threshold) for r in results
    )
    assert results[-1].ood  # a photograph, even for an untrained network's features
    # the same detector through predict_arrays (the app) and in the CSV
    img = p.prepare(_photo())
    assert p.predict_arrays([img], ["photo"])[0].ood_score == pytest.approx(results[-1].ood_score, rel=1e-4)
    assert (
        write_results(results, p.labels, tmp_path / "out.csv")["flagged"] == sum(r.ood for r in results) >= 1
    )
    rows = list(csv.DictReader((tmp_path / "out.csv").read_text().splitlines()))
    assert rows[-1]["ood"] == "true" and float(rows[-1]["ood_score"]) == pytest.approx(
        results[-1].ood_score, rel=1e-4
    )
    # model.json names a statistics file that is gone: a clear error naming it and the fix
    (run / "ood.safetensors").unlink()
    with pytest.raises(LiverscopeError, match="ood.safetensors.*(copy the whole run|delete)"):
        Predictor.from_run(run, backend="torch")


def test_onnx_export_carries_the_features_and_old_exports_are_stale(phantom_dir, tmp_path):
    import onnxruntime as ort

    from liverscope.inference.export import export_onnx

    run = _make_run(tmp_path / "run")
    _fit_detector_on(run, [f for c in LABELS for f in sorted((phantom_dir / c).glob("*.png"))[:6]])
    info = export_onnx(run)
    assert info["outputs"] == ["logits", "features"] and info["max_rel_feature_diff"] <= info["atol"]
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "features"]
    assert rundir.onnx_state(run)[1] == "current"
    files = sorted((phantom_dir / "F3").glob("*.png"))[:4] + [_photo()]
    a = list(Predictor.from_run(run, backend="torch", precision="fp32").predict_paths(files))
    b = list(Predictor.from_run(run, backend="onnx").predict_paths(files))
    np.testing.assert_allclose([r.ood_score for r in b], [r.ood_score for r in a], rtol=1e-3)
    assert [r.ood for r in a] == [r.ood for r in b]
    # an export by an older liverscope (logits only) must be redone
    meta = read_json(run / "model.json")
    meta["onnx"]["outputs"] = ["logits"]
    (run / "model.json").write_text(json.dumps(meta))
    assert rundir.onnx_state(run)[1] == "stale"
    with pytest.raises(LiverscopeError, match="liverscope export"):
        Predictor.from_run(run, backend="onnx")


class _Tensors(torch.utils.data.Dataset):
    """Random images with labels, and the ``samples`` a run's datasets carry (what the CSV names)."""

    def __init__(self, n: int, size: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.samples = [Sample(Path(f"img{i}.png"), LABELS[i % len(LABELS)]) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.x[i], i % len(LABELS)


def test_score_test_adds_the_test_flag_share_without_changing_the_callers_dict(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet10t", len(LABELS))
    loader = torch.utils.data.DataLoader(_Tensors(10), batch_size=4)
    logits = torch.cat([model.eval()(x) for x, _ in loader]).detach().numpy()
    threshold = float(np.median(O.energy_score(logits)))  # about half the images flagged
    ood = {"method": "energy", "threshold": threshold}
    ood_metrics = {"method": "energy", "threshold": threshold, "validation": {"n": 3}}
    before = json.loads(json.dumps(ood_metrics))
    out = score_test(tmp_path, model, loader, LABELS, 1.0, ood, "cpu", ood_metrics)
    assert ood_metrics == before  # the caller's dict is left as it was
    assert out["ood"] == dict(before, test=out["ood"]["test"]) and out["ood"]["test"]["n"] == 10
    rows = list(csv.DictReader((tmp_path / rundir.PREDICTIONS_TEST).read_text().splitlines()))
    assert 0 < out["ood"]["test"]["flagged"] == sum(r["ood"] == "true" for r in rows) < 10
    assert "ood" not in score_test(tmp_path, model, loader, LABELS, 1.0, ood, "cpu")  # no metrics given


# --------------------------------------------------------------------------------------------------
# a phantom-trained run (the session's trained_run)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_run_records_calibration_and_detector(trained_run):
    meta = read_json(trained_run / "model.json")
    fit = meta["temperature_fit"]
    assert fit["bounds"] == [0.1, 10.0] and fit["n"] > 0
    if fit["at_edge"]:  # phantoms are easy: often every validation image is right, and no T may be applied
        assert meta["temperature"] == 1.0 and not fit["applied"] and fit["warning"]
    else:
        assert 0.1 < meta["temperature"] < 10
    ood = meta["ood"]
    assert (
        ood["method"] == O.DEFAULT_METHOD
        and set(ood["thresholds"]) == set(O.METHODS)
        and ood["quantile"] == O.DEFAULT_QUANTILE
    )
    assert (trained_run / "ood.safetensors").exists()
    m = read_json(trained_run / "metrics.json")
    assert m["ood"]["validation"]["share"] <= 0.1 and "test" in m["ood"]
    assert m["test"]["ece_uncalibrated"] >= 0 and m["test"]["ece"] >= 0
    rows = list(csv.DictReader((trained_run / "predictions_test.csv").read_text().splitlines()))
    assert {"ood_score", "ood"} <= set(rows[0])
    assert sum(r["ood"] == "true" for r in rows) == m["ood"]["test"]["flagged"]
    report = (trained_run / "report.html").read_text(encoding="utf-8")
    assert "Out-of-distribution flag" in report and "validation images flagged" in report
    if fit["at_edge"]:
        assert "Temperature not applied" in report


@pytest.mark.slow
def test_phantom_test_images_pass_and_a_photograph_is_flagged(trained_run):
    rows = list(csv.DictReader((trained_run / "predictions_test.csv").read_text().splitlines()))
    p = Predictor.from_run(trained_run, backend="torch")
    own = list(p.predict_paths([r["path"] for r in rows]))
    share = np.mean([r.ood for r in own])
    assert share <= 0.25, [
        r.ood_score for r in own
    ]  # ~5% by construction on validation; a small test set varies
    photo = next(iter(p.predict_paths([_photo()])))
    assert photo.ood and photo.ood_score > max(r.ood_score for r in own)


@pytest.mark.real
@pytest.mark.slow
def test_phantom_model_flags_real_ultrasound(trained_run, real_fibrosis):
    files = [f for c in ("F0", "F2", "F4") for f in sorted((real_fibrosis / c).iterdir())[:10]]
    results = [
        r for r in Predictor.from_run(trained_run, backend="torch").predict_paths(files) if r.error is None
    ]
    assert len(results) >= 25
    assert np.mean([r.ood for r in results]) >= 0.9


@pytest.mark.slow
def test_refit_after_the_fact_and_evaluate_reports_the_flagged_share(trained_run, phantom_dir, tmp_path):
    from liverscope.training.external import evaluate_on_data
    from liverscope.training.postrun import fit_run_ood

    run = tmp_path / "old-run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    before = read_json(run / "model.json").pop("ood")
    meta = read_json(run / "model.json")
    del meta["ood"]
    (run / "model.json").write_text(json.dumps(meta))
    (run / "ood.safetensors").unlink()
    assert Predictor.from_run(run, backend="torch").ood is None
    after = fit_run_ood(run, device="cpu")  # from split.csv: train rows, then val rows
    assert after["threshold"] == pytest.approx(before["threshold"], rel=1e-3)
    assert read_json(run / "model.json")["ood"]["threshold"] == pytest.approx(after["threshold"])

    out = evaluate_on_data(run, phantom_dir, name="phantoms", device="cpu")
    m = read_json(out / "metrics.json")
    assert m["ood"]["n"] == m["test"]["n"] == 120 and m["ood"]["threshold"] == pytest.approx(
        after["threshold"]
    )
    assert m["ood"]["share"] <= 0.2  # the model's own kind of images (its training images among them)
    assert "images of this data set flagged" in (out / "report.html").read_text(encoding="utf-8")
