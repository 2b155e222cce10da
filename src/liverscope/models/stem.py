"""The backbone's first stage computes in fp32 even under bf16 autocast.

Measured on `cpu-best` fold models (EfficientNet-Lite0, 192 px; docs/benchmarks.md, issue 26): under bf16
autocast everywhere a model's labels agreed with its own fp32 labels on 0.66–0.97 of the validation
images, and a model trained in bf16-mixed then scored in fp32 (as every run's figures are) lost up to
0.17 balanced accuracy. The cause is the first stage: ImageNet BatchNorm layers there multiply their
input by up to ~110 (channels of tiny variance on grey ultrasound), so bf16's rounding of the stem
convolution's output is amplified into the whole network. Keeping the stem and the first block in fp32
(the modules up to timm's first ``feature_info`` entry, reduction 2) raised the agreement from 0.66 to
0.975 on the worst model; the training-step timing of ``precision: auto`` (liverscope.speed.training)
includes what it costs.

Forward hooks rather than wrapper modules, so state-dict keys (and every saved run) stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def first_stage(backbone: nn.Module) -> list[nn.Module]:
    """The modules of ``backbone`` up to and including its first feature stage (timm's
    ``feature_info[0]["module"]``, e.g. ``conv_stem``, ``bn1``, ``blocks.0`` of an EfficientNet;
    ``conv1``, ``bn1``, ``act1`` of a ResNet), in forward order; ``[]`` when the backbone has no
    ``feature_info``."""
    info = getattr(backbone, "feature_info", None)
    if not info or not isinstance(info, (list, tuple)) or "module" not in info[0]:
        return []
    modules, parent = [], backbone
    for part in info[0]["module"].split("."):
        children = dict(parent.named_children())
        if part not in children:
            return []
        for name, child in children.items():
            if name == part:
                break
            modules.append(child)
        parent = children[part]
    return [*modules, parent]


def first_stage_convolutions(backbone: nn.Module) -> int:
    """How many convolutions the first stage (:func:`first_stage`) of ``backbone`` holds, in forward
    order the first of the network (int8 export keeps them in fp32: the same amplification hurts int8,
    ``liverscope.inference.quantize``); 1 (the stem) when the backbone has no ``feature_info``."""
    n = sum(isinstance(m, nn.Conv2d) for module in first_stage(backbone) for m in module.modules())
    return max(n, 1)


def _enter_fp32(module: nn.Module, args: tuple) -> tuple:
    ctx = torch.autocast(args[0].device.type, enabled=False)
    ctx.__enter__()
    module._fp32_contexts.append(ctx)
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _leave_fp32(module: nn.Module, args: tuple, output):
    module._fp32_contexts.pop().__exit__(None, None, None)


def keep_first_stage_fp32(backbone: nn.Module) -> list[str]:
    """Make the first stage of ``backbone`` (:func:`first_stage`) compute in fp32 under autocast (a
    no-op in fp32). Returns the class names of the modules it applies to (what ``model.json`` can say)."""
    names = []
    for module in first_stage(backbone):
        if getattr(module, "_fp32_contexts", None) is not None:
            continue
        module._fp32_contexts = []
        module.register_forward_pre_hook(_enter_fp32)
        module.register_forward_hook(_leave_fp32, always_call=True)
        names.append(type(module).__name__)
    return names
