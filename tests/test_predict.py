"""Prediction: Predictor on a run, folders with bad files, CSV/JSON outputs written while streaming,
ONNX export and backend, torch backend precision, flat memory on long folders."""

from __future__ import annotations

import csv
import json
import shutil
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from liverscope.data.io import iter_image_files
from liverscope.errors import LiverscopeError
from liverscope.inference.export import export_onnx
from liverscope.inference.predict import DEFAULT_BATCH_SIZE, Predictor, Result, TorchBackend, write_results
from liverscope.labels import endpoint_probabilities
from liverscope.rundir import load_model as load_run_model
from liverscope.rundir import onnx_state
from liverscope.utils import read_json

LABELS = ["F0", "F1", "F2", "F3", "F4"]


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


def _make_run(run_dir: Path, size: int = 32, seed: int = 0) -> Path:
    """A run directory holding an untrained resnet10t (prediction mechanics do not need training)."""
    from liverscope.data.preprocess import Preprocessing
    from liverscope.models import build_model
    from liverscope.rundir import save_model

    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(
        run_dir, build_model("resnet10t", len(LABELS)), LABELS, Preprocessing(size=size, denoise=False)
    )
    return run_dir


@pytest.fixture(scope="module")
def random_run(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("random-run"))


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory) -> Path:
    run = _make_run(tmp_path_factory.mktemp("exported-run"), seed=1)
    export_onnx(run)
    return run


