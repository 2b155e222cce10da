"""Pseudo-mask rules, segmentation metrics, the Attention U-Net and the `segment` commands."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from liverscope import segment as S
from liverscope.data.geometry import to_model, to_original
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import dice, iou, mask_scores, pointing_game
from liverscope.models import build_model
from liverscope.rundir import read_preprocessing, save_model
from liverscope.segment.commands import SEGMENTER_CHECKPOINTS
from liverscope.segment.config import FitConfig, segment_config
from liverscope.segment.training import check_resumable, segmentation_loss
from liverscope.segment.unet import make_arch
from liverscope.ui.cli import app
from liverscope.utils import atomic_write_png

# --------------------------------------------------------------------------------------------------
# pseudo-mask rules on hand-made maps


def test_threshold_rule_is_cam_at_least_threshold():
    cam = np.array([[0.1, 0.5, 0.49], [0.9, 1.0, 0.0]], np.float32)
    expected = np.array([[0, 1, 0], [1, 1, 0]], bool)
    assert np.array_equal(S.threshold_mask(cam), expected)  # default 0.5, the study's rule
    assert np.array_equal(S.threshold_mask(cam, 0.95), np.array([[0, 0, 0], [0, 1, 0]], bool))
    sector = np.array([[1, 1, 1], [0, 1, 1]], bool)
    assert np.array_equal(S.threshold_mask(cam, 0.5, sector), np.array([[0, 1, 0], [0, 1, 0]], bool))


def test_otsu_splits_a_bimodal_map_between_its_modes():
    rng = np.random.default_rng(0)
    high = rng.random((30, 30)) < 0.3
    cam = np.where(high, 0.8, 0.2) + rng.normal(0, 0.03, (30, 30))
    assert np.array_equal(S.otsu_mask(cam), high)
    # the threshold is between the modes: the same split for any rescaling of the map
    assert np.array_equal(S.otsu_mask(cam * 7 + 3), high)
    # a constant map has no threshold
    assert not S.otsu_mask(np.full((5, 5), 0.4)).any()


def test_otsu_ignores_pixels_outside_the_sector():
    cam = np.zeros((10, 10), np.float32)
    cam[:, :5] = 0.3
    cam[:, 5:] = 0.6
    cam[0, :] = 1.0  # a bright row outside the sector must not move the threshold or enter the mask
    sector = np.ones((10, 10), bool)
    sector[0, :] = False
    m = S.otsu_mask(cam, sector)
    expected = np.zeros((10, 10), bool)
    expected[1:, 5:] = True
    assert np.array_equal(m, expected)


@pytest.mark.parametrize("q", [0, 5, 10, 20, 33.3, 50, 99.9, 100])
def test_top_fraction_picks_exactly_ceil_q_percent_of_sector_pixels(q):
    rng = np.random.default_rng(1)
    cam = rng.random((16, 16)).astype(np.float32)
    sector = np.zeros((16, 16), bool)
    sector[3:14, 2:15] = True  # 11 x 13 = 143 pixels
    n = int(sector.sum())
    m = S.top_fraction_mask(cam, sector, q)
    assert m.sum() == math.ceil(q * n / 100 - 1e-9)
    assert not (m & ~sector).any()
    if 0 < m.sum() < n:
        assert cam[m].min() >= cam[sector & ~m].max()


def test_top_fraction_breaks_ties_in_raster_order():
    cam = np.array([[1.0, 0.5, 0.5], [0.5, 0.5, 0.0]], np.float32)
    m = S.top_fraction_mask(cam, None, 50)  # 3 of 6 pixels: the 1.0 then the first two 0.5s
    assert np.array_equal(m, np.array([[1, 1, 1], [0, 0, 0]], bool))
    with pytest.raises(ValueError):
        S.top_fraction_mask(cam, None, 120)


@pytest.mark.parametrize("rule", S.RULES)
def test_masks_never_leave_the_sector(rule):
    rng = np.random.default_rng(2)
    cam = rng.random((32, 32)).astype(np.float32)
    sector = np.zeros((32, 32), bool)
    sector[8:28, 6:26] = True
    cam[~sector] = 1.0  # the hottest pixels are outside (text, border): they must not be chosen
    img = np.repeat((cam * 255).astype(np.uint8)[..., None], 3, axis=2)  # the image rules (GrabCut) need one
    m = S.pseudo_mask(S.normalise_map(cam, sector), sector, rule, q=30, image=img)
    assert m.any() and not (m & ~sector).any()


def test_normalise_map_over_the_sector():
    cam = np.array([[5.0, 2.0], [3.0, 9.0]])
    sector = np.array([[1, 1], [1, 0]], bool)
    out = S.normalise_map(cam, sector)
    np.testing.assert_allclose(out, [[1.0, 0.0], [1 / 3, 0.0]], rtol=1e-6)
    assert not S.normalise_map(np.ones((3, 3))).any()


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="rule"):
        S.pseudo_mask(np.zeros((4, 4)), None, "median")


# --------------------------------------------------------------------------------------------------
# metrics


def test_iou_and_dice_hand_computed():
    a = np.zeros((4, 4), bool)
    a[0, :] = True  # 4 pixels
    b = np.zeros((4, 4), bool)
    b[0, 2:] = True
    b[1, :] = True  # 6 pixels, 2 shared with a
    assert iou(a, b) == pytest.approx(2 / 8)
    assert dice(a, b) == pytest.approx(4 / 10)
    assert iou(a, a) == 1.0 and dice(a, a) == 1.0
    empty = np.zeros((4, 4), bool)
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0  # defined: agreeing that nothing is there
    assert iou(a, empty) == 0.0 and dice(empty, a) == 0.0
    region = np.zeros((4, 4), bool)
    region[0, :] = True  # inside row 0: a = 4 px, b = 2 px, shared 2
    assert iou(a, b, region) == pytest.approx(2 / 4)
    s = mask_scores([a, a], [b, a])
    assert s["n"] == 2 and s["iou"] == pytest.approx((0.25 + 1) / 2)


def test_pointing_game():
    cam = np.zeros((5, 5))
    cam[1, 1] = 0.9
    cam[4, 4] = 1.0
    lesion = np.zeros((5, 5), bool)
    lesion[0:3, 0:3] = True
    assert pointing_game(cam, lesion) is False  # the maximum (4,4) is outside the lesion
    sector = np.ones((5, 5), bool)
    sector[4, 4] = False
    assert pointing_game(cam, lesion, sector) is True  # outside the sector does not count
    assert pointing_game(np.full((5, 5), 0.3), lesion) is False  # a flat map points nowhere
    assert pointing_game(cam, np.zeros((5, 5), bool)) is None  # no lesion: no answer


# --------------------------------------------------------------------------------------------------
# geometry and mask files


def test_mask_geometry_round_trip_and_lookup(tmp_path):
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:50] = True
    box = (5, 35, 10, 58)
    small = to_model(mask, box, 16)
    assert small.shape == (16, 16) and small.any()
    back = to_original(to_model(mask, (0, 40, 0, 60), 120), (40, 60))
    assert iou(back, mask) > 0.95
    atomic_write_png(tmp_path / "masks" / "a.png", mask)
    assert np.array_equal(S.read_mask(tmp_path / "masks" / "a.png"), mask)
    assert S.find_mask(tmp_path / "masks", Path("benign/a.jpg")) == tmp_path / "masks" / "a.png"
    assert S.find_mask(tmp_path / "masks", Path("a_mask.png")) == tmp_path / "masks" / "a.png"
    assert S.find_mask(tmp_path / "masks", Path("b.png")) is None


# --------------------------------------------------------------------------------------------------
# Attention U-Net


def _phantom_set(n: int, size: int = 64):
    from liverscope.data.datasets import make_phantom

    imgs, masks = [], []
    for i in range(n):
        im, m = make_phantom(4, 5, size, seed=100 + i)  # stage F4: many bright nodules (the known regions)
        imgs.append(np.repeat(im[..., None], 3, axis=2))
        masks.append(m)
    return imgs, np.stack(masks)


def test_unet_learns_the_phantom_nodules():
    imgs, masks = _phantom_set(24)
    split = np.array(["train"] * 16 + ["val"] * 4 + ["test"] * 4)
    te = slice(20, 24)

    def test_iou(model):
        pred = S.predict_masks_at(model, imgs[te], 64)
        return mask_scores(list(pred), list(masks[te]))["iou"]

    import torch

    torch.manual_seed(0)
    before = test_iou(S.build_unet(channels=(8, 16, 32)).eval())
    fit = FitConfig(epochs=8, batch_size=4, lr=1e-2, seed=0, device="cpu")
    model, info = S.fit_unet(imgs, masks, split, fit, arch=S.unet_arch(channels=(8, 16, 32)))
    after = test_iou(model)
    assert after > before + 0.2
    assert after > 0.35, info["history"]
    assert info["best_val_dice"] == max(h["val_dice"] for h in info["history"])


def test_segmenter_save_load_round_trip(tmp_path):
    imgs, masks = _phantom_set(6, size=32)
    fit = FitConfig(epochs=1, batch_size=2, device="cpu")
    model, info = S.fit_unet(imgs, masks, ["train"] * 4 + ["val"] * 2, fit, arch=S.unet_arch(channels=(4, 8)))
    assert S.load_segmenter(tmp_path) is None  # a run without a segmenter
    S.save_segmenter(tmp_path, model, {"architecture": info["architecture"], "size": 32})
    seg = S.load_segmenter(tmp_path)
    assert seg is not None and seg.size == 32
    mask = S.predict_mask(seg, imgs[0])
    assert mask.shape == (32, 32) and mask.dtype == bool
    np.testing.assert_array_equal(mask, S.predict_masks_at(model, imgs[:1], 32)[0])
    big = np.repeat(np.repeat(imgs[0], 2, 0), 2, 1)  # a model input of another size: mask of that size
    assert S.predict_mask(seg, big).shape == (64, 64)


def test_bad_unet_settings_are_clear_errors():
    imgs, masks = _phantom_set(3, size=36)
    with pytest.raises(ValueError, match="multiple of 8"):
        S.fit_unet(imgs, masks, ["train"] * 3, FitConfig(epochs=1, device="cpu"))
    with pytest.raises(ValueError, match="loss"):
        segmentation_loss("focal")


def _bce_plus_dice_reference(logits, target):
    """The U-Net's BCE + Dice loss before MONAI's DiceCELoss, written out: torch's ``BCEWithLogitsLoss``
    (mean over pixels) + MONAI's ``DiceLoss(sigmoid=True)`` (per image and channel
    ``1 - (2 sum(p t) + 1e-5) / (sum p + sum t + 1e-5)``, averaged)."""
    import torch

    bce = (logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).mean()
    p = torch.sigmoid(logits)
    dims = tuple(range(2, logits.ndim))
    soft_dice = 1 - (2 * (p * target).sum(dims) + 1e-5) / (p.sum(dims) + target.sum(dims) + 1e-5)
    return bce + soft_dice.mean()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dicece_loss_equals_the_old_bce_plus_dice(dtype):
    """MONAI's DiceCELoss as configured for a binary mask gives today's BCE + Dice (value and gradient)
    on fixed tensors: within 1e-10 (float64) / 1e-6 relative (float32)."""
    import torch
    from monai.losses import DiceCELoss, DiceLoss

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 1, 16, 16, generator=g)).to(dt)
    target = (torch.rand(5, 1, 16, 16, generator=g) < 0.3).to(dt)
    target[1] = 0  # an image without foreground: the smoothing terms decide its Dice
    target[2] = 1  # an image that is all foreground
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=1e-6, atol=1e-6)
    ref_x = logits.clone().requires_grad_(True)
    ref = _bce_plus_dice_reference(ref_x, target)
    ref.backward()
    old = torch.nn.BCEWithLogitsLoss()(logits, target) + DiceLoss(sigmoid=True)(
        logits, target
    )  # the old code
    new_x = logits.clone().requires_grad_(True)
    new = segmentation_loss("bce+dice")(new_x, target)
    new.backward()
    torch.testing.assert_close(new.detach(), ref.detach(), **tol)
    torch.testing.assert_close(old, ref.detach(), **tol)
    torch.testing.assert_close(new_x.grad, ref_x.grad, **tol)
    # the configuration matters: without the sigmoid the Dice term sees raw logits
    assert abs(float(DiceCELoss()(logits, target)) - float(ref.detach())) > 0.1
    # the study's loss is plain BCE with logits
    torch.testing.assert_close(
        segmentation_loss("bce")(logits, target),
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target),
        **tol,
    )


def test_lightning_fit_resumes_from_its_checkpoint(tmp_path):
    """Two epochs, then resume to four: the same history and weights as four epochs in one go (shuffles
    and flips are seeded by epoch); resuming without a checkpoint is a clear error."""
    imgs, masks = _phantom_set(10, size=32)
    split = ["train"] * 7 + ["val"] * 2 + ["test"]
    kw = dict(arch=S.unet_arch(channels=(4, 8)))
    fit = dict(batch_size=2, lr=1e-2, seed=3, device="cpu")
    straight, info = S.fit_unet(
        imgs, masks, split, FitConfig(epochs=4, **fit), checkpoint_dir=tmp_path / "straight", **kw
    )
    resumed_dir = tmp_path / "resumed"
    _, first = S.fit_unet(imgs, masks, split, FitConfig(epochs=2, **fit), checkpoint_dir=resumed_dir, **kw)
    assert {p.name for p in (tmp_path / "resumed").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert (
        first["epochs_run"] == 2 and first["steps"] == 2 * 3
    )  # 7 images in batches of 2: the lone last one is dropped
    resumed, again = S.fit_unet(
        imgs, masks, split, FitConfig(epochs=4, **fit), checkpoint_dir=resumed_dir, resume=True, **kw
    )
    assert again["resumed"] and again["epochs_run"] == 4 and again["steps"] == 4 * 3
    assert again["history"][:2] == first["history"]  # the history travels in the checkpoint
    for a, b in zip(again["history"], info["history"]):
        assert (
            a["epoch"] == b["epoch"]
            and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
            and a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-6)
        )
    assert again["best_epoch"] == info["best_epoch"]
    ref = straight.state_dict()
    for k, v in resumed.state_dict().items():
        np.testing.assert_allclose(v.float().numpy(), ref[k].float().numpy(), atol=1e-4, err_msg=k)
    with pytest.raises(LiverscopeError, match="nothing to resume"):
        S.fit_unet(
            imgs,
            masks,
            split,
            FitConfig(epochs=4, **fit),
            checkpoint_dir=tmp_path / "none",
            resume=True,
            **kw,
        )


def test_a_resumed_fit_keeps_the_initial_weights_of_its_first_session(tmp_path):
    """An encoder U-Net starts from ImageNet weights: resumed, its info (segmenter.json's
    ``initial_weights``) still says so, from the checkpoint; a checkpoint written before liverscope
    recorded them gives what that network starts from."""
    imgs, masks = _phantom_set(6, size=64)  # an encoder U-Net takes 64 px and up
    split = ["train"] * 4 + ["val", "test"]
    arch = make_arch("unet-lite0")
    fit = dict(batch_size=2, seed=0, device="cpu")
    _, first = S.fit_unet(imgs, masks, split, FitConfig(epochs=1, **fit), arch=arch, checkpoint_dir=tmp_path)
    assert first["initial_weights"].startswith("ImageNet")
    _, again = S.fit_unet(
        imgs, masks, split, FitConfig(epochs=2, **fit), arch=arch, checkpoint_dir=tmp_path, resume=True
    )
    assert again["resumed"] and again["epochs_run"] == 2
    assert again["initial_weights"] == first["initial_weights"]
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    old = {k: v for k, v in ckpt.items() if "initial_weights" not in k}
    assert len(old) == len(ckpt) - 1  # the one key that records them
    torch.save(old, tmp_path / "last.ckpt")
    assert check_resumable(tmp_path, arch) == "ImageNet (tf_efficientnet_lite0)"


def test_resuming_with_another_network_names_the_checkpoints_architecture(phantom_dir, tmp_path):
    """A fit interrupted with the Attention U-Net (the old default on masks) resumed with today's default
    (unet-lite0): a LiverscopeError naming the checkpoint's architecture and the --arch to pass, from
    fit_unet and from `segment train --resume` before any image is read; not a state-dict mismatch."""
    from typer.testing import CliRunner

    imgs, masks = _phantom_set(6, size=64)  # an encoder U-Net takes 64 px and up
    split = ["train"] * 4 + ["val", "test"]
    fit = FitConfig(epochs=1, batch_size=2, seed=0, device="cpu")
    run = tmp_path / "run"
    ckpts = run / SEGMENTER_CHECKPOINTS
    S.fit_unet(imgs, masks, split, fit, arch=S.unet_arch(channels=(4, 8)), checkpoint_dir=ckpts)
    wanted = r"attention-unet network, not unet-lite0; resume it with --arch attention-unet"
    with pytest.raises(LiverscopeError, match=wanted):
        S.fit_unet(imgs, masks, split, fit, arch=make_arch("unet-lite0"), checkpoint_dir=ckpts, resume=True)
    with pytest.raises(
        LiverscopeError, match=r"does not hold the network of these settings \(attention-unet\)"
    ):
        check_resumable(ckpts, S.unet_arch(channels=(8, 16)))  # the same network, other channels
    save_model(run, build_model("resnet10t", 5), list("abcde"), Preprocessing(size=32, denoise=False))
    args = ["segment", "train", str(run), str(phantom_dir), "--masks", str(phantom_dir / "masks")]
    r = CliRunner().invoke(app, [*args, "--device", "cpu", "--resume"])
    assert r.exit_code == 1 and "--arch attention-unet" in r.output, r.output
    assert "state_dict" not in r.output and not (run / "segmenter.json").exists()


def test_lightning_fit_stops_early_on_the_validation_dice():
    """Early stopping watches the validation Dice: the fit ends ``patience`` epochs after its best epoch,
    whose weights are kept."""
    imgs, masks = _phantom_set(10, size=32)
    split = ["train"] * 6 + ["val"] * 3 + ["test"]
    model, info = S.fit_unet(
        imgs,
        masks,
        split,
        FitConfig(epochs=40, batch_size=2, lr=3e-2, seed=0, patience=2, device="cpu"),
        arch=S.unet_arch(channels=(4, 8)),
    )
    dices = [h["val_dice"] for h in info["history"]]
    best = info["best_epoch"]
    assert info["epochs_run"] == best + 2 < 40, dices
    assert info["best_val_dice"] == max(dices) == dices[best - 1] and max(dices[best:]) <= dices[best - 1]
    pred = S.predict_masks_at(model, imgs[6:9], 32)
    assert np.mean([dice(p, t) for p, t in zip(pred, masks[6:9])]) == pytest.approx(
        info["best_val_dice"], abs=1e-6
    )


# --------------------------------------------------------------------------------------------------
# commands on the session's trained phantom run


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the session run (the segmenter must not leak into other tests' run)."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst, ignore=shutil.ignore_patterns("checkpoints", "cache", "*.ckpt"))
    return dst


def test_cli_segment_train_predict_pseudo_score(run_copy, phantom_dir, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app
    from liverscope.utils import read_json

    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "segment",
            "train",
            str(run_copy),
            str(phantom_dir),
            "--epochs",
            "2",
            "--size",
            "32",
            "--real-masks",
            str(phantom_dir / "masks"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "test vs targets" in r.output and "expert masks" in r.output
    for f in ("segmenter.safetensors", "segmenter.json", "seg_split.csv"):
        assert (run_copy / f).exists(), f
    meta = read_json(run_copy / "segmenter.json")
    assert meta["size"] == 32 and meta["loss"] == "bce" and meta["pseudo_masks"]["rule"] == "threshold"
    seg = read_json(run_copy / "metrics.json")["segmentation"]
    assert 0 <= seg["iou_vs_targets"] <= 1 and seg["n_test"] > 0
    assert seg["unet_vs_real"]["n"] == seg["n_test"] and 0 <= seg["pseudo_vs_real"]["iou"] <= 1
    assert "test" in read_json(run_copy / "metrics.json")  # the classifier's metrics are kept
    assert "Segmentation" in (run_copy / "report.html").read_text()
    assert len(list((run_copy / "pseudo_masks").rglob("*.png"))) == 120
    # Lightning's checkpoints in the segmenter's folder of the run; resume continues from them
    assert meta["engine"] == "lightning" and (run_copy / meta["checkpoints"] / "last.ckpt").exists()
    cfg = segment_config(epochs=3, size=32, real_masks=phantom_dir / "masks", device="cpu")
    resumed = S.train_segmenter(run_copy, phantom_dir, cfg, report=False, resume=True)["meta"]
    assert resumed["resumed"] and resumed["epochs_run"] == 3 and resumed["history"][:2] == meta["history"]
    # the app's contract
    seg_model = S.load_segmenter(run_copy)
    assert S.predict_mask(seg_model, np.zeros((64, 64, 3), np.uint8)).shape == (64, 64)

    # predict: masks and outlines at the original size; a bad file is skipped and listed
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    imgs = sorted((phantom_dir / "F4").glob("*.png"))[:2]
    out = tmp_path / "seg"
    r = runner.invoke(
        app, ["segment", "predict", str(run_copy), *map(str, imgs), str(bad), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "skipped 1" in r.output and "broken.png" in r.output
    m = S.read_mask(out / f"{imgs[0].stem}_mask.png")
    assert m.shape == (64, 64)
    assert (out / f"{imgs[0].stem}_outline.png").exists()

    # pseudo: mirrors the data folder under --out; never inside the data folder
    pout = tmp_path / "pseudo"
    r = runner.invoke(
        app,
        [
            "segment",
            "pseudo",
            str(run_copy),
            str(phantom_dir),
            "--rule",
            "top",
            "--q",
            "10",
            "--out",
            str(pout),
        ],
    )
    assert r.exit_code == 0, r.output
    written = sorted(pout.rglob("*.png"))
    assert len(written) == 120 and (pout / "F0" / "F0_0000.png").exists()
    assert not (phantom_dir / "masks" / "F0").exists()
    r = runner.invoke(
        app, ["segment", "pseudo", str(run_copy), str(phantom_dir), "--out", str(phantom_dir / "pm")]
    )
    assert r.exit_code != 0 and "never written into the data" in r.output

    # score: pseudo-masks against the phantoms' known nodules
    r = runner.invoke(
        app,
        ["segment", "score", str(pout), str(phantom_dir / "masks"), "--out", str(tmp_path / "scores.csv")],
    )
    assert r.exit_code == 0, r.output
    assert "mean over 120 image(s)" in r.output
    assert (tmp_path / "scores.csv").read_text().count("\n") == 121


def test_pseudo_masks_of_a_run_follow_the_rule(trained_run, phantom_dir):
    from liverscope.data.io import read_image
    from liverscope.data.preprocess import preprocess_array

    pp = read_preprocessing(trained_run)
    files = sorted((phantom_dir / "F3").glob("*.png"))[:4]
    inputs = [preprocess_array(read_image(f), pp) for f in files]
    cams = S.run_cams(trained_run, inputs)
    pm = S.pseudo_masks(trained_run, inputs, "threshold", cams=cams)
    assert pm.masks.shape == (4, pp.size, pp.size)
    for m, c, s in zip(pm.masks, pm.cams, pm.sectors):
        assert np.array_equal(m, (c >= 0.5) & s)
        assert c.max() == pytest.approx(1.0) and c[~s].max(initial=0) == 0
    top = S.pseudo_masks(trained_run, inputs, "top", q=20, cams=cams)
    for m, s in zip(top.masks, top.sectors):
        assert m.sum() == math.ceil(0.2 * s.sum() - 1e-9)
    flip = S.pseudo_masks(trained_run, inputs, "threshold", flip_average=True)
    assert flip.masks.shape == pm.masks.shape and "flip" in flip.rule


# --------------------------------------------------------------------------------------------------
# real expert masks


@pytest.mark.real
def test_pseudo_mask_scores_come_from_the_expert_masks(real_masses, tmp_path):
    """Explain + pseudo-mask scoring on a few liver-masses images with an untrained classifier: the
    figures are computed from the expert masks (the complement of the mask changes them)."""
    import torch

    from liverscope.data.preprocess import Preprocessing
    from liverscope.models.registry import build_model
    from liverscope.rundir import save_model

    torch.manual_seed(0)
    pp = Preprocessing(size=96)
    save_model(tmp_path, build_model("resnet10t", 2, head="linear"), ["benign", "malignant"], pp)
    files = (
        sorted((real_masses / "benign").glob("*.png"))[:3]
        + sorted((real_masses / "malignant").glob("*.png"))[:3]
    )
    items, bad = S.load_images(files, pp, roots=[real_masses])
    assert not bad and len(items) == 6
    truth = [
        to_model(S.read_mask(S.find_mask(real_masses / "masks", it.rel), it.shape), it.box, pp.size)
        for it in items
    ]
    assert all(t.any() for t in truth)
    pm = S.pseudo_masks(tmp_path, [it.input for it in items], "otsu")
    s = S.score_pseudo_masks(pm, truth)
    assert s["n"] == 6 and s["pointing_n"] == 6
    for k in ("iou", "dice", "iou_sector", "dice_sector", "pointing_game"):
        assert 0.0 <= s[k] <= 1.0, k
    flipped = S.score_pseudo_masks(pm, [~t for t in truth])
    assert flipped["iou_per_image"] != s["iou_per_image"]
    # the mask of each image is its own: scoring against another image's lesion changes the figure
    shifted = S.score_pseudo_masks(pm, truth[1:] + truth[:1])
    assert shifted["iou_per_image"] != s["iou_per_image"]
