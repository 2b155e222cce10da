"""Class activation maps: localisation, every backbone, hooks, the scan sector, faithfulness, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from liverscope.data.datasets import make_phantom
from liverscope.data.preprocess import Preprocessing, crop_box, normalise_batch, preprocess_array
from liverscope.data.sector import sector_mask
from liverscope.explain import cams as explain
from liverscope.explain import images as explain_images
from liverscope.explain.faithfulness import energy_outside_sector, faithfulness
from liverscope.explain.gallery import write_cam_gallery
from liverscope.models import LiverNet, build_model, list_models

PP64 = Preprocessing(size=64, denoise=False)
METHODS = ["gradcam", "gradcam++", "hirescam", "eigencam", "layercam"]


def phantom_inputs(n: int = 3, size: int = 64) -> list[np.ndarray]:
    pp = Preprocessing(size=size, denoise=False)
    return [preprocess_array(make_phantom(k % 5, size=size, seed=k)[0], pp) for k in range(n)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (conftest's ``one_thread``)."""


def n_hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


# --------------------------------------------------------------------------------------------------
# A model trained to look at a planted bright patch
# --------------------------------------------------------------------------------------------------

PATCH_SIZE, PATCH = 64, 16


def patch_images(n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, list]:
    """Grey noise; odd images carry a bright square at a random place (its top-left corner returned)."""
    imgs, ys, corners = [], [], []
    for i in range(n):
        im = np.clip(rng.normal(110, 25, (PATCH_SIZE, PATCH_SIZE)), 0, 255)
        corner = None
        if i % 2:
            r, c = (int(v) for v in rng.integers(0, PATCH_SIZE - PATCH, 2))
            im[r : r + PATCH, c : c + PATCH] = 250
            corner = (r, c)
        imgs.append(np.repeat(im.astype(np.uint8)[:, :, None], 3, axis=2))
        ys.append(i % 2)
        corners.append(corner)
    return imgs, np.array(ys), corners


@pytest.fixture(scope="module")
def patch_model():
    """resnet10t as a LiverNet (linear head), trained 25 steps to detect the patch.

    The registry builds the backbone at output stride 32: a 2x2 map at 64 px says nothing about
    where. Here the same timm architecture runs at output stride 8 (dilated last stages: an 8x8 map),
    so the test can ask where the map peaks at a CPU-friendly image size.
    """
    import timm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = LiverNet(
        timm.create_model("resnet10t", num_classes=0, global_pool="", output_stride=8),
        2,
        head="linear",
        dropout=0.0,
    )
    model.arch = {"name": "resnet10t", "num_classes": 2, "head": "linear"}
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(25):
            imgs, ys, _ = patch_images(16, rng)
            x = torch.from_numpy(normalise_batch(imgs, PP64)).permute(0, 3, 1, 2)
            loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(ys))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(prev)
    model.eval()
    test_imgs, test_y, corners = patch_images(40, np.random.default_rng(123))
    with torch.no_grad():
        acc = (
            model(torch.from_numpy(normalise_batch(test_imgs, PP64)).permute(0, 3, 1, 2)).argmax(1).numpy()
            == test_y
        ).mean()
    assert acc >= 0.9, f"the patch detector did not learn (accuracy {acc:.2f})"
    pos = [i for i in range(len(test_y)) if test_y[i] == 1]
    return model, [test_imgs[i] for i in pos], [corners[i] for i in pos]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_cam_peaks_inside_the_planted_patch(patch_model, method):
    model, imgs, corners = patch_model
    # plain noise fills the frame: the sector is the whole image
    cams, classes = explain.compute_cams(
        model, imgs, PP64, targets=[1] * len(imgs), method=method, restrict_to_sector=False
    )
    assert cams.shape == (len(imgs), PATCH_SIZE, PATCH_SIZE) and list(classes) == [1] * len(imgs)
    tol = 4  # half a cell of the 8 px feature grid: an upsampled map cannot place its peak more finely
    hits = []
    for cam, (r, c) in zip(cams, corners):
        y, x = np.unravel_index(np.argmax(cam), cam.shape)
        hits.append(r - tol <= y < r + PATCH + tol and c - tol <= x < c + PATCH + tol)
    assert np.mean(hits) >= 0.8, f"{method}: peak inside the patch for {np.mean(hits):.0%} of images"
    mean_in = np.mean([cam[r : r + PATCH, c : c + PATCH].mean() for cam, (r, c) in zip(cams, corners)])
    assert mean_in > 1.5 * cams.mean()  # hot on the patch, cooler elsewhere


