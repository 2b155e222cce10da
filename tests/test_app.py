"""The Streamlit app (AppTest, no browser): results per upload, bad uploads, privacy of DICOM
identifiers, model card, CSV download, and the `serve` command's binding and warning."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from liverscope.segment import panels
from liverscope.ui import app as appmod
from liverscope.utils import read_json
from synthetic_study import us_dataset  # tests/ is on sys.path (no package)

APP = str(Path(appmod.__file__).resolve())
LABELS = ["F0", "F1", "F2", "F3", "F4"]
SECRETS = ["DOE", "JANE", "998877", "19600101", "St Elsewhere"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def dicom_bytes(pixels: np.ndarray | None, name="DOE^JANE", patient_id="MRN-998877") -> bytes:
    """An ultrasound DICOM with patient identifiers in the header (no pixel data when ``pixels`` is None)."""
    ds = us_dataset()
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.InstitutionName = "St Elsewhere"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def fan_with_burned_in_text(size: int = 128) -> np.ndarray:
    """A grey image: speckled scan fan in the middle, a bright 'patient name' block in the top-left border."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    angle = np.degrees(np.arctan2(xx - size / 2, yy + size * 0.1))
    r = np.hypot(xx - size / 2, yy + size * 0.1)
    fan = (np.abs(angle) < 35) & (r > size * 0.2) & (r < size * 1.0)
    img = np.where(fan, g.integers(60, 200, (size, size)), 0).astype(np.uint8)
    img[3:10, 3:40] = 255  # burned-in text outside the fan
    return img


def all_text(at) -> str:
    """Every element's protobuf text (labels, values, captions, table bytes) of a rendered AppTest page."""
    out = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def page_errors(at) -> list[str]:
    """The app's red errors, but the sidebar's notice that the run was trained on the synthetic phantoms
    (every test run here is: that notice is right, and tested on its own)."""
    from liverscope.evaluate.notices import PHANTOMS

    return [e.value for e in at.error if e.value != PHANTOMS]


def png_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


@pytest.fixture(scope="module")
def app_run(tmp_path_factory) -> Path:
    """An untrained run with validation figures in model.json (the page's mechanics need no training)."""
    import torch

    from liverscope.data.preprocess import Preprocessing
    from liverscope.models.registry import build_model
    from liverscope.rundir import save_model, update_model_meta

    run = tmp_path_factory.mktemp("app-run") / "phantom-app"
    run.mkdir()
    torch.manual_seed(0)
    # 64 px: resnet10t's last feature map is 2x2, so class activation maps have some structure
    save_model(run, build_model("resnet10t", 5), LABELS, Preprocessing(size=64, denoise=False))
    update_model_meta(
        run, validation={"accuracy": 0.8125, "balanced_accuracy": 0.7937, "macro_f1": 0.7781}, temperature=1.3
    )
    return run


def start(run: Path, monkeypatch, **env):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LIVERSCOPE_RUN_DIR", str(run))
    monkeypatch.setenv("LIVERSCOPE_BACKEND", "torch")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


# --------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------


def test_dicom_identifiers_and_redaction():
    data = dicom_bytes(np.zeros((16, 16), np.uint8))
    ids = appmod.dicom_identifiers(data)
    for s in ("DOE^JANE", "DOE", "JANE", "MRN-998877", "998877", "19600101", "St Elsewhere"):
        assert s in ids
    assert appmod.redact("doe_jane MRN-998877 scan.dcm", ids) == "[redacted]_[redacted] [redacted] scan.dcm"
    assert appmod.dicom_identifiers(b"\x89PNG\r\n\x1a\n....") == []


def test_blank_outside_sector_removes_burned_in_text():
    img = np.repeat(fan_with_burned_in_text()[:, :, None], 3, axis=2)
    out = appmod.blank_outside_sector(img)
    assert img[3:10, 3:40].min() == 255 and out[3:10, 3:40].max() == 0
    assert np.array_equal(out[80, 64], img[80, 64])  # inside the fan untouched


def test_draw_outline_marks_the_mask_border():
    from liverscope.segment.outline import draw_outline

    img = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = draw_outline(img, mask)
    assert (out[10, 10:30] == (0, 255, 0)).all() and out[20, 20].max() == 0 and out[2, 2].max() == 0