def _bad_files(folder: Path, good_png: Path) -> dict[str, Path]:
    """A zero-byte file, a text file named .png and a truncated PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": folder / "empty.png",
        "text": folder / "notes.png",
        "truncated": folder / "truncated.png",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image")
    files["truncated"].write_bytes(good_png.read_bytes()[:300])
    return files


def _phantom_files(phantom_dir: Path, per_class: int) -> list[Path]:
    return [p for c in LABELS for p in sorted((phantom_dir / c).glob("*.png"))[-per_class:]]


@pytest.fixture
def mixed_folder(phantom_dir, tmp_path) -> tuple[Path, list[Path], dict[str, Path]]:
    """Phantom images of every class with bad files between them."""
    folder = tmp_path / "mixed"
    good = []
    for p in _phantom_files(phantom_dir, 3):
        dst = folder / p.parent.name / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
        good.append(dst)
    bad = _bad_files(folder / "F2", good[0])
    return folder, good, bad


# --------------------------------------------------------------------------------------------------
# the core issue's tests: Predictor on a trained run, corrupt files, CSV/JSON, CLI
# --------------------------------------------------------------------------------------------------


def test_predictor_on_trained_run_reproduces_the_runs_test_predictions(trained_run):
    """Predictor (threaded decoding, its own normalisation, calibrated) gives the probabilities that
    training wrote for the test split, and the same accuracy as metrics.json."""
    with open(trained_run / "predictions_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    p = Predictor.from_run(trained_run, backend="torch", precision="fp32")
    results = list(p.predict_paths([r["path"] for r in rows]))
    assert [r.path for r in results] == [row["path"] for row in rows]
    for r, row in zip(results, rows):
        assert r.error is None and r.label == row["pred"]
        assert abs(sum(r.probs.values()) - 1) < 1e-6 and r.confidence == max(r.probs.values())
        np.testing.assert_allclose(
            [r.probs[c] for c in p.labels], [float(row[f"prob_{c}"]) for c in p.labels], atol=1e-4
        )
        np.testing.assert_allclose(r.logits, [float(row[f"logit_{c}"]) for c in p.labels], atol=1e-4)
    acc = np.mean([r.label == row["label"] for r, row in zip(results, rows)])
    assert acc == pytest.approx(read_json(trained_run / "metrics.json")["test"]["accuracy"])


def test_predict_folder_with_corrupt_files_finishes_and_lists_them(trained_run, mixed_folder):
    folder, good, bad = mixed_folder
    results = list(Predictor.from_run(trained_run, backend="torch").predict_paths([folder]))
    by_path = {r.path: r for r in results}
    assert set(by_path) == {str(p) for p in good} | {str(p) for p in bad.values()}
    for p in good:
        assert by_path[str(p)].error is None and by_path[str(p)].label is not None
    assert "empty" in by_path[str(bad["empty"])].error
    assert "not a PNG" in by_path[str(bad["text"])].error
    assert "truncated" in by_path[str(bad["truncated"])].error
    for p in bad.values():
        assert by_path[str(p)].label is None and by_path[str(p)].probs == {}


def test_results_keep_input_order_with_bad_files_between(random_run, mixed_folder):
    folder, good, bad = mixed_folder
    order = [good[0], bad["text"], good[1], bad["empty"], good[2], *good[3:]]
    p = Predictor.from_run(random_run, backend="torch", batch_size=2)
    assert [r.path for r in p.predict_paths(order)] == [str(x) for x in order]


def test_cli_predict_lists_skipped_files_and_writes_csv(trained_run, mixed_folder, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    folder, good, bad = mixed_folder
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(
        app, ["predict", str(trained_run), str(folder), "--out", str(out), "--backend", "torch"]
    )
    assert res.exit_code == 0, res.output
    assert f"predicted {len(good)} image(s)" in res.output
    assert f"skipped {len(bad)} file(s)" in res.output
    for p in bad.values():
        assert str(p) in res.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(good) + len(bad)
    header = list(rows[0])
    assert header[:3] == ["file", "prediction", "confidence"] and header[-1] == "error"
    assert [f"prob_{c}" for c in LABELS] == [h for h in header if h.startswith("prob_")]
    assert {"p_ge_F2", "p_ge_F3", "p_F4"} <= set(header)  # METAVIR labels: endpoints too
    for row in rows:
        if row["error"]:
            assert row["prediction"] == "" and row["prob_F0"] == ""
        else:
            probs = [float(row[f"prob_{c}"]) for c in LABELS]
            assert abs(sum(probs) - 1) < 1e-4
            assert row["prediction"] == LABELS[int(np.argmax(probs))]
            assert abs(float(row["p_ge_F2"]) - sum(probs[2:])) < 1e-5


def test_json_output(random_run, mixed_folder, tmp_path):
    folder, good, bad = mixed_folder
    p = Predictor.from_run(random_run, backend="torch")
    summary = write_results(p.predict_paths([folder]), p.labels, tmp_path / "pred.json")
    items = json.loads((tmp_path / "pred.json").read_text())
    assert summary["predicted"] == len(good) and len(summary["skipped"]) == len(bad)
    assert len(items) == len(good) + len(bad)
    ok = [i for i in items if i["error"] is None]
    assert set(ok[0]["probabilities"]) == set(LABELS)
    assert ok[0]["prediction"] == max(ok[0]["probabilities"], key=ok[0]["probabilities"].get)
    assert ok[0]["p_ge_F3"] == pytest.approx(
        ok[0]["probabilities"]["F3"] + ok[0]["probabilities"]["F4"]
    )  # the CSV's name
    assert all(i["prediction"] is None for i in items if i["error"])


def test_empty_json_output_is_valid(tmp_path):
    write_results(iter(()), LABELS, tmp_path / "none.json")
    assert json.loads((tmp_path / "none.json").read_text()) == []


# --------------------------------------------------------------------------------------------------
# streaming: rows written as they come, atomically; bounded work in flight; flat memory
# --------------------------------------------------------------------------------------------------


def test_write_results_streams_rows_to_a_temp_file_then_replaces(tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("old content\n")
    seen = []

    def results():
        for i in range(5):
            if i == 3:  # rows so far are on disk in a temporary file; the output is still the old one
                tmps = [p for p in tmp_path.iterdir() if p.name.startswith(".pred.csv.")]
                assert len(tmps) == 1
                seen.append(tmps[0].read_text().count("\n"))
                assert out.read_text() == "old content\n"
            yield Result(f"img{i}.png", "F1", dict(zip(LABELS, [0.1, 0.6, 0.1, 0.1, 0.1])), [0.0] * 5)

    write_results(results(), LABELS, out)
    assert seen == [4]  # header + rows 0..2 were on disk before row 3 was computed
    assert out.read_text().count("\n") == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred.csv.")]


def test_write_results_crash_leaves_old_output(tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("old content\n")

    def results():
        yield Result("a.png", "F0", dict(zip(LABELS, [1, 0, 0, 0, 0])), [0.0] * 5)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_results(results(), LABELS, out)
    assert out.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]


def _many_files(folder: Path, src: Path, n: int, bad_every: int = 7) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    for i in range(n):
        (folder / f"img{i:05d}.png").write_bytes(data[:100] if i % bad_every == 3 else data)


def test_predict_paths_bounds_work_in_flight(random_run, phantom_dir, tmp_path, monkeypatch):
    """Decoding runs ahead of the model by at most the window: a folder is never loaded whole."""
    folder = tmp_path / "many"
    _many_files(folder, _phantom_files(phantom_dir, 1)[0], 60)
    p = Predictor.from_run(random_run, backend="torch", batch_size=4, workers=2)
    started = []
    orig = Predictor._load
    monkeypatch.setattr(Predictor, "_load", lambda self, path: (started.append(path), orig(self, path))[1])
    window = 10
    ahead = []
    n = 0
    for _r in p.predict_paths([folder], window=window):
        n += 1
        ahead.append(len(started) - n)
    assert n == 60 and len(started) == 60
    # at a yield: the rest of the batch just scored (< batch) plus the window submitted after it
    assert max(ahead) <= window + p.batch_size


@pytest.mark.slow
def test_predict_memory_stays_flat_with_folder_size(random_run, phantom_dir, tmp_path):
    """Peak Python/NumPy memory while streaming 4x more files into a CSV grows by far less than 4x."""
    src = _phantom_files(phantom_dir, 1)[0]
    p = Predictor.from_run(random_run, backend="torch", batch_size=4, workers=2)
    peaks = {}
    for n in (25, 100):
        folder = tmp_path / f"f{n}"
        _many_files(folder, src, n)
        if n == 25:
            list(p.predict_paths([folder]))  # warm-up: lazily created torch/numpy state is not counted
        tracemalloc.start()
        summary = write_results(p.predict_paths([folder]), p.labels, tmp_path / f"out{n}.csv")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert summary["predicted"] + len(summary["skipped"]) == n
    assert peaks[100] < 1.5 * peaks[25] + 256 * 1024, peaks


# --------------------------------------------------------------------------------------------------
# files, endpoints, single images
# --------------------------------------------------------------------------------------------------


def test_iter_image_files_recurses_skips_masks_and_hidden(tmp_path):
    for rel in [
        "b/2.png",
        "b/1.jpg",
        "a/x.dcm",
        "masks/m.png",
        "a/.hidden.png",
        "a/readme.txt",
        "c/noext",
        ".git/h.png",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    named = tmp_path / "a" / "readme.txt"
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files([tmp_path, named])]
    assert found == ["a/x.dcm", "b/1.jpg", "b/2.png", "c/noext", "a/readme.txt"]


def test_endpoint_probabilities():
    probs = dict(zip(LABELS, [0.1, 0.2, 0.3, 0.25, 0.15]))
    ep = endpoint_probabilities(probs)
    assert ep == pytest.approx({"≥F2": 0.7, "≥F3": 0.4, "F4": 0.15})
    assert endpoint_probabilities({"normal": 0.5, "fatty": 0.5}) is None
    assert endpoint_probabilities({"F0": 0.3, "F4": 0.7}) == pytest.approx(
        {"≥F2": 0.7, "≥F3": 0.7, "F4": 0.7}
    )


def test_predict_bytes_and_arrays(random_run, phantom_dir):
    p = Predictor.from_run(random_run, backend="torch")
    png = _phantom_files(phantom_dir, 1)[0].read_bytes()
    r, img = p.predict_bytes("scan.png", png)
    assert r.error is None and img.shape == (32, 32, 3) and img.dtype == np.uint8
    # same image, same model; float sums may run in another order (thread count, kernel choice)
    assert p.predict_arrays([img], ["x"])[0].probs == pytest.approx(r.probs, abs=1e-4)
    bad, none = p.predict_bytes("broken.png", png[:50])
    assert bad.error and "truncated" in bad.error and none is None


def test_cv_run_predicts_as_its_fold_ensemble_with_evaluates_ood_rule(phantom_dir, tmp_path):
    """A cv run (no weights of its own) is one predictor: the mean of the fold models' logits at the
    run's temperature, and the out-of-distribution rule of `liverscope evaluate` (median margin)."""
    from typer.testing import CliRunner

    from liverscope.data.preprocess import Preprocessing
    from liverscope.inference.predict import EnsemblePredictor
    from liverscope.rundir import save_ood, write_model_meta
    from liverscope.training.external import ensemble_predict_logits
    from liverscope.ui.cli import app
    from liverscope.utils import softmax

    cv = tmp_path / "cv"
    folds = [_make_run(cv / "folds" / f"fold{i}", seed=i) for i in range(3)]
    for i, f in enumerate(folds):
        save_ood(f, {}, {"method": "energy", "threshold": -1.5 - 0.1 * i, "quantile": 0.95})
    write_model_meta(
        cv,
        {
            "architecture": {"name": "resnet10t", "num_classes": 5},
            "labels": LABELS,
            "temperature": 1.3,
            "preprocessing": Preprocessing(size=32, denoise=False).to_dict(),
            "ensemble": [str(f.relative_to(cv)) for f in folds],
        },
    )
    files = _phantom_files(phantom_dir, 1)
    p = Predictor.from_run(cv, backend="torch", precision="fp32")
    assert isinstance(p, EnsemblePredictor) and p.ood_threshold == 0.0
    results = list(p.predict_paths(files))
    logits, ok, _, (scores, threshold, _), used = ensemble_predict_logits(
        cv, files, precision="fp32"
    )  # like with like: both fp32
    assert ok == [str(f) for f in files] and threshold == 0.0 and used == p.precision == "fp32"
    np.testing.assert_allclose([r.logits for r in results], logits, atol=1e-5)
    np.testing.assert_allclose(
        [[r.probs[c] for c in LABELS] for r in results], softmax(logits, 1.3), atol=1e-5
    )
    np.testing.assert_allclose([r.ood_score for r in results], scores, atol=1e-5)
    assert [r.ood for r in results] == [bool(s > 0) for s in scores]
    out = tmp_path / "cv.csv"
    res = CliRunner().invoke(
        app, ["predict", str(cv), *map(str, files), "--out", str(out), "--backend", "torch"]
    )
    assert res.exit_code == 0, res.output
    assert f"predicted {len(files)} image(s)" in res.output


