"""Models: one registry of named backbones (:mod:`.registry`), the :class:`LiverNet` wrapper every
model shares (:mod:`.livernet`), weight loading (:mod:`.weights`), and one file per model family that
registers itself (:mod:`.timm_backbones`, :mod:`.cbam`). Importing this package registers them all."""

from liverscope.models import timm_backbones  # noqa: F401  isort: skip  (registration on import, plain backbones first)
from liverscope.models import cbam  # noqa: F401  isort: skip
from liverscope.models import efficientnet_lite  # noqa: F401  isort: skip
from liverscope.models.livernet import HEADS, LiverNet
from liverscope.models.registry import (
    build_model,
    get_spec,
    is_model,
    list_models,
    model_from_arch,
    register_model,
)

__all__ = [
    "HEADS",
    "LiverNet",
    "build_model",
    "get_spec",
    "is_model",
    "list_models",
    "model_from_arch",
    "register_model",
]