def test_analyse_upload_dicom(app_run):
    from liverscope.inference.predict import Predictor

    p = Predictor.from_run(app_run, backend="torch")
    a = appmod.analyse_upload(p, "DOE_JANE_998877.dcm", dicom_bytes(fan_with_burned_in_text()), 10 * 2**20)
    assert a.ok and a.result.label in LABELS
    assert a.name == "[redacted]_[redacted]_[redacted].dcm"
    assert a.image[3:10, 3:40].max() == 0  # burned-in text blanked for display
    assert a.cam is not None and a.cam.shape == (64, 64, 3) and a.cam.dtype == np.uint8
    assert (
        a.cam[2:5, 2:19].max() == 0 and a.cam[40, 32].max() > 0
    )  # heatmap blanked where the text was, not in the fan
    bad = appmod.analyse_upload(p, "DOE_JANE.dcm", dicom_bytes(None), 10 * 2**20)
    assert not bad.ok and "no pixel data" in bad.result.error
    assert "DOE" not in bad.result.error + bad.name


def test_cam_overlay_depends_on_the_class(trained_run, phantom_dir):
    """On a trained model the heatmap has structure and differs between classes."""
    from liverscope.inference.predict import Predictor

    p = Predictor.from_run(trained_run, backend="torch")
    _, img = p.predict_bytes("x.png", png_bytes(sorted((phantom_dir / "F3").glob("*.png"))[0]))
    overlays = [appmod.cam_overlay(p.model, img, p.pp, k) for k in range(len(p.labels))]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in overlays)
    assert any(not np.array_equal(o, overlays[0]) for o in overlays[1:])
    assert any(o.reshape(-1, 3).std(0).max() > 1 for o in overlays)