def test_faithfulness_prefers_gradcam_to_a_random_map(patch_model):
    model, imgs, corners = patch_model
    imgs = imgs[:6]
    b = explain.explain_batch(model, imgs, PP64, targets=[1] * len(imgs), restrict_to_sector=False)
    full = [np.ones((PATCH_SIZE, PATCH_SIZE), bool)] * len(imgs)
    good = faithfulness(model, imgs, PP64, b.cams, b.targets, sectors=full, raw_cams=b.raw)
    rand_maps = np.random.default_rng(0).random(b.cams.shape).astype(np.float32)
    rand = faithfulness(model, imgs, PP64, rand_maps, b.targets, sectors=full)
    for res in (good, rand):
        assert set(res["mean"]) == {"deletion_auc", "road", "road_morf", "road_lerf", "energy_outside_sector"}
        assert all(len(res[k]) == len(imgs) and np.all(np.isfinite(res[k])) for k in res["mean"])
        assert 0 <= res["mean"]["deletion_auc"] <= 1
    # deleting the map's hottest pixels first removes the patch first: the class probability collapses early
    assert good["mean"]["deletion_auc"] < rand["mean"]["deletion_auc"]
    assert good["mean"]["road"] > rand["mean"]["road"]
    assert good["mean"]["energy_outside_sector"] == 0.0  # the whole image is the sector here


# --------------------------------------------------------------------------------------------------
# Every backbone, every method, hooks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_backbone_gives_a_cam_of_the_input_size(name):
    torch.manual_seed(0)
    model = build_model(name, 3, head="linear")
    imgs = phantom_inputs(2)
    before = n_hooks(model)
    for _ in range(2):
        cams, classes = explain.compute_cams(model, imgs, PP64)
        assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
        assert np.all(np.isfinite(cams)) and cams.min() >= 0 and cams.max() <= 1
        assert classes.shape == (2,) and all(0 <= k < 3 for k in classes)
    assert n_hooks(model) == before
    assert model.training  # built in training mode, and left so


@pytest.mark.parametrize("method", METHODS)
def test_methods_release_their_hooks(method):
    torch.manual_seed(0)
    model = build_model("resnet10t", 4, head="linear").train()
    imgs = phantom_inputs(3)
    before = n_hooks(model)
    for k in range(3):
        cams, classes = explain.compute_cams(
            model, imgs, PP64, targets=[k] * 3, method=method, batch_size=2, aug_smooth_flip=bool(k % 2)
        )
        assert cams.shape == (3, 64, 64) and cams.min() >= 0 and cams.max() <= 1 and list(classes) == [k] * 3
        assert n_hooks(model) == before
    assert model.training  # the caller's mode is restored
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="out of range"):
        explain.compute_cams(model, imgs, PP64, targets=[9, 0, 0], method=method)
    assert n_hooks(model) == before


def test_unknown_method_is_a_clear_error():
    model = build_model("resnet10t", 2, head="linear")
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'.*gradcam"):
        explain.compute_cams(model, phantom_inputs(1), PP64, method="scorecam")
    assert set(explain.CAM_METHODS) == set(METHODS)
    assert explain.CAM_METHODS["gradcam"].__name__ == "GradCAM"


