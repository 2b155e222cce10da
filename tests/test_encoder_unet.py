"""The segmenter on an ImageNet encoder (issue 22): the encoder really carries the package's ImageNet
weights, and the segmenter contract (save, load, predict at original size) holds for both networks."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from liverscope.models import weights as W
from liverscope.segment import unet as U
from liverscope.segment.encoder_unet import build_encoder_unet, encoder_unet_arch, mask_and_score

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _features(model, size=128):
    img = np.asarray(Image.open(GRACE_HOPPER).convert("RGB"))
    x = U.to_unet_input([img], size, 3, U.normalisation(encoder_unet_arch("unet-lite0")))
    with torch.inference_mode():
        return model.eval().encoder(x)[-1]


def test_the_encoder_carries_the_packages_imagenet_weights():
    arch = encoder_unet_arch("unet-lite0")
    pretrained = build_encoder_unet(arch, pretrained=True)
    stem = W.read_state_dict(W.package_weights_path("tf_efficientnet_lite0"))
    first = next(iter(stem.values()))
    assert torch.equal(pretrained.encoder.model.conv_stem.weight, first)
    assert "ImageNet" in pretrained.weights_source
    torch.manual_seed(0)
    random = build_encoder_unet(arch, pretrained=False)
    assert not torch.equal(random.encoder.model.conv_stem.weight, first)
    a, b = _features(pretrained), _features(random)
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)


def test_make_arch_and_defaults():
    assert U.make_arch("attention-unet", 1, (4, 8))["name"] == "monai.networks.nets.AttentionUnet"
    rec = U.make_arch("unet-lite1")
    assert (
        rec["encoder"] == "tf_efficientnet_lite1"
        and rec["in_channels"] == 3
        and np.prod(rec["strides"]) == 32
    )
    assert U.normalisation(rec) == {"mean": 0.5, "std": 0.5} and U.normalisation(
        U.make_arch("attention-unet")
    ) == {"mean": 0.5, "std": 0.25}
    assert U.segmenter_defaults(True) == ("unet-lite0", "bce+dice", 30)
    assert U.segmenter_defaults(False) == ("attention-unet", "bce", 30)
    assert U.segmenter_defaults(True, "attention-unet", "bce", 5) == ("attention-unet", "bce", 5)
    with pytest.raises(Exception, match="--arch"):
        U.make_arch("vit")
    with pytest.raises(Exception, match="multiple of 32"):
        U.check_size(48, rec["strides"])


@pytest.mark.parametrize("arch", ["attention-unet", "unet-lite0"])
def test_segmenter_contract_save_load_predict_at_original_size(arch, tmp_path):
    rec = U.make_arch(arch, 1, (4, 8))
    torch.manual_seed(0)
    model = U.unet_from_arch(rec).eval()
    meta = {"architecture": rec, "size": 64}
    U.save_segmenter(tmp_path, model, meta, target="lesion")
    seg = U.load_segmenter(tmp_path, "cpu", "lesion")
    assert seg.meta["architecture"] == rec and seg.norm == U.normalisation(rec)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (90, 70, 3), dtype=np.uint8),
        rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
    ]
    probs = U.predict_proba(seg, images)
    assert [p.shape for p in probs] == [(90, 70), (64, 64)]
    with torch.inference_mode():  # the loaded weights are the saved ones: the same output as the model saved
        x = U.to_unet_input(images[1:], 64, rec["in_channels"], U.normalisation(rec))
        assert np.allclose(torch.sigmoid(mask_and_score(model(x))[0]).numpy()[0, 0], probs[1], atol=1e-5)
    maps, image = U.predict_proba(seg, images, scores=True)
    assert [p.shape for p in maps] == [(90, 70), (64, 64)]
    assert (image == [None, None]) if arch == "attention-unet" else all(0.0 <= s <= 1.0 for s in image)
    assert U.predict_mask(seg, images[0]).dtype == bool


def test_offline_without_the_weights_package_fails_before_any_work(tmp_path, monkeypatch):
    from liverscope.data.preprocess import Preprocessing
    from liverscope.errors import LiverscopeError
    from liverscope.models.registry import build_model
    from liverscope.rundir import save_model
    from liverscope.segment import commands as C
    from liverscope.segment import encoder_unet as E
    from liverscope.segment.config import segment_config

    monkeypatch.setattr(E, "package_weights_path", lambda name: None)
    monkeypatch.setattr(E, "hub_reachable", lambda: False)
    E.check_encoder_weights(U.make_arch("attention-unet"))  # needs no weights
    save_model(
        tmp_path,
        build_model("resnet10t", 2, head="linear"),
        ["a", "b"],
        Preprocessing(size=32, denoise=False),
    )
    with pytest.raises(LiverscopeError, match="attention-unet") as err:
        cfg = segment_config(masks=tmp_path / "masks", device="cpu")
        C.train_segmenter(tmp_path, tmp_path / "no-such-data", cfg, report=False)
    assert "liverscope[imagenet]" in str(err.value)


def test_the_image_level_head_is_trained_with_the_mask():
    """An encoder U-Net carries an image-level head (anything to outline?) whose loss joins the mask's:
    one optimiser step moves the head's weights, and a segmenter saved without a head loads without one."""
    from liverscope.segment.config import FitConfig
    from liverscope.segment.training import LitSegmenter

    rec = U.make_arch("unet-lite0")
    assert rec["image_head"] is True
    torch.manual_seed(0)
    model = U.unet_from_arch(rec)
    lit = LitSegmenter(model, FitConfig(loss="bce+dice", lr=1e-2, flip=False))
    x = torch.randn(4, 3, 64, 64)
    y = torch.zeros(4, 1, 64, 64)
    y[:2, :, 20:40, 20:40] = 1.0  # two images with something to outline, two without
    head = [p.detach().clone() for p in model.classification_head.parameters()]
    opt = lit.configure_optimizers()
    lit.training_step((x, y), 0).backward()
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(head, model.classification_head.parameters()))
    old = {k: v for k, v in rec.items() if k != "image_head"}
    assert U.unet_from_arch(old).classification_head is None
