"""Every registered model builds, runs forward, exposes its CAM layer; weights load from local files."""

from __future__ import annotations

import pytest
import torch

from liverscope.errors import LiverscopeError
from liverscope.models import HEADS, build_model, list_models, model_from_arch


@pytest.mark.parametrize("name", list_models())
def test_registered_model_forward_and_cam_layer(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    seen = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("fmap", o))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    handle.remove()
    assert logits.shape == (2, 3)
    fmap = seen["fmap"]
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and fmap.shape[1] == model.num_features
    assert model.weights_source == "random init"
    assert torch.allclose(
        model.forward_head(model.forward_features(torch.zeros(1, 3, 64, 64))),
        model(torch.zeros(1, 3, 64, 64)),
    )


def test_resnet50_cbam_has_cbam_after_each_stage():
    from timm.layers.cbam import CbamModule

    model = build_model("resnet50_cbam", num_classes=5)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        block = getattr(model.backbone, stage)
        children = list(block.children())
        assert isinstance(children[-1], CbamModule), stage
        assert (
            children[-1].spatial.conv.conv.kernel_size == (7, 7)
            if hasattr(children[-1].spatial.conv, "conv")
            else True
        )
    n_cbam = sum(isinstance(m, CbamModule) for m in model.modules())
    assert n_cbam == 4


@pytest.mark.parametrize("head", HEADS)
def test_heads(head):
    model = build_model("resnet10t", num_classes=4, head=head).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    if head == "mlp128":
        linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
        assert [layer.out_features for layer in linears] == [128, 4]
        assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.head.modules())
    if head == "seed":
        kinds = [type(m).__name__ for m in model.head]
        assert kinds[2:] == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]


def test_freeze_backbone_trains_head_only():
    model = build_model("resnet10t", num_classes=2, freeze_backbone=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not model.backbone.training and model.head.training


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = timm.create_model("resnet10t", num_classes=1000)  # an "ImageNet" checkpoint with its classifier
    state = ref.state_dict()
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model = build_model("resnet10t", num_classes=3, weights=path)
    assert model.weights_source == f"file: {path.name}"
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_cbam_loads_plain_resnet50_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet50", num_classes=0)
    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = build_model("resnet50_cbam", num_classes=2, weights=path)
    assert torch.equal(model.backbone.layer1.stage[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_mismatched_or_bad_weights_are_clear_errors(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("mobilenetv3_small_100", num_classes=0)
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(LiverscopeError, match="does not match"):
        build_model("resnet10t", num_classes=2, weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LiverscopeError, match="cannot read weights"):
        build_model("resnet10t", num_classes=2, weights=junk)
    with pytest.raises(LiverscopeError, match="unknown model"):
        build_model("vgg99", num_classes=2)


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    import timm

    def offline(*a, **kw):
        if kw.get("pretrained"):
            raise OSError("network unreachable")
        return real(*a, **kw)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(LiverscopeError, match="--weights"):
        build_model("resnet10t", num_classes=2, pretrained=True)


def test_model_from_arch_roundtrip():
    m = build_model("mobilenetv3_small", num_classes=3, head="mlp128", freeze_backbone=True)
    m2 = model_from_arch(m.arch)
    assert m2.arch == m.arch
    m2.load_state_dict(m.state_dict())
