"""Named segmentation targets: several segmenters in one run (lesion + liver), the segmenter's own input
size, expert scores and baselines, `segment predict`, the app's outlines and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from liverscope import segment as S
from liverscope.data.geometry import to_model, to_original
from liverscope.data.io import read_image, to_rgb
from liverscope.data.preprocess import crop_box, preprocess_array
from liverscope.data.sector import sector_mask
from liverscope.errors import LiverscopeError, UsageError
from liverscope.segment import commands as C
from liverscope.segment import unet as U
from liverscope.segment.config import segment_config
from liverscope.utils import atomic_write_png, read_csv_rows, read_json

CLASSES = ("benign", "malignant", "normal")
CLF_SIZE, LIVER_SIZE = 32, 64
#: Where the classifier's CAMs are taken: resnet10t's last feature map is 1x1 at 32 px, a flat map
#: (no pseudo-mask, no confidence band; float rounding is not a pattern), layer3's is 4x4.
CAM_LAYERS = "layer3"
QUICK = dict(arch="attention-unet", channels=(4, 8), batch_size=4, lr=3e-2, device="cpu", seed=0)


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory) -> Path:
    """18 phantoms of 64 px in benign / malignant / normal, lesion masks in masks/ (empty for most normal ones)."""
    from liverscope.data.datasets import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("lesions"), n_per_class=6, classes=CLASSES, size=64, seed=3)


@pytest.fixture(scope="module")
def liver_masks(lesion_data, tmp_path_factory) -> Path:
    """The scan sector of each phantom as its 'liver' mask."""
    out = tmp_path_factory.mktemp("liver_masks")
    for c in CLASSES:
        for f in sorted((lesion_data / c).glob("*.png")):
            atomic_write_png(out / f.name, sector_mask(read_image(f)))
    return out


@pytest.fixture(scope="module")
def two_target_run(lesion_data, liver_masks, tmp_path_factory):
    """An untrained 32 px classifier run (segmenting with given masks needs no CAMs) with a lesion U-Net
    at 32 px and a liver U-Net at 64 px; records the images each fit was given."""
    import torch

    from liverscope.data.preprocess import Preprocessing
    from liverscope.models.registry import build_model
    from liverscope.rundir import save_model

    run = tmp_path_factory.mktemp("runs") / "two"
    run.mkdir()
    torch.manual_seed(0)
    save_model(
        run,
        build_model("resnet10t", len(CLASSES), head="linear"),
        list(CLASSES),
        Preprocessing(size=CLF_SIZE, denoise=False),
    )
    seen = {}
    real_fit = C.fit_unet

    def recording_fit(images, masks, split, settings, **kw):
        seen[len(seen)] = {
            "image_shapes": {np.asarray(im).shape for im in images},
            "mask_shape": np.asarray(masks).shape[1:],
            "size": settings.size,
        }
        return real_fit(images, masks, split, settings, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(C, "fit_unet", recording_fit)
    try:
        lesion = S.train_segmenter(
            run,
            lesion_data,
            segment_config(masks=lesion_data / "masks", epochs=2, size=CLF_SIZE, **QUICK),
            report=False,
        )
        liver = S.train_segmenter(
            run,
            lesion_data,
            segment_config(masks=liver_masks, target="liver", epochs=8, size=LIVER_SIZE, **QUICK),
            report=False,
        )
    finally:
        mp.undo()
    return {"run": run, "lesion": lesion, "liver": liver, "seen": seen}


def test_both_targets_live_in_one_run_and_load(two_target_run):
    run = two_target_run["run"]
    for f in (
        "segmenter.safetensors",
        "segmenter.json",
        "seg_split.csv",
        "segmenter-liver.safetensors",
        "segmenter-liver.json",
        "seg_split-liver.csv",
    ):
        assert (run / f).is_file(), f
    assert (run / "segmenter_checkpoints" / "last.ckpt").exists() and (
        run / "segmenter-liver_checkpoints" / "last.ckpt"
    ).exists()
    assert U.segmenter_targets(run) == ["lesion", "liver"]
    segs = U.segmenters(run)
    assert list(segs) == ["lesion", "liver"] and [s.target for s in segs.values()] == ["lesion", "liver"]
    liver = U.load_segmenter(run, target="liver")
    assert liver.meta["target"] == "liver" and liver.size == LIVER_SIZE
    assert read_json(run / "segmenter.json")["target"] == "lesion"
    metrics = read_json(run / "metrics.json")
    assert (
        metrics["segmentation"]["target"] == "lesion" and metrics["segmentation_liver"]["target"] == "liver"
    )
    assert metrics["segmentation"]["n_test"] == two_target_run["lesion"]["scores"]["n_test"]
    assert U.load_segmenter(run, target="sector") is None  # a target the run does not have


def test_segmenter_input_size_is_its_own(two_target_run):
    """--size above the classifier's: the images are preprocessed at that size (not upsampled from the
    classifier's input), the .json records that preprocessing, and the scores are on that grid."""
    seen = two_target_run["seen"]
    assert seen[0]["image_shapes"] == {(CLF_SIZE, CLF_SIZE, 3)} and seen[0]["mask_shape"] == (
        CLF_SIZE,
        CLF_SIZE,
    )
    assert seen[1]["image_shapes"] == {(LIVER_SIZE, LIVER_SIZE, 3)} and seen[1]["mask_shape"] == (
        LIVER_SIZE,
        LIVER_SIZE,
    )
    run = two_target_run["run"]
    liver = U.load_segmenter(run, target="liver")
    assert liver.preprocessing.size == LIVER_SIZE and liver.meta["classifier_size"] == CLF_SIZE
    assert read_json(run / "model.json")["preprocessing"]["size"] == CLF_SIZE  # the classifier is untouched
    assert (
        two_target_run["liver"]["scores"]["grid"] == LIVER_SIZE
        and two_target_run["lesion"]["scores"]["grid"] == CLF_SIZE
    )


