"""The one model shape every registered backbone is wrapped in: backbone → ``cam_layer`` → head."""

from __future__ import annotations

import torch
from torch import nn

from liverscope.errors import LiverscopeError
from liverscope.models.stem import keep_first_stage_fp32

HEADS = ("seed", "mlp128", "linear")


def build_head(kind: str, in_features: int, num_classes: int, dropout: float, hidden: int) -> nn.Module:
    """Global average pooling and one of the studies' heads (``seed``, ``mlp128``, ``linear``)."""
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if kind == "seed":  # EfficientNet + Grad-CAM study: dropout → FC → BN → ReLU → dropout → FC
        layers = [
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        ]
    elif kind == "mlp128":  # MobileNetV2 study: GAP → dropout 0.5 → Dense 128 ReLU → Dense K
        layers = [nn.Dropout(0.5), nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, num_classes)]
    elif kind == "linear":
        layers = [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
    else:
        raise LiverscopeError(f"unknown head '{kind}' (choose from {', '.join(HEADS)})")
    return nn.Sequential(*pool, *layers)


class LiverNet(nn.Module):
    """Backbone → ``cam_layer`` (identity on the final feature map) → head.

    A plain :class:`torch.nn.Module` (``NCHW`` float32 normalised with the run's mean/std → logits)
    with timm's ``forward_features``/``forward_head``, ``num_features``, ``head_hidden_size``,
    :meth:`get_classifier` and :meth:`reset_classifier`, so it can be fine-tuned or embedded in
    other code (``liverscope.load_run(run).model``).

    Args:
        backbone: module with ``forward_features`` and ``num_features``.
        num_classes: number of output logits.
        head: ``seed``, ``mlp128`` or ``linear``.
        dropout, hidden: head settings.
        freeze_backbone: train the head only (the backbone's BatchNorm statistics stay fixed too).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: str = "seed",
        dropout: float = 0.3,
        hidden: int = 256,
        freeze_backbone: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        keep_first_stage_fp32(backbone)  # bf16 autocast leaves the first stage in fp32 (models/stem.py)
        self.num_features = int(backbone.num_features)
        # CAM methods hook this layer: the same place (last feature map) for every backbone, and a
        # fresh output tensor-free identity, so no in-place activation can overwrite what the hook saw.
        self.cam_layer = nn.Identity()
        self.head = build_head(head, self.num_features, num_classes, dropout, hidden)
        self.head_hidden_size = int(self.head[-1].in_features)  # what the final layer takes (timm's name)
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

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, pooled features)`` from one backbone pass. The head starts with global average
        pooling, so the pooled last feature map (what the out-of-distribution score measures,
        :mod:`liverscope.evaluate.ood`) is ``forward_features(x).mean((2, 3))``."""
        fmap = self.forward_features(x)
        return self.forward_head(fmap), fmap.mean((2, 3))

    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        """The final layer that makes the logits (timm's convention), or its name (``head.N``) with
        ``name_only``. The head's pooling and hidden layers stay in :attr:`head` before it."""
        i = len(self.head) - 1
        return f"head.{i}" if name_only else self.head[i]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final layer by a new one with ``num_classes`` outputs (timm's convention;
        ``0``: no layer, the model returns the features that fed it). The backbone and the head's
        hidden layers keep their weights. Pooling is always global average: ``global_pool`` may
        only be ``None`` or ``"avg"``."""
        if global_pool not in (None, "avg"):
            raise LiverscopeError(
                f"global_pool '{global_pool}': LiverNet pools by global average only ('avg')"
            )
        if num_classes < 0:
            raise LiverscopeError(f"num_classes must be 0 or more, got {num_classes}")
        new = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        ref = next(self.backbone.parameters(), None)
        self.head[-1] = new if ref is None else new.to(device=ref.device, dtype=ref.dtype)
        self.num_classes = num_classes
        if self.arch:
            self.arch = dict(self.arch, num_classes=num_classes)


__all__ = ["HEADS", "build_head", "LiverNet"]