def test_head_only_gradcam_equals_full_gradcam(trained_run, phantom_dir):
    """Back-propagating through the head only gives exactly pytorch-grad-cam's Grad-CAM at cam_layer."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from liverscope.data.preprocess import normalise_batch
    from liverscope.explain.cams import HeadGradOnly
    from liverscope.inference.predict import Predictor

    p = Predictor.from_run(trained_run, backend="torch")
    model = p.model.eval()
    for f in sorted((phantom_dir / "F1").glob("*.png"))[:2]:
        _, img = p.predict_bytes(f.name, f.read_bytes())
        x = torch.from_numpy(normalise_batch([img], p.pp)).permute(0, 3, 1, 2).contiguous()
        for k in (0, 3):
            with GradCAM(model=model, target_layers=[model.cam_layer]) as cam:
                full = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
            model.zero_grad(set_to_none=True)
            with GradCAM(model=HeadGradOnly(model), target_layers=[model.cam_layer]) as cam:
                fast = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
            np.testing.assert_allclose(fast, full, atol=1e-5)
            assert all(
                q.grad is None for q in model.backbone.parameters()
            )  # no backward through the backbone


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------


def test_page_shows_disclaimer_and_model_card(app_run, monkeypatch):
    at = start(app_run, monkeypatch)
    assert "Decision support, not a diagnosis" in at.warning[0].value
    side = "\n".join(m.value for m in at.sidebar.markdown)
    assert "resnet10t" in side and "F0, F1, F2, F3, F4" in side
    assert "accuracy: 0.812" in side and "macro f1: 0.778" in side  # validation figures from model.json
    assert "temperature 1.30" in side
    assert "liverscope" in "\n".join(c.value for c in at.sidebar.caption)
    assert len(at.file_uploader) == 1 and at.file_uploader[0].accept_multiple_files


def test_serve_tta_reaches_the_app_predictor(app_run, monkeypatch):
    """``serve --tta flip`` sets LIVERSCOPE_TTA; the app then scores with the flip average and says so."""
    at = start(app_run, monkeypatch, LIVERSCOPE_TTA="flip")
    inference = [c.value for c in at.sidebar.caption if c.value.startswith("Inference:")]
    assert inference and "flip-averaged" in inference[0]
    plain = start(app_run, monkeypatch, LIVERSCOPE_TTA="none")
    assert not any("flip-averaged" in c.value for c in plain.sidebar.caption)


def test_page_without_a_run_says_how_to_start(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LIVERSCOPE_RUN_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "liverscope serve" in at.error[0].value


def test_uploads_good_and_bad_keep_the_app_working(app_run, phantom_dir, monkeypatch):
    at = start(app_run, monkeypatch, LIVERSCOPE_MAX_UPLOAD_MB="0.05")
    good = png_bytes(sorted((phantom_dir / "F4").glob("*.png"))[0])
    big = b"\x89PNG\r\n\x1a\n" + bytes(60_000)
    at.file_uploader[0].set_value(
        [
            ("liver1.png", good, "image/png"),
            ("notes.png", b"just some text", "image/png"),
            ("cut.png", good[:200], "image/png"),
            ("huge.png", big, "image/png"),
            ("report.dcm", dicom_bytes(None), "application/dicom"),
            ("empty.png", b"", "image/png"),
        ]
    )
    at.run()
    assert not at.exception, at.exception
    errors = {e.value.split(":")[0]: e.value for e in at.error}
    assert set(errors) == {
        f"Could not analyse {n}" for n in ("notes.png", "cut.png", "huge.png", "report.dcm", "empty.png")
    }
    assert "not a PNG, JPEG" in errors["Could not analyse notes.png"]
    assert "truncated" in errors["Could not analyse cut.png"]
    assert "upload limit" in errors["Could not analyse huge.png"]
    assert "no pixel data" in errors["Could not analyse report.dcm"]
    assert "empty" in errors["Could not analyse empty.png"]
    # the good image still has its result
    metric = {m.label: m.value for m in at.metric}
    assert metric["Predicted class"] in LABELS
    assert {"≥F2 significant", "≥F3 advanced", "F4 cirrhosis"} <= set(metric)
    table = at.table[0].value
    assert list(table.index) == LABELS and all(v.endswith("%") for v in table["probability"])
    assert any("1 could not" in m.value or "5 could not" in m.value for m in at.markdown)
    csv_text = at.session_state["results_csv"]
    assert csv_text.count("\n") == 7 and "liver1.png," + metric["Predicted class"] in csv_text
    assert len(at.get("download_button")) == 2  # the CSV and the exam's PDF (app_reports)

    # the app keeps working: a new good upload after the bad ones is analysed
    at.file_uploader[0].set_value(
        [("liver2.png", png_bytes(sorted((phantom_dir / "F0").glob("*.png"))[0]), "image/png")]
    )
    at.run()
    assert not at.exception and not page_errors(at)
    assert [s.value for s in at.subheader] == ["liver2.png"]


def test_probabilities_and_endpoints_match_the_predictor(app_run, phantom_dir, monkeypatch):
    from liverscope.inference.predict import Predictor

    data = png_bytes(sorted((phantom_dir / "F2").glob("*.png"))[1])
    ref, _ = Predictor.from_run(app_run, backend="torch").predict_bytes("p.png", data)
    at = start(app_run, monkeypatch)
    at.file_uploader[0].set_value(("p.png", data, "image/png"))
    at.run()
    table = at.table[0].value
    for c in LABELS:
        assert table.loc[c, "probability"] == f"{ref.probs[c]:.1%}"
    metric = {m.label: m.value for m in at.metric}
    assert metric["Predicted class"] == ref.label
    assert metric["≥F2 significant"] == f"{ref.endpoints['≥F2']:.1%}"


def test_dicom_identifiers_never_shown_or_written(app_run, monkeypatch):
    at = start(app_run, monkeypatch)
    at.file_uploader[0].set_value(
        [
            ("DOE_JANE_MRN-998877.dcm", dicom_bytes(fan_with_burned_in_text()), "application/dicom"),
            ("jane-doe-19600101.dcm", dicom_bytes(None), "application/dicom"),
        ]
    )
    at.run()
    assert not at.exception
    text = all_text(at)
    assert "redacted" in text and "Predicted class" in text and "no pixel data" in text
    csv_text = at.session_state["results_csv"]
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), secret
        assert secret.lower() not in csv_text.lower(), secret


def test_non_metavir_labels_show_no_endpoints(app_run, phantom_dir, monkeypatch, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(app_run, run)
    meta = read_json(run / "model.json")
    meta["labels"] = ["normal", "fatty", "cirrhotic", "tumour", "other"]
    from liverscope.utils import atomic_write_json

    atomic_write_json(run / "model.json", meta)
    at = start(run, monkeypatch)
    at.file_uploader[0].set_value(
        ("x.png", png_bytes(sorted((phantom_dir / "F1").glob("*.png"))[0]), "image/png")
    )
    at.run()
    assert [m.label for m in at.metric] == ["Predicted class"]
    assert "p_ge_F2" not in at.session_state["results_csv"]


@pytest.mark.slow
def test_trained_run_predicts_an_obvious_phantom(trained_run, phantom_dir, monkeypatch):
    """On the trained phantom run the page agrees with the Predictor, and shows the CAM overlay."""
    from liverscope.inference.predict import Predictor

    at = start(trained_run, monkeypatch)
    p = Predictor.from_run(trained_run, backend="torch")
    files = sorted((phantom_dir / "F4").glob("*.png"))[-3:]
    at.file_uploader[0].set_value([(f.name, f.read_bytes(), "image/png") for f in files])
    at.run()
    assert not at.exception and not page_errors(at)
    shown = [m.value for m in at.metric if m.label == "Predicted class"]
    assert shown == [r.label for r in p.predict_paths(files)]
    captions = all_text(at)
    assert "Grad-CAM" in captions


# --------------------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------------------


def _serve(monkeypatch, args):
    import os

    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    calls = []

    def fake_execve(exe, argv, env):
        calls.append((argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_execve)
    res = CliRunner().invoke(app, ["serve", *args])
    return res, calls


def test_serve_binds_localhost_by_default(app_run, monkeypatch):
    res, calls = _serve(monkeypatch, [str(app_run)])
    assert res.exit_code == 0, res.output
    argv, env = calls[0]
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("run") + 1].endswith("app.py")
    assert env["LIVERSCOPE_RUN_DIR"] == str(app_run.resolve())
    assert "no authentication" not in res.output


def test_serve_elsewhere_warns_about_authentication(app_run, monkeypatch):
    res, calls = _serve(
        monkeypatch, [str(app_run), "--host", "0.0.0.0", "--port", "9000", "--max-upload-mb", "20"]
    )
    assert res.exit_code == 0
    assert "no authentication" in res.output and "proxy" in res.output
    argv, env = calls[0]
    assert argv[argv.index("--server.address") + 1] == "0.0.0.0"
    assert argv[argv.index("--server.port") + 1] == "9000"
    assert argv[argv.index("--server.maxUploadSize") + 1] == "20" and env["LIVERSCOPE_MAX_UPLOAD_MB"] == "20"


def _flag(argv: list[str], name: str) -> str:
    """The value of a flag on a command line; it must appear once (a later copy would override it)."""
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def test_serve_command_line_carries_the_upload_limit_and_xsrf(app_run, monkeypatch):
    """Streamlit's own settings, as flags (which outrank its config files and STREAMLIT_* variables):
    the server's upload limit follows --max-upload-mb (default 50) and XSRF protection (with CORS) is on."""
    res, calls = _serve(monkeypatch, [str(app_run)])
    assert res.exit_code == 0, res.output
    argv, env = calls[0]
    assert (
        _flag(argv, "--server.maxUploadSize")
        == str(appmod.DEFAULT_MAX_UPLOAD_MB)
        == env["LIVERSCOPE_MAX_UPLOAD_MB"]
        == "50"
    )
    assert _flag(argv, "--server.enableXsrfProtection") == "true"
    assert _flag(argv, "--server.enableCORS") == "true"
    res, calls = _serve(monkeypatch, [str(app_run), "--max-upload-mb", "3"])
    argv, env = calls[0]
    assert _flag(argv, "--server.maxUploadSize") == "3" == env["LIVERSCOPE_MAX_UPLOAD_MB"]
    assert _flag(argv, "--server.enableXsrfProtection") == "true"
    res, calls = _serve(monkeypatch, [str(app_run), "--max-upload-mb", "0"])
    assert res.exit_code == 2 and "--max-upload-mb" in res.output and not calls