def _train_targets(run: Path, split_file: str, masks: Path, size: int) -> list[np.ndarray]:
    out = []
    for row in read_csv_rows(run / split_file):
        if row["split"] == "train":
            m = S.read_mask(S.find_mask(masks, Path(row["path"]).name))
            out.append(to_model(m, (0, m.shape[0], 0, m.shape[1]), size))
    return out


def test_expert_scores_and_baselines(two_target_run, lesion_data):
    """The given masks are the experts: vs_expert per class and size quartile; baselines use no mask of a
    test image (the disc's area is the median non-empty training target area)."""
    run = two_target_run["run"]
    sc = two_target_run["lesion"]["scores"]
    assert sc["expert_masks"] == str(lesion_data / "masks")
    ve = sc["vs_expert"]
    assert (
        set(ve["by_class"]) <= set(CLASSES)
        and sum(g["n"] for g in ve["by_class"].values()) == sc["n_test"] == ve["overall"]["n"]
    )
    assert ve["overall"]["n"] == ve["overall"].get("n_lesion", 0) + ve["overall"].get("n_empty", 0)
    areas = [
        int(t.sum()) for t in _train_targets(run, "seg_split.csv", lesion_data / "masks", CLF_SIZE) if t.any()
    ]
    disc = sc["baselines"]["centred_disc"]
    assert disc["area_px"] == pytest.approx(float(np.median(areas))) and disc["against"] == "expert masks"
    assert (
        sc["baselines"]["sector"]["overall"].get("detection_rate", 1.0) == 1.0
    )  # the whole sector touches every lesion in it
    if sc["baselines"]["sector"]["overall"].get("n_empty"):
        assert (
            sc["baselines"]["sector"]["overall"]["false_positive_rate"] == 1.0
        )  # ... and raises an alarm on every empty mask
    # the liver masks are the scan sector: the whole-sector baseline is (nearly) perfect against them
    liver = two_target_run["liver"]["scores"]
    assert liver["baselines"]["sector"]["overall"]["dice"] > 0.95
    assert 0.0 <= liver["vs_expert"]["overall"]["dice"] <= 1.0 and liver["vs_expert"]["by_size_quartile"]
    lines = "\n".join(two_target_run["liver"]["summary_lines"])
    assert (
        "test vs expert masks: Dice" in lines
        and "baseline, whole sector vs expert masks" in lines
        and "centred disc" in lines
    )
    # the headline Dice is over the images with something to outline, never padded with empty-on-empty images
    assert "images with something to outline" in lines and "test vs targets: IoU" not in lines
    # the keys of before still there
    assert {"iou_vs_targets", "dice_vs_targets", "iou_vs_targets_sector", "dice_vs_targets_sector"} <= set(sc)


