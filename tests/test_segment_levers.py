"""Levers for sharper maps and pseudo-masks (issue 11): CAMs from shallower or several backbone stages,
the GrabCut rule, pseudo-masks restricted to a region, and U-Net training on confident pixels only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverscope import segment as S
from liverscope.data.datasets import make_phantom
from liverscope.data.preprocess import Preprocessing, preprocess_array
from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import dice
from liverscope.explain import cams as explain
from liverscope.models import build_model
from liverscope.segment.config import FitConfig
from liverscope.segment.training import segmentation_loss, weighted_segmentation_loss

PP64 = Preprocessing(size=64, denoise=False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one intra-op thread (conftest's ``one_thread``)."""


@pytest.fixture(scope="module")
def inputs() -> list[np.ndarray]:
    return [preprocess_array(make_phantom(k % 5, size=64, seed=k)[0], PP64) for k in range(3)]


@pytest.fixture(scope="module")
def model():
    """An untrained resnet10t LiverNet: at 64 px its last feature map is 2x2, layer2's 8x8, layer1's 16x16."""
    torch.manual_seed(0)
    return build_model("resnet10t", 3, head="linear").eval()


def kinks(maps: np.ndarray) -> float:
    """Median over rows of the points where a bilinearly upsampled map bends (non-zero second difference):
    about two per feature-map cell along the row, so it grows with the map's resolution."""
    counts = []
    for m in maps:
        d2 = np.abs(np.diff(m.astype(np.float64), n=2, axis=1))
        tol = 1e-4 * max(float(m.max() - m.min()), 1e-12)
        counts.extend((d2 > tol).sum(axis=1))
    return float(np.median(counts))


# --------------------------------------------------------------------------------------------------
# CAM layers


def test_stages_come_from_timms_feature_info(model):
    assert explain.cam_stages(model) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    eff = build_model("efficientnet_b0", 2, head="linear")
    assert "blocks.4" in explain.cam_stages(eff)
    assert explain.resolve_layers(eff, "blocks.4") == [("blocks.4", eff.backbone.blocks[4])]
    # shallow to deep whatever the order asked, duplicates once, "last" is the cam_layer after every stage
    got = explain.resolve_layers(model, ["last", "layer3", -2, "layer1"])
    assert [n for n, _ in got] == ["layer1", "layer3", "last"] and got[-1][1] is model.cam_layer
    assert explain.resolve_layers(model, None) is None and explain.resolve_layers(model, "last") is None
    assert [n for n, _ in explain.resolve_layers(model, "layer2, layer3")] == ["layer2", "layer3"]


@pytest.mark.parametrize("bad", ["layer9", "blocks.4", -6, 5, ""])
def test_a_bad_layer_is_a_clear_error_listing_the_stages(model, inputs, bad):
    with pytest.raises(LiverscopeError, match=r"not a stage.*layer1, layer2, layer3, layer4"):
        explain.explain_batch(model, inputs, PP64, layers=bad)


