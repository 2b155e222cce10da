"""ResNet-50 with a CBAM block after each of its four residual stages (the CBAM study).

Stage level: ``y = CBAM(stage(x))``, where each stage already computes ``F(x) + x`` in its bottleneck
blocks. CBAM (Woo et al., ECCV 2018, "CBAM: Convolutional Block Attention Module") applies channel
attention (shared MLP on average- and max-pooled features) and then spatial attention (7×7 conv on the
channel-wise average and max); timm's ``CbamModule`` implements exactly that.
"""

from __future__ import annotations

from timm.layers.cbam import CbamModule
from torch import nn

from liverscope.models.registry import register_model
from liverscope.models.weights import create_timm_backbone, load_backbone_weights, read_state_dict

STAGES = ("layer1", "layer2", "layer3", "layer4")


class StageWithCBAM(nn.Sequential):
    """A residual stage followed by CBAM."""

    def __init__(self, stage: nn.Module, channels: int):
        super().__init__()
        self.stage = stage
        self.cbam = CbamModule(channels, rd_ratio=1 / 16, spatial_kernel_size=7)


def add_cbam(resnet: nn.Module) -> nn.Module:
    """Wrap each of ``layer1..layer4`` of a timm ResNet with CBAM (in place; returns the model).

    The ImageNet weights of the plain ResNet stay usable: load them before calling this.
    """
    for name in STAGES:
        stage = getattr(resnet, name)
        channels = (
            stage[-1].conv3.out_channels if hasattr(stage[-1], "conv3") else stage[-1].conv2.out_channels
        )
        setattr(resnet, name, StageWithCBAM(stage, channels))
    return resnet


@register_model("resnet50_cbam", "resnet50", "ResNet-50 + CBAM after each stage (CBAM study)")
def resnet50_cbam_backbone(pretrained: bool = False, weights=None) -> nn.Module:
    """timm ResNet-50 feature extractor with CBAM after every stage.

    ``pretrained``/``weights`` load a plain ResNet-50 checkpoint before CBAM is added (the CBAM blocks
    start from their own initialisation), or a liverscope ``resnet50_cbam`` checkpoint after.
    """
    resnet = create_timm_backbone("resnet50", pretrained and weights is None)
    if weights is None:
        return add_cbam(resnet)
    has_cbam = any(".cbam." in k for k in read_state_dict(weights))
    if not has_cbam:
        load_backbone_weights(resnet, weights, "resnet50")
    model = add_cbam(resnet)
    if has_cbam:
        load_backbone_weights(model, weights, "resnet50_cbam")
    return model