def test_a_run_with_only_the_legacy_files_loads_as_lesion(two_target_run, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for f in ("model.json", "model.safetensors", "segmenter.safetensors"):
        shutil.copy(two_target_run["run"] / f, old / f)
    meta = read_json(two_target_run["run"] / "segmenter.json")
    del meta["target"]
    (old / "segmenter.json").write_text(json.dumps(meta))
    assert U.segmenter_targets(old) == ["lesion"]
    seg = U.load_segmenter(old)
    assert seg is not None and seg.target == "lesion" and seg.meta["target"] == "lesion"
    assert list(U.segmenters(old)) == ["lesion"]


def test_segment_predict_writes_every_target_and_one_overlay(two_target_run, lesion_data, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    run, img_path = two_target_run["run"], sorted((lesion_data / "malignant").glob("*.png"))[0]
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", "predict", str(run), str(img_path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "outlines: lesion red, liver green" in r.output
    lesion_m, liver_m = (
        S.read_mask(out / f"{img_path.stem}_mask.png"),
        S.read_mask(out / f"{img_path.stem}_liver_mask.png"),
    )
    img = read_image(img_path)
    expected = {}
    for t, seg in U.segmenters(run).items():  # each segmenter sees the image preprocessed its own way
        pp = seg.preprocessing
        expected[t] = to_original(
            S.predict_mask(seg, preprocess_array(img, pp)), img.shape[:2], crop_box(img, pp)
        )
    np.testing.assert_array_equal(lesion_m, expected["lesion"])
    np.testing.assert_array_equal(liver_m, expected["liver"])
    assert liver_m.mean() > 0.2  # the liver U-Net has learnt the large fan
    overlay = read_image(out / f"{img_path.stem}_outline.png")
    drawn = S.draw_outline(
        S.draw_outline(to_rgb(img), lesion_m, U.TARGET_COLOURS["lesion"][0]),
        liver_m,
        U.TARGET_COLOURS["liver"][0],
    )
    np.testing.assert_array_equal(overlay, drawn)
    assert (overlay == (0, 255, 0)).all(axis=2).any()  # the liver's green outline is there


def test_the_app_outlines_every_target(two_target_run, lesion_data, monkeypatch):
    from liverscope.rundir import read_preprocessing
    from liverscope.segment import panels
    from liverscope.ui import app as appmod

    monkeypatch.setattr(panels, "_SEGMENTERS", {})
    run = two_target_run["run"]
    img = read_image(sorted((lesion_data / "benign").glob("*.png"))[0])
    pp = read_preprocessing(run)
    model_input = preprocess_array(img, pp)
    got = appmod.segmentation_outline(run, model_input, pp, image=img)
    segs = U.segmenters(run)
    lesion = S.predict_mask(segs["lesion"], model_input)  # the classifier's preprocessing: its own input
    liver_pp = segs["liver"].preprocessing  # 64 px: segments the original at 64, moved to the 32 px input
    liver = to_model(
        to_original(
            S.predict_mask(segs["liver"], preprocess_array(img, liver_pp)),
            img.shape[:2],
            crop_box(img, liver_pp),
        ),
        crop_box(img, pp),
        CLF_SIZE,
    )
    assert liver.any()
    expected = S.draw_outline(S.draw_outline(model_input, lesion, (255, 48, 48)), liver, (0, 255, 0))
    np.testing.assert_array_equal(got, expected)
    assert appmod.outline_legend(run) == "segmented regions (outline): lesion red, liver green"


def test_bad_target_name_is_a_usage_error(two_target_run, lesion_data):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    r = CliRunner().invoke(
        app,
        [
            "segment",
            "train",
            str(two_target_run["run"]),
            str(lesion_data),
            "--masks",
            str(lesion_data / "masks"),
            "--target",
            "Liver/../x",
        ],
    )
    assert r.exit_code == 2 and "segmentation target 'Liver/../x'" in r.output
    for bad in ("", "1liver", "liver.v2", "LIVER"):
        with pytest.raises(UsageError, match="segmentation target"):
            U.load_segmenter(two_target_run["run"], target=bad)
    assert U.segmenter_files("liver_v2-b")["metrics"] == "segmentation_liver_v2-b"


def test_report_shows_each_target_beside_the_baselines(two_target_run):
    from liverscope.evaluate.report import write_report
    from liverscope.evaluate.report_segment import segmentation_targets

    run = two_target_run["run"]
    assert list(segmentation_targets(read_json(run / "metrics.json"))) == ["lesion", "liver"]
    page = write_report(run).read_text(encoding="utf-8")
    seg = page[page.index("<h2>Segmentation</h2>") :]
    lesion_part, liver_part = seg[: seg.index("Target: liver")], seg[seg.index("Target: liver") :]
    assert "Target: lesion" in lesion_part
    for part in (lesion_part, liver_part):
        for text in (
            "U-Net vs expert masks",
            "baseline: whole scan sector vs expert masks",
            "baseline: centred disc vs expert masks",
            "Per size quartile",
            "detected",
            "false alarms",
        ):
            assert text in part, text
    assert "Per class" in lesion_part and "malignant" in lesion_part
    dice = two_target_run["liver"]["scores"]["baselines"]["sector"]["overall"]["dice"]
    assert f"{dice:.3f}" in liver_part


def test_pseudo_masks_move_to_a_larger_segmenter_grid(two_target_run, lesion_data, tmp_path, monkeypatch):
    """CAM pseudo-masks are made on the classifier's 32 px inputs and moved, through the original image,
    to a 64 px segmenter's grid; scored against the expert masks beside the baselines."""
    run = tmp_path / "run"
    shutil.copytree(two_target_run["run"], run, ignore=shutil.ignore_patterns("*_checkpoints"))
    given = {}
    real_fit = C.fit_unet

    def recording_fit(images, masks, split, *args, **kw):
        given.update(images=images, masks=np.asarray(masks))
        return real_fit(images, masks, split, *args, **kw)

    monkeypatch.setattr(C, "fit_unet", recording_fit)
    r = S.train_segmenter(
        run,
        lesion_data,
        segment_config(
            real_masks=lesion_data / "masks",
            target="cam",
            epochs=1,
            size=LIVER_SIZE,
            max_steps=1,
            layers=CAM_LAYERS,
            **QUICK,
        ),
        report=False,
    )
    assert (
        r["meta"]["preprocessing"]["size"] == LIVER_SIZE and r["meta"]["pseudo_masks"]["rule"] == "threshold"
    )
    assert (
        len(sorted((run / "pseudo_masks-cam").rglob("*.png"))) == 18 and not (run / "pseudo_masks").exists()
    )  # lesion's folder untouched
    sc = r["scores"]
    assert (
        sc["grid"] == LIVER_SIZE
        and sc["pseudo_vs_expert"]["overall"]["n"] == sc["vs_expert"]["overall"]["n"] == sc["n_test"]
    )
    assert sc["baselines"]["sector"]["against"] == "expert masks"
    # each U-Net target is the pseudo-mask written at the original size (from the 32 px CAM), on the 64 px grid
    assert given["masks"].shape == (18, LIVER_SIZE, LIVER_SIZE) and {im.shape for im in given["images"]} == {
        (LIVER_SIZE, LIVER_SIZE, 3)
    }
    rows = read_csv_rows(run / "seg_split-cam.csv")
    assert given["masks"].any()
    for row, target in zip(rows, given["masks"]):
        on_disk = S.read_mask(
            run / "pseudo_masks-cam" / Path(row["path"]).relative_to(lesion_data).with_suffix(".png")
        )
        np.testing.assert_array_equal(target, to_model(on_disk, (0, 64, 0, 64), LIVER_SIZE))
    assert U.segmenter_targets(run) == ["lesion", "cam", "liver"]


def test_pseudo_masks_are_empty_unless_the_predicted_class_is_positive_and_confident_pixels_weigh(
    two_target_run, lesion_data
):
    """--positive: an image the classifier calls a non-positive class gets an empty pseudo-mask (a normal
    liver has nothing to outline); --confident: the U-Net is fitted with pixel weights (0 in the band)."""
    run = two_target_run["run"]
    seen = {}
    real_fit = C.fit_unet

    def recording_fit(images, masks, split, *args, **kw):
        seen["masks"], seen["weights"] = np.asarray(masks), kw.get("weights")
        return real_fit(images, masks, split, *args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(C, "fit_unet", recording_fit)
    try:
        r = S.train_segmenter(
            run,
            lesion_data,
            segment_config(
                target="pseudo",
                epochs=1,
                size=CLF_SIZE,
                positive=["malignant"],
                confident=(0.3, 0.6),
                layers=CAM_LAYERS,
                **QUICK,
            ),
            report=False,
        )
    finally:
        mp.undo()
    w = seen["weights"]
    assert (
        w is not None
        and w.shape == seen["masks"].shape
        and set(np.unique(w)) <= {0.0, 1.0}
        and (w == 0).any()
    )
    meta = read_json(run / "segmenter-pseudo.json")
    assert meta["pseudo_masks"]["positive"] == ["malignant"] and meta["pseudo_masks"]["confident"] == [
        0.3,
        0.6,
    ]
    assert "empty unless the predicted class is malignant" in r["scores"]["masks"]
    # which images the untrained classifier calls malignant: exactly those may have a non-empty mask
    from liverscope.rundir import load_model, read_preprocessing

    pp = read_preprocessing(run)
    model = load_model(run)[0]
    files = [Path(row["path"]) for row in read_csv_rows(run / "seg_split-pseudo.csv")]
    items, _ = S.load_images(files, pp, roots=[lesion_data])
    import torch

    from liverscope.data.preprocess import normalise_batch

    with torch.inference_mode():
        pred = (
            model(torch.from_numpy(normalise_batch([it.input for it in items], pp)).permute(0, 3, 1, 2))
            .argmax(1)
            .numpy()
        )
    called = np.array([CLASSES[k] == "malignant" for k in pred])
    nonempty = seen["masks"].reshape(len(called), -1).any(axis=1)
    assert not (nonempty & ~called).any()
    with pytest.raises(UsageError, match="not among the run's classes"):
        cfg = segment_config(target="pseudo", epochs=1, size=CLF_SIZE, positive=["tumour"], **QUICK)
        S.train_segmenter(run, lesion_data, cfg, report=False)


def test_predicted_regions_follow_the_segmenters_own_preprocessing(two_target_run, lesion_data):
    """The 64 px liver segmenter reads each file at its own size; its mask comes back on the classifier's 32 px grid."""
    from liverscope.rundir import read_preprocessing

    run = two_target_run["run"]
    pp = read_preprocessing(run)
    files = sorted(lesion_data.glob("*/*.png"))[:5]
    items, _ = S.load_images(files, pp, roots=[lesion_data])
    got = S.predicted_regions(run, "liver", items, pp, [lesion_data])
    seg = U.load_segmenter(run, target="liver")
    for f, m in zip(files, got):
        img = read_image(f)
        own = seg.preprocessing
        expected = to_model(
            to_original(S.predict_mask(seg, preprocess_array(img, own)), img.shape[:2], crop_box(img, own)),
            crop_box(img, pp),
            CLF_SIZE,
        )
        np.testing.assert_array_equal(m, expected)
    assert all(m.shape == (CLF_SIZE, CLF_SIZE) and m.dtype == bool for m in got) and any(m.any() for m in got)
    with pytest.raises(LiverscopeError, match="no 'sector' segmenter .* --target sector"):
        S.predicted_regions(run, "sector", items, pp, [lesion_data])


def test_pseudo_masks_within_the_predicted_liver(two_target_run, lesion_data, tmp_path, monkeypatch):
    """--within liver: the CAMs are cut inside the liver segmenter's prediction, not the whole sector."""
    run = tmp_path / "run"
    shutil.copytree(two_target_run["run"], run, ignore=shutil.ignore_patterns("*_checkpoints"))
    asked, seen = {}, {}

    def left_half(run_dir, target, items, pp, roots):  # a region the CAMs would not respect by chance
        asked["target"] = target
        half = np.zeros((pp.size, pp.size), bool)
        half[:, : pp.size // 2] = True
        return [half] * len(items)

    real_fit = C.fit_unet

    def recording_fit(images, masks, split, *args, **kw):
        seen["masks"] = np.asarray(masks)
        return real_fit(images, masks, split, *args, **kw)

    monkeypatch.setattr(C, "predicted_regions", left_half)
    monkeypatch.setattr(C, "fit_unet", recording_fit)
    r = S.train_segmenter(
        run,
        lesion_data,
        segment_config(
            target="inliver",
            within="liver",
            rule="top",
            q=30.0,
            epochs=1,
            size=CLF_SIZE,
            max_steps=1,
            **QUICK,
        ),
        report=False,
    )
    assert asked["target"] == "liver" and r["meta"]["pseudo_masks"]["within"] == "liver"
    assert "inside the predicted liver" in r["scores"]["masks"]
    m = seen["masks"]
    assert m.any() and not m[:, :, CLF_SIZE // 2 :].any()


def test_within_a_target_the_run_lacks_says_how_to_train_it(two_target_run, lesion_data, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    run = tmp_path / "run"
    shutil.copytree(two_target_run["run"], run, ignore=shutil.ignore_patterns("*_checkpoints"))
    r = CliRunner().invoke(
        app,
        [
            "segment",
            "train",
            str(run),
            str(lesion_data),
            "--target",
            "x",
            "--within",
            "vessels",
            "--epochs",
            "1",
        ],
    )
    assert r.exit_code == 1 and "no 'vessels' segmenter" in r.output and "--target vessels" in r.output
    assert not (run / "segmenter-x.json").exists()
    r = CliRunner().invoke(
        app,
        [
            "segment",
            "train",
            str(run),
            str(lesion_data),
            "--masks",
            str(lesion_data / "masks"),
            "--within",
            "liver",
        ],
    )
    assert r.exit_code == 2 and "--within liver restricts CAM pseudo-masks" in r.output