def test_a_fold_ensemble_has_every_attribute_of_a_predictor(random_run):
    """EnsemblePredictor is built through Predictor's own constructor path: an attribute a Predictor gains
    cannot go missing for a fold ensemble (issue 25)."""
    from liverscope.inference.predict import EnsemblePredictor

    members = [
        Predictor.from_run(random_run, backend="torch", tta="flip", batch_size=3, workers=2) for _ in range(2)
    ]
    ens = EnsemblePredictor(members, members[0].meta, run_dir=random_run)
    assert set(vars(members[0])) <= set(vars(ens))
    assert (
        ens.engine,
        ens.backend,
        ens.device,
        ens.batch_size,
        ens.workers,
        ens.schedule,
        ens.pool,
        ens.tta,
    ) == (members[0].engine, "torch", members[0].device, 3, 2, members[0].schedule, "thread", "flip")
    assert ens.run_dir == random_run and ens.ood is None and ens._processes is None


def test_unknown_backend_and_missing_run(random_run, tmp_path):
    with pytest.raises(LiverscopeError, match="backend"):
        Predictor.from_run(random_run, backend="tensorrt")
    with pytest.raises(LiverscopeError, match="train first"):
        Predictor.from_run(tmp_path)


# --------------------------------------------------------------------------------------------------
# ONNX export and backend
# --------------------------------------------------------------------------------------------------


