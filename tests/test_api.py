"""The Python API: ``import liverscope`` stays light, ``liverscope.load_run`` opens a run (or a cv
ensemble), ``Predictor.predict`` takes any input kind and always applies the run's own preprocessing,
the low-level ``predict_arrays`` refuses what is not preprocessed, and the model is a plain
``nn.Module`` with timm's classifier methods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import liverscope
from liverscope.data.preprocess import Preprocessing, normalise
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.inference.predict import EnsemblePredictor, Predictor, Result
from liverscope.models import build_model
from liverscope.rundir import save_model, write_model_meta
from liverscope.utils import softmax
from test_io import write_dicom  # tests/ is on sys.path (no package)

LABELS = ["F0", "F1", "F2", "F3", "F4"]
TOL = 1e-5


def _untrained_run(run_dir: Path, seed: int, **pp) -> Path:
    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(run_dir, build_model("resnet10t", len(LABELS)), LABELS, Preprocessing(**pp))
    return run_dir


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory) -> Path:
    """An untrained run whose preprocessing crops to the scan sector and denoises (every step on)."""
    return _untrained_run(tmp_path_factory.mktemp("crop-run"), 0, size=48, denoise=True, crop_sector=True)


@pytest.fixture(scope="module", params=["trained", "crop"])
def run(request) -> Path:
    return request.getfixturevalue("trained_run" if request.param == "trained" else "crop_run")


@pytest.fixture(scope="module")
def frame(phantom_dir) -> np.ndarray:
    """A raw 'frame' of another size than the model's: a phantom scan on a black border with
    burned-in text, grey stored as RGB like most exported ultrasound frames."""
    scan = np.asarray(
        Image.open(sorted((phantom_dir / "F3").glob("*.png"))[0]).convert("L").resize((150, 150))
    )
    grey = np.zeros((180, 240), np.uint8)
    grey[20:170, 45:195] = scan
    grey[4:12, 4:60] = 255
    return np.repeat(grey[:, :, None], 3, axis=2)


def _probs(r: Result) -> np.ndarray:
    assert r.error is None
    return np.array([r.probs[c] for c in LABELS])


def _same(r: Result, ref: Result) -> None:
    np.testing.assert_allclose(_probs(r), _probs(ref), atol=TOL)


def _file_result(p: Predictor, path: Path) -> Result:
    (r,) = list(p.predict_paths([path]))
    return r


# --------------------------------------------------------------------------------------------------
# import liverscope
# --------------------------------------------------------------------------------------------------


def test_import_liverscope_and_help_do_not_load_torch(tmp_path):
    code = (
        "import sys, liverscope\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "print(liverscope.__version__, ' '.join(sorted(liverscope.__all__)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    names = set(res.stdout.split()[1:])
    assert {
        "load_run",
        "Predictor",
        "load_config",
        "build_model",
        "list_models",
        "LiverscopeError",
        "LiverNet",
        "__version__",
    } <= names
    # `liverscope --help`: every module imported is listed by -X importtime; none is torch
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "liverscope", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0 and "predict" in res.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")
    }
    assert "liverscope.ui.cli" in imported and not {m for m in imported if m.split(".")[0] == "torch"}


def test_top_level_names_resolve_lazily():
    from importlib.metadata import version

    from liverscope.inference import predict

    assert liverscope.__version__ == version("liverscope")
    assert liverscope.load_run is predict.load_run and liverscope.Predictor is Predictor
    assert liverscope.LiverscopeError is LiverscopeError and "bogus" not in dir(liverscope)
    assert {"load_run", "Predictor", "LiverscopeError"} <= set(dir(liverscope))
    with pytest.raises(AttributeError, match="bogus"):
        liverscope.bogus  # noqa: B018


# --------------------------------------------------------------------------------------------------
# load_run
# --------------------------------------------------------------------------------------------------


def test_load_run_on_a_folder_that_is_not_a_run(crop_run, tmp_path):
    with pytest.raises(
        LiverscopeError, match="not a liverscope run directory: it has no model.json.*liverscope train"
    ):
        liverscope.load_run(tmp_path)
    with pytest.raises(LiverscopeError, match="does not exist"):
        liverscope.load_run(tmp_path / "missing")
    with pytest.raises(LiverscopeError, match=f"its run directory is {crop_run}"):
        liverscope.load_run(crop_run / "model.json")
    p = liverscope.load_run(crop_run, backend="torch")
    assert isinstance(p, Predictor) and p.labels == LABELS and p.run_dir == crop_run and p.pp.crop_sector


def test_cv_run_is_one_predictor_averaging_its_fold_logits(tmp_path, frame):
    cv = tmp_path / "cv-run"
    folds = [_untrained_run(cv / "folds" / f"fold{i}", seed=i, size=32, denoise=False) for i in range(3)]
    pp = Preprocessing(size=32, denoise=False)
    write_model_meta(
        cv,
        {
            "architecture": {"name": "resnet10t", "num_classes": 5},
            "labels": LABELS,
            "preprocessing": pp.to_dict(),
            "temperature": 1.5,
            "ensemble": [str(f.relative_to(cv)) for f in folds],
        },
    )
    p = liverscope.load_run(cv, backend="torch", precision="fp32")
    assert (
        isinstance(p, EnsemblePredictor)
        and len(p.members) == 3
        and "fold ensemble of 3 models" in p.describe()
    )
    r = p.predict(frame)
    member_logits = np.stack([m.predict(frame).logits for m in p.members])
    np.testing.assert_allclose(r.logits, member_logits.mean(0), atol=TOL)
    np.testing.assert_allclose(_probs(r), softmax(member_logits.mean(0)[None], 1.5)[0], atol=TOL)
    assert r.ood is None  # the fold models have no detector
    with pytest.raises(LiverscopeError, match="fold ensemble of 3 models"):
        p.model  # noqa: B018


# --------------------------------------------------------------------------------------------------
# Predictor.predict: every input kind, the run's own preprocessing
# --------------------------------------------------------------------------------------------------


def test_every_input_kind_matches_predicting_the_file(run, frame, tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(frame).save(path)
    p = liverscope.load_run(run, backend="torch", precision="fp32")
    ref = _file_result(p, path)
    tensor = torch.from_numpy(frame).permute(2, 0, 1)
    inputs = {
        "str": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "PIL": Image.open(path),
        "uint8 array": frame,
        "RGBA array": np.dstack([frame, np.full(frame.shape[:2], 77, np.uint8)]),
        "float array in [0, 1]": frame / 255.0,
        "uint8 tensor": tensor,
        "float tensor": tensor.float() / 255,
        "float tensor that requires grad": (tensor.float() / 255).requires_grad_(),
    }
    for kind, x in inputs.items():
        r = p.predict(x)
        assert isinstance(r, Result), kind
        _same(r, ref)
    assert (
        p.predict(path).path == str(path)
        and p.predict(frame).path == "image0"
        and p.predict(frame, names="scan").path == "scan"
    )
    # a list (and a 4-D batch) gives a list in order, batched through the model
    batch = p.predict(list(inputs.values()))
    assert [r.path for r in batch][:2] == [str(path), str(path)] and len(batch) == len(inputs)
    for r in batch:
        _same(r, ref)
    assert (
        len(p.predict(np.stack([frame, frame]))) == 2 and len(p.predict(torch.stack([tensor, tensor]))) == 2
    )
    # the raw frame is not what the model sees: predicting it is not scoring it unprocessed
    assert p.prepare(frame).shape == (p.pp.size, p.pp.size, 3)


def test_grey_16bit_rgba_and_dicom_arrays_match_their_files(crop_run, frame, tmp_path):
    p = liverscope.load_run(crop_run, backend="torch", precision="fp32")
    grey = frame[:, :, 0]
    grey16 = grey.astype(np.uint16) * 250 + 40  # 16-bit data, not starting at 0
    rgba = np.dstack([frame, np.full(grey.shape, 200, np.uint8)])
    files = {
        "grey.png": (
            lambda f: Image.fromarray(grey).save(f),
            [grey, grey[:, :, None], torch.from_numpy(grey), torch.from_numpy(grey)[None]],
        ),
        "grey16.png": (
            lambda f: Image.fromarray(grey16).save(f),
            [grey16, Image.open(_save16(grey16, tmp_path))],
        ),
        "rgba.png": (
            lambda f: Image.fromarray(rgba).save(f),
            [rgba, torch.from_numpy(rgba).permute(2, 0, 1)],
        ),
        "scan.dcm": (lambda f: write_dicom(f, grey), [grey]),
        "scan16.dcm": (lambda f: write_dicom(f, grey16, bits=16), [grey16, grey16.astype(np.int32)]),
    }
    for name, (write, arrays) in files.items():
        path = tmp_path / name
        write(path)
        ref = _file_result(p, path)
        _same(p.predict(path), ref)
        for x in arrays:
            _same(p.predict(x), ref)


def _save16(arr: np.ndarray, folder: Path) -> Path:
    path = folder / "pil16.png"
    Image.fromarray(arr).save(path)
    return path


def test_inputs_that_are_not_images_say_what_is_expected(crop_run, frame):
    p = liverscope.load_run(crop_run, backend="torch")
    cases = [
        (np.moveaxis(frame, 2, 0), "channels first"),
        (torch.from_numpy(frame), r"C×H×W \(torchvision"),
        (42, "cannot read a int; expected a path, bytes"),
        (np.full((40, 40), np.nan), "NaN"),
        (np.zeros((40, 40, 5), np.uint8), "not an image"),
        (np.zeros((4, 4), np.uint8), "only 4x4 pixels"),
        (np.zeros((40, 40), complex), "dtype complex"),
    ]
    for x, msg in cases:
        with pytest.raises(LiverscopeError, match=msg):
            p.predict(x)
    with pytest.raises(ImageReadError, match="not a PNG, JPEG"):
        p.predict(b"this is not an image")
    with pytest.raises(LiverscopeError, match="2 name"):
        p.predict([frame], names=["a", "b"])


# --------------------------------------------------------------------------------------------------
# the low-level entry point
# --------------------------------------------------------------------------------------------------


def test_low_level_entry_point_takes_preprocessed_images_only(crop_run, frame):
    p = liverscope.load_run(crop_run, backend="torch", precision="fp32")
    s = p.pp.size
    ref = p.predict(frame)
    prepared = p.prepare(frame)
    _same(p.predict_arrays([prepared])[0], ref)
    _same(p.predict_arrays([normalise(prepared, p.pp)])[0], ref)  # float32 normalised
    _same(p.predict_arrays(np.stack([prepared]))[0], ref)
    refused = {
        "raw frame": frame,
        "raw grey frame": frame[:, :, 0],
        "right size, grey": prepared[:, :, 0],
        "right size, float 0..255": prepared.astype(np.float32),
        "right size, float64": normalise(prepared, p.pp).astype(np.float64),
        "channels first": np.moveaxis(prepared, 2, 0),
        "a tensor": torch.from_numpy(prepared),
    }
    for _what, x in refused.items():
        with pytest.raises(
            LiverscopeError, match=rf"uint8 {s}x{s}x3.*float32 {s}x{s}x3 normalised.*Predictor\.predict"
        ):
            p.predict_arrays([x])
    with pytest.raises(LiverscopeError, match=r"uint8 \(180, 240, 3\)"):
        p.predict_arrays([frame])
    with pytest.raises(LiverscopeError, match="not normalised"):
        p.predict_arrays([prepared.astype(np.float32)])


# --------------------------------------------------------------------------------------------------
# the model: a plain nn.Module with timm's classifier methods
# --------------------------------------------------------------------------------------------------


def test_model_is_a_plain_module_with_timm_classifier_methods(trained_run, frame):
    p = liverscope.load_run(trained_run, backend="torch", precision="fp32")
    model = p.model
    assert isinstance(model, torch.nn.Module) and isinstance(model, liverscope.LiverNet)
    x = torch.from_numpy(normalise(p.prepare(frame), p.pp)).permute(2, 0, 1)[None]
    with torch.no_grad():
        np.testing.assert_allclose(model(x)[0].numpy(), p.predict(frame).logits, atol=1e-4)
    # embedded in other code, and trainable there
    wrapped = torch.nn.Sequential(model, torch.nn.LogSoftmax(1))
    wrapped(x).sum().backward()
    assert wrapped[0].get_classifier().weight.grad is not None

    fc = model.get_classifier()
    assert isinstance(fc, torch.nn.Linear) and fc.out_features == len(LABELS)
    assert model.get_submodule(model.get_classifier(name_only=True)) is fc
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.arch["num_classes"] == 3
    assert (
        model.get_classifier().out_features == 3
        and model.get_classifier().in_features == model.head_hidden_size
    )
    assert model.eval()(x).shape == (1, 3)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    model.reset_classifier(0)  # timm: no classifier, the features that fed it
    assert model(x).shape == (1, model.head_hidden_size)
    with pytest.raises(LiverscopeError, match="global average"):
        model.reset_classifier(3, global_pool="max")
