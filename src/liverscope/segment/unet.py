"""The Attention U-Net: building, predicting, and the run's saved segmenter.

The network is MONAI's 2-D Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for
the Pancreas", MIDL 2018) with one output channel, trained (:mod:`liverscope.segment.training`, Lightning)
with binary cross-entropy (the study's loss) or BCE + soft Dice (MONAI's ``DiceCELoss``). The segmenter lives in the run directory: ``segmenter.safetensors`` (weights, never
pickled) and ``segmenter.json`` (architecture, input size, preprocessing, split, loss, scores). The app
calls :func:`load_segmenter` and :func:`predict_mask`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from liverscope.data.geometry import to_original
from liverscope.data.io import to_grey
from liverscope.errors import LiverscopeError
from liverscope.rundir import SEGMENTER_META, SEGMENTER_WEIGHTS, load_weights, save_weights
from liverscope.utils import atomic_write_json, default_model_threads, read_json, resolve_device, torch_threads

LOSSES = ("bce", "bce+dice")
#: U-Net channels per level: small enough to train on a laptop CPU in minutes at 128-160 px.
DEFAULT_CHANNELS = (8, 16, 32, 64)


def cpu_threads(device: str = "cpu"):
    """On CPU, compute with half the cores (:func:`liverscope.utils.default_model_threads`): on a CPU
    busy with anything else a full OpenMP team stalls at its barriers — measured here, 8 epochs of the
    phantom U-Net took 12-65 s with 2 threads and 0.7-3.5 s with 1 on a busy 2-core machine."""
    return torch_threads(default_model_threads()) if str(device).startswith("cpu") else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------


def build_unet(in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS, strides: Sequence[int] | None = None, dropout: float = 0.0):
    """MONAI's 2-D Attention U-Net with one output channel (logits).

    Args:
        in_channels: 1 (grey, the default: B-mode is grey) or 3.
        channels: feature channels per level; the input side must be a multiple of the product of ``strides``.
        strides: down-sampling per level (default 2 at each of ``len(channels) - 1`` levels).
        dropout: dropout probability.
    """
    from monai.networks.nets import AttentionUnet

    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise LiverscopeError(f"the U-Net needs at least two levels of channels, got {channels}")
    strides = tuple(int(s) for s in (strides or (2,) * (len(channels) - 1)))
    if in_channels not in (1, 3):
        raise LiverscopeError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
    return AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=channels, strides=strides, dropout=dropout)


def unet_arch(in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS, strides: Sequence[int] | None = None, dropout: float = 0.0) -> dict:
    """The architecture record of ``segmenter.json`` (what :func:`build_unet` is called with)."""
    channels = [int(c) for c in channels]
    return {"name": "monai.networks.nets.AttentionUnet", "spatial_dims": 2, "in_channels": int(in_channels), "out_channels": 1,
            "channels": channels, "strides": [int(s) for s in (strides or (2,) * (len(channels) - 1))], "dropout": float(dropout)}


def unet_from_arch(arch: dict):
    """The untrained network of an architecture record (:func:`unet_arch`, ``segmenter.json``)."""
    return build_unet(arch["in_channels"], arch["channels"], arch["strides"], arch.get("dropout", 0.0))


def check_size(size: int, strides: Sequence[int]) -> None:
    """Raise a clear error when ``size`` does not fit the U-Net's down-sampling."""
    step = int(np.prod(strides))
    if size % step or size < 2 * step:
        raise LiverscopeError(f"U-Net input size {size} must be a multiple of {step} (the product of the strides) and at least {2 * step}")