def test_export_writes_verified_dynamic_batch_onnx(exported_run):
    import onnx
    import onnxruntime as ort

    info = read_json(exported_run / "model.json")["onnx"]
    assert (exported_run / "model.onnx").exists()
    assert 0 <= info["max_abs_logit_diff"] <= info["atol"]
    assert 1 in info["checked_batches"] and max(info["checked_batches"]) > 1
    sess = ort.InferenceSession(str(exported_run / "model.onnx"), providers=["CPUExecutionProvider"])
    batch_dim = sess.get_inputs()[0].shape[0]
    assert not isinstance(batch_dim, int)  # symbolic: any batch size
    for n in (1, 5):
        assert sess.run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})[0].shape == (n, len(LABELS))
    props = {p.key: p.value for p in onnx.load(str(exported_run / "model.onnx")).metadata_props}
    assert json.loads(props["labels"]) == LABELS
    assert onnx_state(exported_run)[1] == "current"


def test_onnx_and_torch_backends_agree_on_phantoms(trained_run, phantom_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "*.ckpt"))
    export_onnx(run)
    files = _phantom_files(phantom_dir, 4)
    a = list(Predictor.from_run(run, backend="torch", precision="fp32").predict_paths(files))
    b = list(Predictor.from_run(run, backend="onnx").predict_paths(files))
    pa = np.array([[r.probs[c] for c in LABELS] for r in a])
    pb = np.array([[r.probs[c] for c in LABELS] for r in b])
    assert np.abs(pa - pb).max() < 1e-4
    assert [r.label for r in a] == [r.label for r in b]
    chosen = Predictor.from_run(run)  # auto: the faster of the candidates that keep the labels, measured
    assert (
        chosen.backend_choice
        and chosen.backend == chosen.backend_choice["backend"]
        and "onnx-fp32" in chosen.backend_choice["timings"]
    )