def test_unrestricted_gradcam_is_pytorch_grad_cams_gradcam():
    """Through the head only, with liverscope's own upsampling and normalisation: the library's map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = build_model("resnet10t", 3, head="linear").eval()
    imgs = phantom_inputs(2, size=96)
    pp = Preprocessing(size=96, denoise=False)
    x = torch.from_numpy(normalise_batch(imgs, pp)).permute(0, 3, 1, 2).contiguous()
    for k in (0, 2):
        with GradCAM(model=model, target_layers=[model.cam_layer]) as cam:
            ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)] * 2)
        ours, _ = explain.compute_cams(model, imgs, pp, targets=[k, k], restrict_to_sector=False)
        np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("head", ["seed", "linear"])
def test_hirescam_equals_gradcam_behind_a_pooled_head(head):
    """Every liverscope head starts with global average pooling: the gradient is the same at every
    position, so HiResCAM and Grad-CAM coincide (as docs/explain.md says)."""
    torch.manual_seed(3)
    model = build_model("resnet10t", 3, head=head)
    imgs = phantom_inputs(2, size=96)
    pp = Preprocessing(size=96, denoise=False)
    g = explain.explain_batch(model, imgs, pp, targets=[0, 2], method="gradcam")
    h = explain.explain_batch(model, imgs, pp, targets=[0, 2], method="hirescam")
    np.testing.assert_allclose(g.raw, h.raw, rtol=1e-4, atol=1e-6)


def test_flip_average_is_mirror_symmetric():
    """The flip-averaged map of the mirrored image is the mirror of the flip-averaged map."""
    torch.manual_seed(2)
    model = build_model("resnet10t", 3, head="linear")
    imgs = phantom_inputs(2, size=96)
    pp = Preprocessing(size=96, denoise=False)
    a, _ = explain.compute_cams(
        model, imgs, pp, targets=[1, 2], restrict_to_sector=False, aug_smooth_flip=True
    )
    b, _ = explain.compute_cams(
        model,
        [np.ascontiguousarray(im[:, ::-1]) for im in imgs],
        pp,
        targets=[1, 2],
        restrict_to_sector=False,
        aug_smooth_flip=True,
    )
    np.testing.assert_allclose(a, b[:, :, ::-1], atol=1e-4)
    plain, _ = explain.compute_cams(model, imgs, pp, targets=[1, 2], restrict_to_sector=False)
    assert not np.allclose(plain, a, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# The scan sector
# --------------------------------------------------------------------------------------------------


def test_sector_restriction_zeroes_the_phantoms_border():
    torch.manual_seed(0)
    model = build_model("resnet18", 3, head="linear")
    imgs = phantom_inputs(3, size=96)
    pp = Preprocessing(size=96, denoise=False)
    b = explain.explain_batch(model, imgs, pp, targets=[0, 1, 2])
    for im, cam, raw, sec in zip(imgs, b.cams, b.raw, b.sectors):
        np.testing.assert_array_equal(sec, sector_mask(im))
        assert not sec[:6, :20].any() and not sec[-3:, :3].any()  # the "LIV" text and the corners are outside
        assert cam[~sec].max() == 0  # nothing outside the fan
        if raw[sec].max() > raw[sec].min():
            assert cam[sec].max() == pytest.approx(1.0) and cam[sec].min() == 0.0  # normalised over the fan
    e = b.energy_outside
    assert e.shape == (3,) and np.all((e >= 0) & (e <= 1))
    assert e == pytest.approx([energy_outside_sector(r, s) for r, s in zip(b.raw, b.sectors)])
    free = explain.explain_batch(model, imgs, pp, targets=[0, 1, 2], restrict_to_sector=False)
    np.testing.assert_allclose(
        free.raw, b.raw, atol=1e-6
    )  # restriction changes the shown map, not the measurement
    assert np.allclose(free.cams, [explain.normalise_in_region(r) for r in free.raw])


def test_energy_outside_sector_on_hand_made_maps():
    sector = np.zeros((10, 10), bool)
    sector[2:8, 2:8] = True
    inside = np.where(sector, 1.0, 0.0)
    assert energy_outside_sector(inside, sector) == 0.0
    assert energy_outside_sector(1 - inside, sector) == 1.0
    assert energy_outside_sector(np.ones((10, 10)), sector) == pytest.approx(64 / 100)
    two_to_one = np.where(sector, 2.0, 0.0)
    two_to_one[0, 0] = 2 * 36  # as much energy in one border pixel as in the whole fan
    assert energy_outside_sector(two_to_one, sector) == pytest.approx(0.5)
    assert energy_outside_sector(np.zeros((10, 10)), sector) == 0.0
    assert (
        energy_outside_sector(np.where(sector, 1.0, -5.0), sector) == 0.0
    )  # negative values carry no energy
    with pytest.raises(ValueError, match="shape"):
        energy_outside_sector(np.ones((5, 5)), sector)


def test_normalise_in_region():
    cam = np.arange(16, dtype=np.float32).reshape(4, 4)
    region = np.zeros((4, 4), bool)
    region[1:3, 1:3] = True  # values 5, 6, 9, 10
    out = explain.normalise_in_region(cam, region)
    assert out[~region].max() == 0
    np.testing.assert_allclose(out[region], [0, 0.2, 0.8, 1.0])
    np.testing.assert_allclose(explain.normalise_in_region(cam), cam / 15)
    assert explain.normalise_in_region(np.full((4, 4), 3.0)).max() == 0  # nothing stands out


def test_pytorch_grad_cam_image_utils_against_ours():
    """pytorch_grad_cam.utils.image on fixed arrays: where it gives liverscope's answer, and where it
    does not (why explain._upsample, explain.normalise_in_region and explain_images.overlay stay)."""
    from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image

    rng = np.random.default_rng(0)
    coarse = (rng.random((3, 7, 7)) * 2e-3 - 5e-4).astype(
        np.float32
    )  # raw 7x7 maps, range 2e-3, some negative
    unit = np.stack([explain.normalise_in_region(m) for m in np.maximum(coarse, 0)])
    # upsampling: the same bilinear interpolation (on a [0, 1] map, where the library's min-max is a no-op)
    np.testing.assert_allclose(scale_cam_image(unit, (48, 64)), explain._upsample(unit, 64, 48), atol=1e-6)
    # normalisation: equal within 1e-7 / (max - min), but the library's map does not reach 1 and depends on the scale
    up = explain._upsample(coarse, 64, 48)
    ours = np.stack([explain.normalise_in_region(m) for m in up])
    lib = scale_cam_image(up)
    np.testing.assert_allclose(lib, ours, atol=1e-7 / float(np.ptp(up, axis=(1, 2)).min()) + 1e-6)
    assert (ours.max(axis=(1, 2)) == 1).all() and (lib.max(axis=(1, 2)) < 1 - 2e-5).all()
    np.testing.assert_allclose(np.stack([explain.normalise_in_region(m * 1000) for m in up]), ours, atol=1e-6)
    assert np.abs(scale_cam_image(up * 1000) - lib).max() > 2e-5
    # colours: the library's jet heatmap is ours on a map that spans the colour scale ...
    black = np.zeros((64, 48, 3), np.float32)
    np.testing.assert_array_equal(
        show_cam_on_image(black, ours[0], use_rgb=True, image_weight=0.0), explain_images.heatmap_rgb(ours[0])
    )
    # ... but it rescales by the brightest value: a two-level map (dark blue and dark red in jet) turns bright
    two = np.zeros((64, 48), np.float32)
    two[:32] = 1
    assert (
        explain_images.heatmap_rgb(two).max() == 128
        and show_cam_on_image(black, two, use_rgb=True, image_weight=0.0).max() == 255
    )
    # overlays: within 1 grey level (its truncation, our rounding) when a white pixel meets a saturated colour ...
    bright = rng.integers(40, 150, (64, 48, 3)).astype(np.uint8)
    bright[40, 20] = 255  # ours[0] at (40, 20) is mid-range: one jet channel is 255 there
    assert explain_images.heatmap_rgb(ours[0])[40, 20].max() == 255
    lib_ov = show_cam_on_image(
        bright / 255.0, ours[0], use_rgb=True, image_weight=1 - explain_images.OVERLAY_ALPHA
    )
    assert np.abs(lib_ov.astype(int) - explain_images.overlay(bright, ours[0]).astype(int)).max() <= 1
    # ... but a dim scan is brightened, grey levels of the ultrasound image change
    dim = bright.copy()
    dim[40, 20] = 100
    lib_ov = show_cam_on_image(
        dim / 255.0, ours[0], use_rgb=True, image_weight=1 - explain_images.OVERLAY_ALPHA
    )
    assert np.abs(lib_ov.astype(int) - explain_images.overlay(dim, ours[0]).astype(int)).max() > 10


def test_maps_go_back_into_the_crop_box():
    """With crop_sector the model saw the fan's bounding box: the map goes back there, nowhere else."""
    img = np.zeros((120, 200), np.uint8)
    cv2.ellipse(img, (90, 70), (50, 40), 0, 0, 360, 120, -1)
    pp = Preprocessing(size=64, denoise=False, crop_sector=True)
    y0, y1, x0, x1 = crop_box(img, pp)
    assert np.allclose((y0, y1, x0, x1), (30, 111, 40, 141), atol=2)
    full = explain_images.cam_to_original(np.ones((64, 64), np.float32), img, pp)
    assert full.shape == img.shape and full[y0:y1, x0:x1].min() == 1 and full.sum() == (y1 - y0) * (x1 - x0)
    cam = np.zeros((64, 64), np.float32)
    cam[:, :32] = 1  # left half of the model input = left half of the box
    full = explain_images.cam_to_original(cam, img, pp)
    assert full[70, x0 + 5] == 1 and full[70, x1 - 5] == 0 and full[:, :x0].max() == 0
    ov = explain_images.original_overlay(img, cam, pp)
    assert ov.shape == (120, 200, 3) and ov.dtype == np.uint8
    assert np.array_equal(
        ov[:10, :10], np.zeros((10, 10, 3), np.uint8)
    )  # outside the fan the image is untouched
    no_crop = explain_images.cam_to_original(cam, img, Preprocessing(size=64, denoise=False))
    assert no_crop[:, :95].min() == 1 and no_crop[:, 105:].max() == 0