def test_page_upload_limit_never_exceeds_the_servers(monkeypatch):
    monkeypatch.setenv("LIVERSCOPE_MAX_UPLOAD_MB", "20")
    assert appmod.max_upload_bytes() == 20 * 2**20
    assert (
        appmod.max_upload_bytes(server_mb=5) == 5 * 2**20
    )  # Streamlit started with a lower server.maxUploadSize
    assert appmod.max_upload_bytes(server_mb=200) == 20 * 2**20
    monkeypatch.delenv("LIVERSCOPE_MAX_UPLOAD_MB")
    assert appmod.max_upload_bytes(server_mb=200) == appmod.DEFAULT_MAX_UPLOAD_MB * 2**20


def test_page_refuses_to_run_without_xsrf_protection(app_run, monkeypatch):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LIVERSCOPE_RUN_DIR", str(app_run))
    config.set_option("server.enableXsrfProtection", False)
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
    finally:
        config.set_option("server.enableXsrfProtection", True)
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [appmod.XSRF_OFF]
    assert not at.file_uploader  # nothing can be uploaded


def test_serve_refuses_a_folder_without_a_model(tmp_path, monkeypatch):
    res, calls = _serve(monkeypatch, [str(tmp_path)])
    assert res.exit_code == 1 and "train first" in res.output and not calls