def to_unet_input(images: Sequence[np.ndarray], size: int, in_channels: int = 1):
    """uint8 ``HxWx3`` images → float tensor ``N x C x size x size`` scaled to about [-2, 2]."""
    import torch

    arrs = []
    for im in images:
        im = np.asarray(im)
        if im.shape[0] != size or im.shape[1] != size:
            interp = cv2.INTER_AREA if min(im.shape[:2]) > size else cv2.INTER_LINEAR
            im = cv2.resize(im, (size, size), interpolation=interp)
        a = to_grey(im)[None] if in_channels == 1 else np.moveaxis(im if im.ndim == 3 else np.repeat(im[..., None], 3, 2), 2, 0)
        arrs.append(a)
    x = torch.from_numpy(np.stack(arrs).astype(np.float32))
    return (x / 255.0 - 0.5) / 0.25


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Boolean ``N x H x W`` masks → ``N x size x size`` (nearest neighbour)."""
    if masks.shape[1] == size and masks.shape[2] == size:
        return masks.astype(bool)
    return np.stack([to_original(np.asarray(m, bool), (size, size)) for m in masks])


# --------------------------------------------------------------------------------------------------
# the saved segmenter
# --------------------------------------------------------------------------------------------------


@dataclass
class Segmenter:
    """A trained Attention U-Net with its metadata (``segmenter.json``)."""

    model: object
    meta: dict
    device: str = "cpu"

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def in_channels(self) -> int:
        return int(self.meta["architecture"]["in_channels"])


def predict_proba(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Foreground probabilities of model inputs, each at its own ``HxW`` (bilinear resize back)."""
    import torch

    out = []
    model = segmenter.model.eval()
    with torch.inference_mode(), cpu_threads(segmenter.device):
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            x = to_unet_input(chunk, segmenter.size, segmenter.in_channels).to(segmenter.device)
            probs = torch.sigmoid(model(x)).float().cpu().numpy()[:, 0]
            for im, p in zip(chunk, probs):
                h, w = np.asarray(im).shape[:2]
                out.append(p if (h, w) == p.shape else to_original(p, (h, w)))
    return out


def predict_mask(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """Boolean mask of one preprocessed model input (uint8 ``HxWx3``) at its ``HxW``: probability > 0.5.

    This is the app's contract (``liverscope.app.segmentation_outline``).
    """
    return predict_proba(segmenter, [image])[0] > 0.5


def save_segmenter(run_dir: str | Path, model, meta: dict) -> None:
    """``segmenter.safetensors`` (weights only) + ``segmenter.json``, each written atomically."""
    run_dir = Path(run_dir)
    save_weights(run_dir / SEGMENTER_WEIGHTS, model)
    atomic_write_json(run_dir / SEGMENTER_META, meta)


def load_segmenter(run_dir: str | Path, device: str = "cpu") -> Segmenter | None:
    """The run's segmenter, or ``None`` when the run has none (no ``segmenter.json``/``.safetensors``)."""
    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / SEGMENTER_META, run_dir / SEGMENTER_WEIGHTS
    if not meta_path.exists() or not weights_path.exists():
        return None
    meta = read_json(meta_path)
    device = resolve_device(device)
    model = unet_from_arch(meta["architecture"])
    model.load_state_dict(load_weights(weights_path))
    return Segmenter(model.to(device).eval(), meta, device)


# --------------------------------------------------------------------------------------------------
# predicting (fitting: liverscope.segment.training)
# --------------------------------------------------------------------------------------------------


def _predict_tensor(model, x, device: str, batch_size: int = 16) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append((torch.sigmoid(model(x[i : i + batch_size].to(device))) > 0.5).cpu().numpy()[:, 0])
    return np.concatenate(out) if out else np.zeros((0,) + tuple(x.shape[-2:]), bool)


def predict_masks_at(model, images: Sequence[np.ndarray], size: int, in_channels: int = 1, device: str = "cpu") -> np.ndarray:
    """Boolean masks (``size x size``) of a U-Net for uint8 images."""
    with cpu_threads(device):
        return _predict_tensor(model, to_unet_input(images, size, in_channels), device)


__all__ = [
    "LOSSES", "DEFAULT_CHANNELS", "cpu_threads", "build_unet", "unet_arch", "check_size", "to_unet_input", "resize_masks", "Segmenter",
    "predict_proba", "predict_mask", "save_segmenter", "load_segmenter", "predict_masks_at", "unet_from_arch",
]