def test_auto_backend_and_stale_export(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    assert "onnx-fp32" in Predictor.from_run(run).backend_choice["timings"]  # current: measured against torch
    # retraining replaces the weights: the export no longer matches them
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    state = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(run / "model.safetensors"))
    assert onnx_state(run)[1] == "stale"
    with pytest.warns(RuntimeWarning, match="older than"):
        assert Predictor.from_run(run).backend == "torch"
    with pytest.raises(LiverscopeError, match="liverscope export"):
        Predictor.from_run(run, backend="onnx")
    (run / "model.onnx").unlink()
    with pytest.raises(LiverscopeError, match="liverscope export"):
        Predictor.from_run(run, backend="onnx")
    assert Predictor.from_run(run).backend == "torch"


@pytest.mark.slow
def test_export_refuses_a_model_that_disagrees(random_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(random_run, run)
    with pytest.raises(LiverscopeError, match="disagree"):
        export_onnx(run, atol=1e-15)
    assert not (run / "model.onnx").exists()
    assert "onnx" not in read_json(run / "model.json")
    assert not [p for p in run.iterdir() if p.name.startswith(".model.onnx")]


def test_onnx_predictor_loads_torch_model_lazily_for_cams(exported_run):
    p = Predictor.from_run(exported_run, backend="onnx")
    assert p._model is None
    assert isinstance(p.model, torch.nn.Module) and p._model is not None


@pytest.mark.slow
def test_cli_export_and_onnx_predict(random_run, phantom_dir, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    run = tmp_path / "run"
    shutil.copytree(random_run, run)
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["predict", str(run), str(phantom_dir / "F0"), "--backend", "onnx", "--out", str(tmp_path / "x.csv")],
    )
    assert res.exit_code == 1 and "liverscope export" in res.output
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    assert "max |logit difference|" in res.output and (run / "model.onnx").exists()
    res = runner.invoke(app, ["predict", str(run), str(phantom_dir / "F0"), "--out", str(tmp_path / "y.csv")])
    assert res.exit_code == 0 and "chosen by measurement" in res.output


# --------------------------------------------------------------------------------------------------
# torch backend: channels-last, batch sizes, bf16 checked against fp32
# --------------------------------------------------------------------------------------------------


def test_torch_backend_is_channels_last_and_matches_eager(random_run):
    model, _ = load_run_model(random_run)
    ref_model, _ = load_run_model(random_run)
    engine = TorchBackend(model, "cpu", precision="fp32")
    conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    with torch.inference_mode():
        ref = ref_model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    assert np.abs(engine(x) - ref).max() < 1e-4


def test_default_batch_size_per_backend(exported_run):
    assert (
        Predictor.from_run(exported_run, backend="torch").batch_size == DEFAULT_BATCH_SIZE[("torch", "cpu")]
    )
    assert Predictor.from_run(exported_run, backend="onnx").batch_size == DEFAULT_BATCH_SIZE[("onnx", "cpu")]
    assert Predictor.from_run(exported_run, backend="onnx", batch_size=3).batch_size == 3


def test_precision_auto_is_fp32_whatever_the_hardware(random_run):
    # issue 21: the same answers on every machine; bf16 only when asked for (tests/test_precision.py)
    p = Predictor.from_run(random_run, backend="torch", device="cpu")
    assert p.precision == "fp32"


def test_bf16_kept_within_tolerance_and_the_check_batch_answered_in_bf16(random_run):
    """The check batch gets the answer of the precision kept, as every later batch: an image's logits do
    not depend on whether it came first (bf16 autocast runs on any CPU: emulated where not native)."""
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3)).astype(np.float32)
    fp32 = TorchBackend(load_run_model(random_run)[0], "cpu", precision="fp32")(x)
    engine = TorchBackend(load_run_model(random_run)[0], "cpu", precision="bf16", tolerance=1.0)
    first = engine(x)
    assert engine.precision == "bf16" and engine.bf16_check["kept"]
    assert np.abs(first - fp32).max() > 1e-5  # bf16 already
    np.testing.assert_allclose(engine(x), first, atol=1e-6)  # the same as any later batch


