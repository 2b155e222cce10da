"""One model registry: name → builder. Every model is a :class:`LiverNet`: a timm backbone that yields
a feature map, an identity layer CAM methods hook (``cam_layer``), and a classification head.

Weights: ``pretrained=True`` loads ImageNet weights through timm's hub (needs internet);
``weights=FILE`` loads a local ``.safetensors`` / ``.pth`` checkpoint of the same timm architecture
(or a liverscope ``model.safetensors``); with neither the backbone is randomly initialised, and
:attr:`LiverNet.weights_source` says which happened (it is written into every run's metadata).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from liverscope.errors import LiverscopeError

HEADS = ("seed", "mlp128", "linear")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    timm_name: str
    builder: Callable[..., nn.Module]
    description: str
    small: bool  # cheap enough to train on a laptop CPU


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, timm_name: str, description: str = "", small: bool = False):
    """Decorator registering ``builder(pretrained, weights) -> backbone`` under ``name``.

    The backbone must expose ``forward_features(x) -> BxCxHxW`` and ``num_features``.
    """

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = ModelSpec(name, timm_name, fn, description, small)
        return fn

    return deco


def list_models(small_only: bool = False) -> list[str]:
    """Registered model names."""
    return [n for n, s in _REGISTRY.items() if s.small or not small_only]


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise LiverscopeError(f"unknown model '{name}'; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def _strip_liverscope_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A liverscope ``model.safetensors`` holds ``backbone.*`` and ``head.*``; keep the backbone."""
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise LiverscopeError(f"{path}: weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
    except Exception as exc:
        raise LiverscopeError(f"{path}: cannot read weights ({type(exc).__name__}: {exc}); expected .safetensors or a torch state dict") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LiverscopeError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(backbone: nn.Module, path: str | Path, arch: str) -> None:
    """Load a local checkpoint into a timm backbone; the classifier of an ImageNet checkpoint is dropped.

    Raises :class:`LiverscopeError` when the file does not match the architecture.
    """
    state = _strip_liverscope_prefix(read_state_dict(path))
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    if not usable or len(missing) > 0.02 * len(own):
        raise LiverscopeError(
            f"{path}: does not match the '{arch}' backbone ({len(usable)} of {len(own)} tensors fit; "
            f"first missing: {missing[:3]}); use weights saved from the same timm architecture"
        )
    backbone.load_state_dict(usable, strict=False)


def _timm_backbone(timm_name: str, pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=0, global_pool="")
    except Exception as exc:
        if pretrained:
            raise LiverscopeError(
                f"cannot download ImageNet weights for '{timm_name}' ({type(exc).__name__}: {exc}); "
                "when offline, pass a local file with --weights instead of --pretrained"
            ) from None
        raise


def _plain(timm_name: str, name: str):
    def build(pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
        backbone = _timm_backbone(timm_name, pretrained and weights is None)
        if weights is not None:
            load_backbone_weights(backbone, weights, name)
        return backbone

    return build


for _name, _timm, _desc, _small in [
    ("efficientnet_b0", "efficientnet_b0", "EfficientNet-B0 (seed study)", False),
    ("efficientnet_b1", "efficientnet_b1", "EfficientNet-B1", False),
    ("efficientnet_b2", "efficientnet_b2", "EfficientNet-B2", False),
    ("efficientnet_b3", "efficientnet_b3", "EfficientNet-B3", False),
    ("efficientnet_b4", "efficientnet_b4", "EfficientNet-B4", False),
    ("resnet50", "resnet50", "ResNet-50", False),
    ("densenet121", "densenet121", "DenseNet-121", False),
    ("mobilenetv2", "mobilenetv2_100", "MobileNetV2 (multi-disease study)", True),
    ("resnet18", "resnet18", "ResNet-18 (CPU-friendly)", True),
    ("resnet10t", "resnet10t", "ResNet-10-T (fast on CPU)", True),
    ("mobilenetv3_small", "mobilenetv3_small_100", "MobileNetV3-Small (fastest)", True),
]:
    register_model(_name, _timm, _desc, _small)(_plain(_timm, _name))


def _register_cbam():
    from liverscope.models.cbam import resnet50_cbam_backbone

    register_model("resnet50_cbam", "resnet50", "ResNet-50 + CBAM after each stage (CBAM study)")(resnet50_cbam_backbone)


_register_cbam()


def _build_head(kind: str, in_features: int, num_classes: int, dropout: float, hidden: int) -> nn.Module:
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if kind == "seed":  # EfficientNet + Grad-CAM study: dropout → FC → BN → ReLU → dropout → FC
        layers = [nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
    elif kind == "mlp128":  # MobileNetV2 study: GAP → dropout 0.5 → Dense 128 ReLU → Dense K
        layers = [nn.Dropout(0.5), nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, num_classes)]
    elif kind == "linear":
        layers = [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
    else:
        raise LiverscopeError(f"unknown head '{kind}' (choose from {', '.join(HEADS)})")
    return nn.Sequential(*pool, *layers)


class LiverNet(nn.Module):
    """Backbone → ``cam_layer`` (identity on the final feature map) → head.

    Args:
        backbone: module with ``forward_features`` and ``num_features``.
        num_classes: number of output logits.
        head: ``seed``, ``mlp128`` or ``linear``.
        dropout, hidden: head settings.
        freeze_backbone: train the head only (the backbone's BatchNorm statistics stay fixed too).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "seed", dropout: float = 0.3, hidden: int = 256, freeze_backbone: bool = False):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        # CAM methods hook this layer: the same place (last feature map) for every backbone, and a
        # fresh output tensor-free identity, so no in-place activation can overwrite what the hook saw.
        self.cam_layer = nn.Identity()
        self.head = _build_head(head, self.num_features, num_classes, dropout, hidden)
        self.num_classes = num_classes
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.arch: dict = {}
        self.weights_source = "random init"

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.backbone.forward_features(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(
    name: str,
    num_classes: int,
    head: str = "seed",
    pretrained: bool = False,
    weights: str | Path | None = None,
    freeze_backbone: bool = False,
    dropout: float = 0.3,
    hidden: int = 256,
) -> LiverNet:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: number of classes.
        head: head preset (``seed``, ``mlp128``, ``linear``).
        pretrained: ImageNet weights from the timm hub (online only).
        weights: local checkpoint for the backbone (takes precedence over ``pretrained``).
        freeze_backbone: train the head only.
        dropout, hidden: head settings.

    Returns:
        A :class:`LiverNet` with ``arch`` (what to rebuild it) and ``weights_source`` set.
    """
    spec = get_spec(name)
    if num_classes < 2:
        raise LiverscopeError(f"need at least 2 classes, got {num_classes}")
    backbone = spec.builder(pretrained=pretrained, weights=weights)
    if weights is not None:
        source = f"file: {Path(weights).name}"
    else:
        source = f"ImageNet (timm hub: {spec.timm_name})" if pretrained else "random init"
    model = LiverNet(backbone, num_classes, head, dropout, hidden, freeze_backbone)
    model.arch = {"name": name, "num_classes": num_classes, "head": head, "dropout": dropout, "hidden": hidden, "freeze_backbone": freeze_backbone}
    model.weights_source = source
    return model


def model_from_arch(arch: dict) -> LiverNet:
    """Rebuild a model (random weights) from the ``architecture`` entry of a run's ``model.json``."""
    return build_model(
        arch["name"], int(arch["num_classes"]), arch.get("head", "seed"), False, None,
        bool(arch.get("freeze_backbone", False)), float(arch.get("dropout", 0.3)), int(arch.get("hidden", 256)),
    )