def test_cam_overlay_for_the_app():
    torch.manual_seed(0)
    model = build_model("resnet10t", 3, head="linear")
    img = phantom_inputs(1)[0]
    before = n_hooks(model)
    outs = [explain.cam_overlay(model, img, PP64, k) for k in range(3)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    sec = sector_mask(img)
    assert all(np.array_equal(o[~sec], img[~sec]) for o in outs)  # no tint over the border
    assert n_hooks(model) == before


# --------------------------------------------------------------------------------------------------
# `liverscope explain` and the report gallery
# --------------------------------------------------------------------------------------------------


def _png(path: Path, arr: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", arr)
    path.write_bytes(buf.tobytes())
    return path


def test_cli_explain_writes_maps_and_skips_bad_files(trained_run, phantom_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    src = tmp_path / "in"
    src.mkdir()
    files = sorted((phantom_dir / "F4").glob("*.png"))[:2]
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    big = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    _png(src / "wide.png", cv2.resize(big, (100, 80)))  # overlays come back at the original size
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(trained_run),
            str(src),
            "--out",
            str(out),
            "--method",
            "gradcam++",
            "--faithfulness",
            "--batch-size",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "explained 3 image(s)" in res.output
        and "skipped 1 file(s)" in res.output
        and "broken.png" in res.output
    )
    assert (
        "mean deletion auc" in res.output
        and "mean share of the unrestricted map's energy outside the scan sector" in res.output
    )
    for stem in ("wide", files[0].stem, files[1].stem):
        heat = cv2.imread(str(out / f"{stem}_heatmap.png"))
        assert heat.shape == (64, 64, 3)
        cam = np.load(out / f"{stem}.npy")
        assert cam.shape == (64, 64) and cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
    assert cv2.imread(str(out / "wide_overlay.png")).shape == (80, 100, 3)
    assert cv2.imread(str(out / f"{files[0].stem}_overlay.png")).shape == (64, 64, 3)
    with open(out / "cams.csv", newline="") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == {"wide.png", "broken.png", files[0].name, files[1].name}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["predicted"]
    good = rows[files[0].name]
    assert good["predicted"] in ("F0", "F1", "F2", "F3", "F4") and good["target"] == good["predicted"]
    assert 0 <= float(good["energy_outside_sector"]) <= 1 and 0 <= float(good["deletion_auc"]) <= 1
    assert np.isfinite(float(good["road"])) and good["error"] == ""
    summary = json.loads((out / "cams_summary.json").read_text())
    assert summary["explained"] == 3 and summary["method"] == "gradcam++" and len(summary["skipped"]) == 1

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        app, ["explain", str(trained_run), str(files[0]), "--class", "F0", "--flip-average", "--no-sector"]
    )
    assert res.exit_code == 0, res.output
    assert not (trained_run / "explain").exists()  # the input run is only read
    default_out = tmp_path / "explain" / trained_run.name
    with open(default_out / "cams.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["target"] == "F0" and "deletion_auc" not in row

    res = CliRunner().invoke(
        app, ["explain", str(trained_run), str(files[0]), "--class", "F9", "--out", str(out)]
    )
    assert res.exit_code == 2 and "not a label" in res.output  # a usage error, before any work
    res = CliRunner().invoke(
        app, ["explain", str(trained_run), str(files[0]), "--method", "magic", "--out", str(out)]
    )
    assert res.exit_code == 2 and "unknown CAM method" in res.output


def test_cam_gallery_for_the_report(trained_run, tmp_path):
    import shutil

    from liverscope.evaluate.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    for f in ("model.json", "model.safetensors", "predictions_test.csv", "metrics.json"):
        if (trained_run / f).exists():
            shutil.copy(trained_run / f, run / f)
    folder = write_cam_gallery(run, per_class=1)
    assert folder == run / "cam_gallery"
    pngs = sorted(folder.glob("*.png"))
    captions = json.loads((folder / "captions.json").read_text())
    assert pngs and set(captions) == {p.name for p in pngs} and len(pngs) <= 2 * 5
    assert all("true" in c and "predicted" in c for c in captions.values())
    assert all(cv2.imread(str(p)).shape[0] >= explain_images.GALLERY_MIN_SIDE for p in pngs)
    with open(run / "predictions_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kinds = {("correct" if r["label"] == r["pred"] else "wrong", r["label"]) for r in rows}
    assert len(pngs) == len(kinds)  # one of each kind per class, where the test split has one
    html = write_report(run).read_text()
    assert next(iter(captions.values())).split(":")[0] in html

    # files that moved are skipped; found again under data_root
    data = tmp_path / "moved"
    for r in rows:
        p = Path(r["path"])
        (data / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, data / p.parent.name / p.name)
        r["path"] = str(tmp_path / "gone" / p.parent.name / p.name)
    with open(run / "predictions_test.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert write_cam_gallery(run, per_class=1) is None
    assert write_cam_gallery(run, data_root=data, per_class=1) == folder
    assert len(list(folder.glob("*.png"))) == len(kinds)
    (run / "predictions_test.csv").unlink()
    assert write_cam_gallery(run) is None


def test_explain_draws_a_huge_scan_on_a_bounded_preview(trained_run, phantom_dir, tmp_path):
    """Issue 21: an overlay of a very large image is drawn on a preview of at most PREVIEW_SIDE px
    (the original size on request), with the same map and probabilities."""
    from liverscope.explain.files import ExplainOptions, explain_paths
    from liverscope.explain.images import PREVIEW_SIDE

    src = tmp_path / "huge"
    src.mkdir()
    phantom = cv2.imread(str(sorted((phantom_dir / "F4").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    _png(src / "scan.png", cv2.resize(phantom, (3000, 2400), interpolation=cv2.INTER_LINEAR))
    small = explain_paths(trained_run, [src], out_dir=tmp_path / "preview", device="cpu")
    full = explain_paths(
        trained_run, [src], out_dir=tmp_path / "full", device="cpu", options=ExplainOptions(overlay_side=None)
    )
    assert small["explained"] == full["explained"] == 1
    preview = cv2.imread(str(tmp_path / "preview" / "scan_overlay.png"))
    assert preview.shape == (round(2400 * PREVIEW_SIDE / 3000), PREVIEW_SIDE, 3)
    assert cv2.imread(str(tmp_path / "full" / "scan_overlay.png")).shape == (2400, 3000, 3)
    assert np.array_equal(np.load(tmp_path / "preview" / "scan.npy"), np.load(tmp_path / "full" / "scan.npy"))