def test_bf16_falls_back_to_fp32_beyond_tolerance(random_run):
    x = np.random.default_rng(2).standard_normal((4, 32, 32, 3)).astype(np.float32)
    engine = TorchBackend(load_run_model(random_run)[0], "cpu", precision="bf16", tolerance=0.0)
    with pytest.warns(RuntimeWarning, match="bf16 changes predictions"):
        engine(x)
    assert engine.precision == "fp32" and not engine.bf16_check["kept"]
    assert engine.bf16_check["max_abs_prob_diff"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine(x)  # decided once: no second check


def test_bad_precision_is_a_clear_error(random_run):
    with pytest.raises(LiverscopeError, match="precision"):
        Predictor.from_run(random_run, backend="torch", precision="fp8")


def test_torch_backend_uses_its_own_thread_count_and_restores_it(random_run):
    before = torch.get_num_threads()
    engine = TorchBackend(load_run_model(random_run)[0], "cpu", precision="fp32", threads=1)
    seen = []
    engine.model.register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
    engine(np.zeros((2, 32, 32, 3), np.float32))
    assert seen == [1] and torch.get_num_threads() == before and engine.thread_choices == [1]


class _ThreadSensitive(torch.nn.Module):
    """Answers slowly with ``slow`` intra-op threads, fast otherwise (a busy machine's OpenMP team)."""

    def __init__(self, slow: int):
        super().__init__()
        self.slow, self.seen = slow, []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        import time

        self.seen.append(torch.get_num_threads())
        time.sleep(0.02 if self.seen[-1] == self.slow else 0.005)
        return x.mean((2, 3)) + self.w


@pytest.mark.skipif((__import__("os").cpu_count() or 1) < 2, reason="one core: nothing to choose")
def test_torch_backend_times_its_thread_counts_and_keeps_the_faster():
    import os

    from liverscope.utils import default_model_threads

    cores, half = os.cpu_count(), default_model_threads()
    x = np.zeros((2, 8, 8, 3), np.float32)
    for slow, fast in ((cores, half), (half, cores)):
        model = _ThreadSensitive(slow)
        engine = TorchBackend(model, "cpu", precision="fp32")
        assert engine.thread_choices == [cores, half]
        for _ in range(120):
            engine(x)
        assert engine.threads == fast and engine.thread_timings[slow] > 2 * engine.thread_timings[fast]
        # the untimed first pass on the fewer threads, one timed pass of each, then the slower only
        # once the faster has run RECHECK (20) times as long as a slow pass takes: once in 120 passes here
        assert model.seen[:3] == [half, cores, half]
        assert 1 <= model.seen[3:].count(slow) <= 2


def test_default_schedules_and_threads(random_run, exported_run):
    # torch on a CPU: decoding and the model take turns (never an OpenMP team beside NLM threads), the
    # model's threads timed; ONNX Runtime: decoding runs ahead (its threads do not stall at barriers)
    import os

    from liverscope.utils import default_model_threads

    p = Predictor.from_run(random_run, backend="torch", device="cpu")
    assert p.schedule == "alternate" and p.engine.thread_choices == sorted(
        {os.cpu_count() or 1, default_model_threads()}, reverse=True
    )
    assert "alternate" in p.describe() and "model thread" in p.describe()
    assert Predictor.from_run(random_run, backend="torch", device="cpu", threads=1).engine.thread_choices == [
        1
    ]  # asked for: kept
    assert Predictor.from_run(random_run, backend="torch", schedule="overlap").schedule == "overlap"
    o = Predictor.from_run(exported_run, backend="onnx")
    assert o.schedule == "overlap" and not o.engine.spinning
    with pytest.raises(LiverscopeError, match="schedule"):
        Predictor.from_run(random_run, backend="torch", schedule="sometimes")
    with pytest.raises(LiverscopeError, match="pool"):
        Predictor.from_run(random_run, backend="torch", pool="fibres")


def test_onnx_spinning_session_gives_the_same_logits(exported_run):
    from liverscope.models.backends import OnnxBackend

    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    calm, spin = (
        OnnxBackend(exported_run / "model.onnx", "cpu"),
        OnnxBackend(exported_run / "model.onnx", "cpu", spinning=True),
    )
    assert spin.spinning and not calm.spinning
    np.testing.assert_array_equal(calm(x, channels_first=True), spin(x, channels_first=True))
    np.testing.assert_allclose(
        calm(x.transpose(0, 2, 3, 1)), calm(x, channels_first=True), atol=1e-6
    )  # NHWC in: the same


def test_alternate_schedule_never_decodes_while_the_model_runs(
    random_run, phantom_dir, tmp_path, monkeypatch
):
    """Every decode job of a window ends before the model scores it, and none starts until it has."""
    import threading
    import time

    folder = tmp_path / "many"
    _many_files(folder, _phantom_files(phantom_dir, 1)[0], 23)
    p = Predictor.from_run(random_run, backend="torch", batch_size=4, workers=2)
    events = []  # (start, end, what)
    lock = threading.Lock()
    load, call = Predictor._load, type(p.engine).__call__

    def timed(kind, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    events.append((t0, time.perf_counter(), kind))

        return run

    monkeypatch.setattr(Predictor, "_load", timed("decode", load))
    monkeypatch.setattr(type(p.engine), "__call__", timed("model", call))
    results = list(p.predict_paths([folder]))
    assert len(results) == 23 and sum(r.error is not None for r in results) == 3
    decodes = [(a, b) for a, b, k in events if k == "decode"]
    models = [(a, b) for a, b, k in events if k == "model"]
    assert len(decodes) == 23 and len(models) == 5  # 20 good images in batches of 4
    for a, b in models:
        assert not any(
            da < b and a < db for da, db in decodes
        )  # no decode interval overlaps a model interval


def test_schedules_layouts_and_process_pool_give_the_same_results(random_run, exported_run, mixed_folder):
    """alternate, overlap and a process pool; NHWC (torch) and NCHW (ONNX Runtime) workers: the same
    results in the same order, bad files listed the same way."""
    folder, good, _ = mixed_folder
    for run, backend in ((random_run, "torch"), (exported_run, "onnx")):
        runs = [
            Predictor.from_run(run, backend=backend, batch_size=3, **kw)
            for kw in ({}, {"schedule": "overlap"}, {"pool": "process"})
        ]
        try:
            outs = [list(p.predict_paths([folder])) for p in runs]
            again = list(runs[2].predict_paths(good[:2]))  # the process pool is kept between calls
        finally:
            runs[2].close()
        ref = outs[0]
        assert sum(r.error is None for r in ref) == len(good)
        for other in outs[1:]:
            assert [(r.path, r.label, r.error) for r in other] == [(r.path, r.label, r.error) for r in ref]
            for r, o in zip(ref, other):
                assert r.error or o.probs == pytest.approx(r.probs, abs=1e-5)
        assert [r.path for r in again] == [str(g) for g in good[:2]]
    img = runs[0]._load(good[0])
    assert img.shape == (3, 32, 32) and runs[0].engine.channels_first  # ONNX workers hand over NCHW
    np.testing.assert_array_equal(img, runs[0]._batch([runs[0].prepare(good[0])])[0].transpose(2, 0, 1))
