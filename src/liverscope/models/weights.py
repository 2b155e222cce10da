"""Backbone weights: ImageNet weights through timm's hub, local checkpoint files, never unpickling.

Apart from the registry (as timm keeps ``_helpers.py`` apart from ``_registry.py``): a model family
builds its backbone with :func:`create_timm_backbone` and loads a user's file with
:func:`load_backbone_weights`.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from liverscope.errors import LiverscopeError


def strip_liverscope_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    state = strip_liverscope_prefix(read_state_dict(path))
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    if not usable or len(missing) > 0.02 * len(own):
        raise LiverscopeError(
            f"{path}: does not match the '{arch}' backbone ({len(usable)} of {len(own)} tensors fit; "
            f"first missing: {missing[:3]}); use weights saved from the same timm architecture"
        )
    backbone.load_state_dict(usable, strict=False)


def create_timm_backbone(timm_name: str, pretrained: bool) -> nn.Module:
    """A timm feature extractor (no classifier, no pooling); ``pretrained`` downloads ImageNet weights."""
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=0, global_pool="")
    except Exception as exc:
        if pretrained:
            raise LiverscopeError(
                f"cannot download ImageNet weights for '{timm_name}' ({type(exc).__name__}: {exc}); "
                "when offline, pass a local file with --weights instead of --pretrained"
            ) from None
        raise


__all__ = ["read_state_dict", "strip_liverscope_prefix", "load_backbone_weights", "create_timm_backbone"]