def test_heatmaps_from_concurrent_sessions_do_not_mix(trained_run, phantom_dir):
    """Sessions share one model: heatmaps computed in parallel threads equal those computed alone."""
    from concurrent.futures import ThreadPoolExecutor

    from liverscope.inference.predict import Predictor

    p = Predictor.from_run(trained_run, backend="torch")
    imgs = [
        p.predict_bytes(f.name, f.read_bytes())[1]
        for f in sorted((phantom_dir / "F2").glob("*.png"))[:2]
        + sorted((phantom_dir / "F4").glob("*.png"))[:2]
    ]
    alone = [appmod.cam_overlay(p.model, im, p.pp, k % 5) for k, im in enumerate(imgs)]
    with ThreadPoolExecutor(4) as ex:
        together = list(
            ex.map(lambda kv: appmod.cam_overlay(p.model, kv[1], p.pp, kv[0] % 5), list(enumerate(imgs)) * 3)
        )
    for k, got in enumerate(together):
        np.testing.assert_array_equal(got, alone[k % len(imgs)])


def test_segmentation_outline_shown_when_the_run_has_a_segmenter(app_run, phantom_dir, monkeypatch):
    """The page outlines the regions when liverscope.segment offers the run's segmenter, and not otherwise."""
    from types import SimpleNamespace

    from liverscope import segment

    calls = []

    def segmenters(run_dir):
        calls.append(("load", Path(run_dir)))
        return {"lesion": SimpleNamespace(meta={})} if Path(run_dir) == app_run else {}

    def predict_proba(segmenter, images, scores=False):
        calls.append(("mask", images[0].shape))
        m = np.zeros(images[0].shape[:2], np.float32)
        m[16:48, 16:48] = 0.9
        return (
            ([m], [None]) if scores else [m]
        )  # scores: segment_images asks for the image-level head's (none here)

    # the app calls segment.unet.segmenters / predict_proba (then the segmenter's gate) through the module at call time
    monkeypatch.setattr(segment.unet, "segmenters", segmenters)
    monkeypatch.setattr(segment.unet, "predict_proba", predict_proba)
    monkeypatch.setattr(panels, "_SEGMENTERS", {})
    at = start(app_run, monkeypatch)
    data = png_bytes(sorted((phantom_dir / "F3").glob("*.png"))[0])
    at.file_uploader[0].set_value(
        [("a.png", data, "image/png"), ("b.png", data[::-1], "image/png"), ("c.png", data, "image/png")]
    )
    at.run()
    assert not at.exception
    captions = all_text(at)
    assert (
        captions.count("segmented regions (outline): lesion red") == 2
    )  # a.png and c.png; b.png is not an image
    assert [c for c in calls if c[0] == "load"] == [("load", app_run)]  # loaded once per run
    from liverscope.inference.predict import Predictor

    p = Predictor.from_run(app_run, backend="torch")
    a = appmod.analyse_upload(p, "x.png", data, 2**20)
    assert a.outline is not None and (a.outline[16, 16:48] == (255, 48, 48)).all()  # lesions in red
    monkeypatch.setattr(panels, "_SEGMENTERS", {str(app_run.resolve()): {}})
    assert appmod.analyse_upload(p, "x.png", data, 2**20).outline is None


# --------------------------------------------------------------------------------------------------
# a flagged image is shown as such; where the figures come from
# --------------------------------------------------------------------------------------------------


def _result_block(at, index: int):
    """The bordered container of the ``index``-th upload's result (``st.container(key="result-I")``)."""
    return at.main.get_by_key(f"result-{index}")


