"""The backbone's first stage computes in fp32 under bf16 autocast (models/stem.py), and nothing else
about the model changes: the same state-dict keys, the same fp32 outputs, the autocast state restored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from liverscope.models import build_model
from liverscope.models.registry import get_spec
from liverscope.models.stem import first_stage, first_stage_convolutions, keep_first_stage_fp32


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tf_efficientnet_lite0", ["conv_stem", "bn1", "blocks.0"]),
        ("resnet10t", ["conv1", "bn1", "act1"]),  # a deep stem: conv1 is a Sequential
        ("resnet50_cbam", ["conv1", "bn1", "act1"]),
        ("densenet121", ["features.conv0", "features.norm0"]),
    ],
)
def test_first_stage_is_the_modules_up_to_the_first_feature_stage(name, expected):
    backbone = get_spec(name).builder(pretrained=False, weights=None)
    assert first_stage(backbone) == [backbone.get_submodule(n) for n in expected]


@pytest.mark.parametrize(
    "name, convs",
    [("tf_efficientnet_lite0", 3), ("resnet10t", 3), ("resnet50_cbam", 1), ("densenet121", 1)],
)
def test_first_stage_convolutions_counts_the_stem_and_first_block(name, convs):
    """What int8 export keeps in fp32: Lite0's stem, depthwise and pointwise; a deep stem's three."""
    assert first_stage_convolutions(get_spec(name).builder(pretrained=False, weights=None)) == convs


def test_no_feature_info_means_nothing_is_kept_in_fp32():
    assert first_stage(nn.Sequential(nn.Conv2d(3, 4, 3))) == []
    assert first_stage_convolutions(nn.Sequential(nn.Conv2d(3, 4, 3))) == 1  # the stem, as before
    assert keep_first_stage_fp32(nn.Sequential(nn.Conv2d(3, 4, 3))) == []


def _dtypes_under_bf16(model, x):
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = output.dtype

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.backbone.named_children()]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    for h in hooks:
        h.remove()
    return seen, logits


def test_the_first_stage_is_fp32_and_the_rest_bf16_under_autocast():
    model = build_model("tf_efficientnet_lite0", 3, head="linear").eval()
    seen, logits = _dtypes_under_bf16(model, torch.randn(2, 3, 64, 64))
    assert seen["conv_stem"] == torch.float32 and seen["bn1"] == torch.float32
    assert seen["conv_head"] == torch.bfloat16  # the rest of the network still runs in bf16
    assert logits.dtype == torch.bfloat16
    assert torch.is_autocast_cpu_enabled() is False  # nothing left switched on or off outside


def test_autocast_state_is_restored_after_a_failing_forward():
    model = build_model("tf_efficientnet_lite0", 3, head="linear").eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 5, 64, 64))  # wrong channel count: fails inside the fp32 stem
        assert torch.is_autocast_cpu_enabled()
    assert all(not getattr(m, "_fp32_contexts", []) for m in model.modules())


def test_keys_outputs_and_copies_are_unchanged():
    torch.manual_seed(0)
    hooked = build_model("tf_efficientnet_lite0", 3, head="linear").eval()
    plain = get_spec("tf_efficientnet_lite0").builder(pretrained=False, weights=None)
    assert set(hooked.backbone.state_dict()) == set(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = hooked(x)
        clone = copy.deepcopy(hooked)  # what weight averaging (EMA) does
        assert torch.equal(clone(x), before)
    assert keep_first_stage_fp32(hooked.backbone) == []  # applied once only