def test_the_last_stage_through_the_backbone_is_todays_map(model, inputs):
    """ResNet's layer4 is its last feature map: the slow path (gradient through the backbone) gives the
    fast path's map (gradient through the head only), by name and by index -1."""
    fast = explain.explain_batch(model, inputs, PP64, targets=[0, 1, 2])
    for layers in ("layer4", -1, ["layer4"]):
        slow = explain.explain_batch(model, inputs, PP64, targets=[0, 1, 2], layers=layers)
        np.testing.assert_allclose(slow.raw, fast.raw, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(slow.cams, fast.cams, atol=1e-5)
    by_index = explain.explain_batch(model, inputs, PP64, targets=[0, 1, 2], layers=-2)
    by_name = explain.explain_batch(model, inputs, PP64, targets=[0, 1, 2], layers="layer3")
    np.testing.assert_array_equal(by_index.cams, by_name.cams)


def test_a_shallower_stage_gives_a_finer_map_of_the_input_size(model, inputs):
    last = explain.explain_batch(model, inputs, PP64, targets=[0, 1, 2], restrict_to_sector=False)
    l2 = explain.explain_batch(
        model, inputs, PP64, targets=[0, 1, 2], restrict_to_sector=False, layers="layer2"
    )
    l1 = explain.explain_batch(
        model, inputs, PP64, targets=[0, 1, 2], restrict_to_sector=False, layers="layer1"
    )
    assert l2.cams.shape == l1.cams.shape == last.cams.shape == (3, 64, 64)
    k_last, k2, k1 = kinks(last.raw), kinks(l2.raw), kinks(l1.raw)
    assert k_last <= 4 < 2 * k_last <= k2 < k1, (k_last, k2, k1)  # 2x2 -> 8x8 -> 16x16 cells
    assert not np.allclose(l2.cams, last.cams, atol=0.05)


def test_several_layers_average_their_normalised_maps(model, inputs):
    """A multi-scale CAM: each layer's map normalised in the sector, averaged, normalised again; the
    raw map is the mean of the layers' raw maps each scaled to peak 1."""
    kw = {"targets": [0, 1, 2]}
    a = explain.explain_batch(model, inputs, PP64, layers="layer2", **kw)
    b = explain.explain_batch(model, inputs, PP64, **kw)
    both = explain.explain_batch(model, inputs, PP64, layers=("layer2", "last"), **kw)

    def peak1(m):  # (an untrained model's Grad-CAM can be zero everywhere after its ReLU)
        return m / m.max() if m.max() > 0 else m

    for i in range(3):
        want = explain.normalise_in_region(0.5 * (a.cams[i] + b.cams[i]), a.sectors[i])
        np.testing.assert_allclose(both.cams[i], want, atol=1e-5)
        np.testing.assert_allclose(
            both.raw[i], 0.5 * (peak1(a.raw[i]) + peak1(b.raw[i])), rtol=1e-4, atol=1e-6
        )
    assert both.cams.max() == pytest.approx(1.0) and not both.cams[~both.sectors].any()
    cams, classes = explain.compute_cams(model, inputs, PP64, layers=("layer2", "last"), **kw)
    np.testing.assert_allclose(cams, both.cams, atol=1e-6)
    assert list(classes) == [0, 1, 2]


@pytest.mark.parametrize("method", ["layercam", "gradcam++"])
def test_methods_work_at_shallow_layers_and_release_hooks(model, inputs, method):
    def n_hooks(m):
        return sum(
            len(x._forward_hooks) + len(x._backward_hooks) + len(getattr(x, "_backward_pre_hooks", {}))
            for x in m.modules()
        )

    before = n_hooks(model)
    b = explain.explain_batch(
        model, inputs, PP64, method=method, layers=("layer1", "layer2"), aug_smooth_flip=True
    )
    assert b.cams.shape == (3, 64, 64) and np.isfinite(b.cams).all()
    assert b.cams.max() == pytest.approx(1.0) and not b.cams[~b.sectors].any()
    assert n_hooks(model) == before and all(p.grad is None for p in model.parameters())


def test_a_frozen_backbone_still_explains_a_shallow_layer(inputs):
    """Backbone parameters without gradients: the stage's output still gets one (LayerCAM: ReLU of the
    gradient times the non-negative activations, so a map that is not all zero)."""
    torch.manual_seed(0)
    frozen = build_model("resnet10t", 3, head="linear", freeze_backbone=True)
    b = explain.explain_batch(frozen, inputs, PP64, targets=[0, 1, 2], method="layercam", layers="layer2")
    assert (b.raw.reshape(3, -1).max(axis=1) > 0).all()


# --------------------------------------------------------------------------------------------------
# GrabCut


def bright_disc_scene(rng: np.random.Generator, size: int = 64):
    """A speckled image with a bright disc, its sector, and a CAM blob near the disc but too wide and off-centre."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 <= 10**2
    img = np.clip(rng.normal(70, 15, (size, size)) + 110 * disc, 0, 255).astype(np.uint8)
    sector = np.zeros((size, size), bool)
    sector[4:60, 4:60] = True
    blob = np.exp(-((yy - 35) ** 2 + (xx - 33) ** 2) / (2 * 10.0**2))
    return np.repeat(img[:, :, None], 3, axis=2), disc, sector, S.normalise_map(blob, sector)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grabcut_follows_the_disc_better_than_the_blob_threshold(seed):
    img, disc, sector, cam = bright_disc_scene(np.random.default_rng(seed))
    seed_mask = S.threshold_mask(cam, 0.5, sector)
    cut = S.pseudo_mask(cam, sector, "grabcut", image=img)
    assert not (cut & ~sector).any()
    assert dice(cut, disc) > dice(seed_mask, disc) + 0.15, (dice(cut, disc), dice(seed_mask, disc))
    assert dice(cut, disc) > 0.9
    np.testing.assert_array_equal(S.grabcut_mask(cam, img[:, :, 0], sector), cut)  # a grey image works too


def test_grabcut_falls_back_to_the_seed_and_needs_the_image():
    img, _, sector, cam = bright_disc_scene(np.random.default_rng(0))
    assert not S.grabcut_mask(np.zeros(cam.shape), img, sector).any()  # a flat map: nothing to grow from
    everything = np.ones(cam.shape, np.float32)  # seed covers the whole image: no background for GrabCut
    assert S.grabcut_mask(everything, img, None).all()
    with pytest.raises(LiverscopeError, match="image"):
        S.pseudo_mask(cam, sector, "grabcut")
    with pytest.raises(LiverscopeError, match="model input"):
        S.grabcut_mask(cam, img[:32], sector)
    assert "GrabCut" in S.describe_rule("grabcut") and "layer3+last" in S.describe_rule(
        "otsu", layers=("layer3", "last")
    )


# --------------------------------------------------------------------------------------------------
# pseudo-masks of a run: layers, regions, images for GrabCut


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model):
    from liverscope.rundir import save_model

    d = tmp_path_factory.mktemp("lever-run")
    save_model(d, model, ["a", "b", "c"], PP64)
    return d


def test_run_cams_and_pseudo_masks_take_layers(run_dir, inputs, model):
    cams, _ = S.run_cams(run_dir, inputs, layers="layer2", targets=[0, 1, 2])
    want, _ = explain.compute_cams(model, inputs, PP64, targets=[0, 1, 2], layers="layer2")
    np.testing.assert_allclose(cams, want, atol=1e-5)
    pm = S.pseudo_masks(run_dir, inputs, "threshold", layers="layer2")
    assert "layer2" in pm.rule and pm.masks.shape == (3, 64, 64)
    with pytest.raises(LiverscopeError, match="not a stage"):
        S.pseudo_masks(run_dir, inputs, layers="nope")


def test_regions_keep_masks_and_maxima_inside(run_dir, inputs):
    cams = S.run_cams(
        run_dir, inputs, targets=[0, 1, 2], layers="layer1", method="layercam"
    )  # LayerCAM: never all zero
    regions = []
    for k in range(3):  # a "liver": the lower-left quarter-ish of each image
        r = np.zeros((64, 64), bool)
        r[28:60, 6 + 4 * k : 34 + 4 * k] = True
        regions.append(r)
    free = S.pseudo_masks(run_dir, inputs, "top", q=20, cams=cams)
    pm = S.pseudo_masks(run_dir, inputs, "top", q=20, cams=cams, regions=regions)
    for m, c, s, r, sr in zip(pm.masks, pm.cams, pm.sectors, regions, pm.search_regions):
        np.testing.assert_array_equal(sr, s & r)
        assert m.any() and not (m & ~sr).any() and m.sum() == int(np.ceil(0.2 * sr.sum() - 1e-9))
        assert c.max() == pytest.approx(1.0) and not c[~sr].any()
    assert (free.masks & ~np.stack(regions)).any()  # without the region the masks do leave it
    np.testing.assert_array_equal(free.search_regions, free.sectors)
    # the pointing game looks for the maximum inside the region: a lesion that fills the region is always hit
    scores = S.score_pseudo_masks(pm, regions)
    assert scores["pointing_game"] == 1.0
    # GrabCut receives the model input of each image
    gc = S.pseudo_masks(run_dir, inputs, "grabcut", cams=cams, regions=regions)
    for m, c, sr, im in zip(gc.masks, gc.cams, gc.search_regions, inputs):
        np.testing.assert_array_equal(m, S.grabcut_mask(c, im, sr))
    with pytest.raises(LiverscopeError, match="region masks"):
        S.pseudo_masks(run_dir, inputs, cams=cams, regions=regions[:2])
    with pytest.raises(LiverscopeError, match="size"):
        S.pseudo_masks(run_dir, inputs, cams=cams, regions=[r[:32] for r in regions])


# --------------------------------------------------------------------------------------------------
# confident pixels


def test_confident_targets_split_the_map_into_sure_and_ignored_pixels():
    cam = np.array([[[0.0, 0.2, 0.3, 0.45], [0.6, 0.8, 1.0, 5.0]]], np.float32)
    sector = np.array([[[1, 1, 1, 1], [1, 1, 1, 0]]], bool)  # 5.0 lies outside: it does not set the scale
    masks, weights = S.confident_targets(cam, sector, low=0.3, high=0.6)
    np.testing.assert_array_equal(masks[0], [[0, 0, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(weights[0], [[1, 1, 1, 0], [1, 1, 1, 1]])
    assert weights.dtype == np.float32
    with pytest.raises(LiverscopeError, match="low < high"):
        S.confident_targets(cam, sector, low=0.6, high=0.3)
    m2, w2 = S.confident_targets(cam[:, :, :3])  # no sector: whole image (max 1.0 at [1, 2])
    assert m2[0, 1].all() and not m2[0, 0].any() and w2.all()


def test_weighted_loss_with_unit_weights_is_the_library_loss():
    """Weights all 1: BCE is torch's BCEWithLogitsLoss and BCE + Dice is MONAI's DiceCELoss, value and gradient."""
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 1, 16, 16, generator=g)).double()
    target = (torch.rand(4, 1, 16, 16, generator=g) < 0.3).double()
    target[1] = 0
    for kind in ("bce", "bce+dice"):
        a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        ref = segmentation_loss(kind)(a, target)
        got = weighted_segmentation_loss(b, target, torch.ones_like(target), kind)
        ref.backward()
        got.backward()
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-10)
    with pytest.raises(LiverscopeError, match="loss"):
        weighted_segmentation_loss(logits, target, torch.ones_like(target), "focal")


@pytest.mark.parametrize("kind", ["bce", "bce+dice"])
def test_ignored_pixels_do_not_change_the_loss(kind):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 12, 12, generator=g, dtype=torch.float64)
    target = (torch.rand(3, 1, 12, 12, generator=g) < 0.4).double()
    weight = (torch.rand(3, 1, 12, 12, generator=g) < 0.6).double()
    flipped = torch.where(weight == 0, 1 - target, target)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    la, lb = (
        weighted_segmentation_loss(a, target, weight, kind),
        weighted_segmentation_loss(b, flipped, weight, kind),
    )
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[weight == 0] == 0).all()
    assert float(la.detach()) != pytest.approx(
        float(segmentation_loss(kind)(logits, target))
    )  # the weights do matter


def _phantoms(n: int, size: int = 32):
    imgs, masks = [], []
    for i in range(n):
        im, m = make_phantom(4, 5, size, seed=200 + i)
        imgs.append(np.repeat(im[..., None], 3, axis=2))
        masks.append(m)
    return imgs, np.stack(masks)


def test_fit_unet_with_weights_ignores_the_zero_weight_pixels():
    """Two fits whose targets differ only where the weight is 0 end with the same weights (and the
    same validation Dice); without the weights the difference shows."""
    imgs, masks = _phantoms(6)
    split = ["train"] * 4 + ["val"] * 2
    rng = np.random.default_rng(0)
    weights = (rng.random(masks.shape) < 0.5).astype(np.float32)
    noisy = np.where(weights == 0, ~masks, masks)
    fit = FitConfig(batch_size=2, lr=1e-2, seed=0, epochs=1, max_steps=2, device="cpu")
    kw = {"arch": S.unet_arch(channels=(4, 8))}
    clean_model, clean = S.fit_unet(imgs, masks, split, fit, weights=weights, **kw)
    noisy_model, info = S.fit_unet(imgs, noisy, split, fit, weights=weights, **kw)
    assert info["steps"] == 2 and info["pixel_weights"] is True
    assert info["history"][0]["val_dice"] == pytest.approx(clean["history"][0]["val_dice"], abs=1e-9)
    ref = clean_model.state_dict()
    for k, v in noisy_model.state_dict().items():
        np.testing.assert_allclose(v.float().numpy(), ref[k].float().numpy(), atol=1e-6, err_msg=k)
    unweighted, _ = S.fit_unet(imgs, noisy, split, fit, **kw)
    assert any(
        not torch.allclose(v.float(), ref[k].float(), atol=1e-4) for k, v in unweighted.state_dict().items()
    )
    with pytest.raises(LiverscopeError, match="pixel weights"):
        S.fit_unet(imgs, masks, split, fit, weights=weights[:, :16], **kw)


def test_fit_unet_resizes_weights_with_the_targets():
    imgs, masks = _phantoms(4, size=64)
    masks_w, weights = S.confident_targets(np.stack([m.astype(np.float32) for m in masks]))
    _, info = S.fit_unet(
        imgs,
        masks_w,
        ["train"] * 4,
        FitConfig(size=32, batch_size=2, epochs=1, max_steps=1, device="cpu"),
        weights=weights,
        arch=S.unet_arch(channels=(4, 8)),
    )
    assert info["steps"] == 1 and info["size"] == 32
