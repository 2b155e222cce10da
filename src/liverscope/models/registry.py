"""The model registry: name → backbone builder, and :func:`build_model`, the one way to make a model.

Every model is a :class:`~liverscope.models.livernet.LiverNet`: a timm backbone that yields a feature
map, an identity layer CAM methods hook (``cam_layer``), and a classification head. Model families
register themselves in their own files with :func:`register_model` (as timm's model files do);
importing :mod:`liverscope.models` imports them all.

Weights: ``pretrained=True`` loads ImageNet weights through timm's hub (needs internet);
``weights=FILE`` loads a local ``.safetensors`` / ``.pth`` checkpoint of the same timm architecture
(or a liverscope ``model.safetensors``); with neither the backbone is randomly initialised, and
:attr:`LiverNet.weights_source` says which happened (it is written into every run's metadata).

Input normalisation: the mean and std of a model are those of its timm architecture's default
``pretrained_cfg`` (what its ImageNet weights were trained with), unless its family registers others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from liverscope.errors import LiverscopeError
from liverscope.models.livernet import LiverNet


@dataclass(frozen=True)
class ModelSpec:
    name: str
    timm_name: str
    builder: Callable[..., nn.Module]
    description: str
    small: bool  # cheap enough to train on a laptop CPU
    mean: tuple[float, float, float] = (
        IMAGENET_DEFAULT_MEAN  # input normalisation its ImageNet weights expect
    )
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD


_REGISTRY: dict[str, ModelSpec] = {}


def pretrained_normalisation(timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the default ``pretrained_cfg`` of a timm architecture: the normalisation its
    ImageNet weights were trained with (timm's ImageNet defaults for an architecture without one)."""
    cfg = timm.get_pretrained_cfg(timm_name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def register_model(
    name: str,
    timm_name: str,
    description: str = "",
    small: bool = False,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
):
    """Decorator registering ``builder(pretrained, weights) -> backbone`` under ``name``.

    The backbone must expose ``forward_features(x) -> BxCxHxW`` and ``num_features``; it may set
    ``weights_source`` to say where its weights came from. ``mean``/``std``: the input normalisation
    its pretrained weights expect (default: :func:`pretrained_normalisation` of ``timm_name``).
    """

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' registered twice")
        cfg_mean, cfg_std = pretrained_normalisation(timm_name)
        _REGISTRY[name] = ModelSpec(
            name, timm_name, fn, description, small, tuple(mean or cfg_mean), tuple(std or cfg_std)
        )
        return fn

    return deco


def list_models(small_only: bool = False) -> list[str]:
    """Registered model names."""
    return [n for n, s in _REGISTRY.items() if s.small or not small_only]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _REGISTRY


def get_spec(name: str) -> ModelSpec:
    """The registration of a model (timm name, description, whether it is CPU-sized)."""
    if name not in _REGISTRY:
        raise LiverscopeError(f"unknown model '{name}'; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


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
        source = getattr(backbone, "weights_source", None) or (
            f"ImageNet (timm hub: {spec.timm_name})" if pretrained else "random init"
        )
    model = LiverNet(backbone, num_classes, head, dropout, hidden, freeze_backbone)
    model.arch = {
        "name": name,
        "num_classes": num_classes,
        "head": head,
        "dropout": dropout,
        "hidden": hidden,
        "freeze_backbone": freeze_backbone,
    }
    model.weights_source = source
    return model


def model_from_arch(arch: dict) -> LiverNet:
    """Rebuild a model (random weights) from the ``architecture`` entry of a run's ``model.json``."""
    return build_model(
        arch["name"],
        int(arch["num_classes"]),
        arch.get("head", "seed"),
        False,
        None,
        bool(arch.get("freeze_backbone", False)),
        float(arch.get("dropout", 0.3)),
        int(arch.get("hidden", 256)),
    )


__all__ = [
    "ModelSpec",
    "pretrained_normalisation",
    "register_model",
    "list_models",
    "is_model",
    "get_spec",
    "build_model",
    "model_from_arch",
]