def test_flagged_image_has_no_headline_stage_and_a_red_warning(app_run, phantom_dir, monkeypatch, tmp_path):
    """Of two uploads, the one above the run's out-of-distribution threshold shows "not assessable" with a
    red warning that says why, its stage only in the "Show anyway" expander; the other shows its stage;
    the CSV keeps every number of both."""
    import csv

    from liverscope import rundir
    from liverscope.evaluate.notices import NOT_ASSESSABLE, UNLIKE_TRAINING
    from liverscope.evaluate.ood import energy_score
    from liverscope.inference.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(app_run, run)
    files = [sorted((phantom_dir / c).glob("*.png"))[0] for c in ("F0", "F4")]
    p = Predictor.from_run(run, backend="torch")
    energy = {
        f.name: float(energy_score(np.array([p.predict_paths([f]).__next__().logits]))[0]) for f in files
    }
    assert len(set(energy.values())) == 2
    flagged, kept = sorted(energy, key=energy.get, reverse=True)  # energy: higher = more unlike
    threshold = sum(energy.values()) / 2
    rundir.save_ood(
        run, {}, {"method": "energy", "threshold": threshold, "quantile": 0.95}
    )  # energy needs no statistics

    at = start(run, monkeypatch)
    at.file_uploader[0].set_value([(f.name, f.read_bytes(), "image/png") for f in files])
    at.run()
    assert not at.exception, at.exception
    order = [f.name for f in files]
    bad, good = _result_block(at, order.index(flagged)), _result_block(at, order.index(kept))

    # the flagged image: "not assessable" as the headline, the reason in red, the stage only behind "Show anyway"
    assert [(m.label, m.value) for m in bad.metric if m.label == "Predicted class"] == [
        ("Predicted class", NOT_ASSESSABLE)
    ]
    assert len(bad.error) == 1 and UNLIKE_TRAINING in bad.error[0].value
    assert (
        f"{energy[flagged]:.4g}" in bad.error[0].value and f"{threshold:.4g}" in bad.error[0].value
    )  # score vs threshold
    assert not bad.warning  # not the yellow of the general disclaimer
    (anyway,) = bad.expander
    assert anyway.label.startswith("Show anyway")
    inside = {m.label: m.value for m in anyway.metric}
    assert inside["The model's class (not assessable)"] in LABELS and "≥F2 significant" in inside
    outside = [
        m.value
        for m in bad.metric
        if m.label != "The model's class (not assessable)" and not m.label.startswith(("≥F", "F4 "))
    ]
    assert outside == [NOT_ASSESSABLE]  # no stage as a headline: the only figure outside the expander
    bad_text = "\n".join(str(e.proto) for e in bad if getattr(e, "proto", None) is not None)
    assert (
        "regions driving the model" in bad_text and "regions driving \\'" not in bad_text
    )  # the heatmap caption names no stage

    # the other image still shows its stage
    assert {m.label: m.value for m in good.metric}["Predicted class"] in LABELS
    assert "regions driving \\'" in "\n".join(
        str(e.proto) for e in good if getattr(e, "proto", None) is not None
    )
    assert not good.error and not good.expander
    # the page says how many are not assessable; the only yellow box is the decision-support notice
    assert any("1 not assessable" in m.value for m in at.markdown)
    assert [w.value for w in at.warning] == [appmod.DECISION_SUPPORT]
    # the CSV keeps every number of both
    rows = {r["file"]: r for r in csv.DictReader(at.session_state["results_csv"].splitlines())}
    assert rows[flagged]["ood"] == "true" and rows[kept]["ood"] == "false"
    assert all(rows[n]["prediction"] in LABELS and rows[n]["p_ge_F2"] and rows[n]["ood_score"] for n in rows)
    assert "energy score" in "\n".join(m.value for m in at.sidebar.markdown)


def test_sidebar_names_the_training_data_and_says_phantoms(app_run, monkeypatch, tmp_path):
    from liverscope import rundir
    from liverscope.evaluate.notices import PHANTOMS

    at = start(app_run, monkeypatch)
    side = "\n".join(m.value for m in at.sidebar.markdown)
    assert "Trained on: not recorded" in side and not at.sidebar.error  # an old run says it does not know
    for phantoms in (True, False):
        run = tmp_path / f"run-{phantoms}"
        shutil.copytree(app_run, run)
        rundir.update_model_meta(
            run,
            training_data={
                "path": "/data/liver_us",
                "images": 312,
                "sources": {"640x480 jpeg grey": 300, "mixed sizes png rgb": 12},
                "synthetic_phantoms": phantoms,
            },
        )
        at = start(run, monkeypatch)
        side = "\n".join(m.value for m in at.sidebar.markdown)
        assert (
            "/data/liver\\_us: 312 images from 2 acquisition sources (640x480 jpeg grey (300); mixed sizes png rgb (12))"
            in side
        )
        assert [e.value for e in at.sidebar.error] == ([PHANTOMS] if phantoms else [])
