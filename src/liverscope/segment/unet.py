"""The segmenters' networks (the Attention U-Net; encoder U-Nets from :mod:`~liverscope.segment.encoder_unet`):
building, predicting, and the run's saved segmenter.

The network is MONAI's 2-D Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for
the Pancreas", MIDL 2018) with one output channel, trained (:mod:`liverscope.segment.training`, Lightning)
with binary cross-entropy (the study's loss) or BCE + soft Dice (MONAI's ``DiceCELoss``).

A run directory holds one segmenter per *target* (what it outlines: ``lesion``, ``liver``, ...): weights
(safetensors, never pickled) and a ``.json`` (target, architecture, input size, its own preprocessing,
split, loss, scores). The ``lesion`` target keeps the names runs had before targets existed
(``segmenter.safetensors`` / ``segmenter.json``), so old runs load unchanged; another target T is
``segmenter-T.safetensors`` / ``segmenter-T.json`` (:func:`segmenter_files` names every file of a target).
The app calls :func:`segmenters`, :func:`predict_mask` and :func:`target_colours`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from liverscope.data.geometry import to_original
from liverscope.data.io import to_grey
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError, UsageError
from liverscope.rundir import (
    SEGMENTER_META,
    SEGMENTER_TARGET,
    TARGET_NAME,
    check_target,
    load_weights,
    save_weights,
    segmenter_files,
)
from liverscope.segment.encoder_unet import ENCODERS, build_encoder_unet, encoder_unet_arch, mask_and_score
from liverscope.segment.gate import apply_gate
from liverscope.segment.nnunet_network import NNUNET_ARCH, build_nnunet
from liverscope.utils import (
    atomic_write_json,
    default_model_threads,
    read_json,
    resolve_device,
    torch_threads,
)

LOSSES = ("bce", "bce+dice")
#: ``segment train --arch``: the seed study's Attention U-Net, or a U-Net on an ImageNet encoder (:mod:`~liverscope.segment.encoder_unet`).
ARCHS = ("attention-unet",) + tuple(ENCODERS)
#: The default of ``segment train --masks`` (expert targets); CAM pseudo-masks keep the Attention U-Net.
DEFAULT_MASKS_ARCH = "unet-lite0"
#: ``segment train`` defaults on expert masks (measured best: docs/benchmarks.md, issue 22) and on CAM pseudo-masks.
MASKS_DEFAULTS = {"arch": DEFAULT_MASKS_ARCH, "loss": "bce+dice", "epochs": 30, "size": 192}
PSEUDO_DEFAULTS = {"arch": "attention-unet", "loss": "bce", "epochs": 30, "size": None}
#: Input scaling of the Attention U-Net (and of every segmenter saved before encoder U-Nets): (x/255 - mean) / std.
ATTENTION_NORMALISATION = {"mean": 0.5, "std": 0.25}
#: U-Net channels per level: small enough to train on a laptop CPU in minutes at 128-160 px.
DEFAULT_CHANNELS = (8, 16, 32, 64)
#: The target of ``segment train`` without ``--target``; its files keep the names of runs made before targets.
DEFAULT_TARGET = SEGMENTER_TARGET
#: Outline colours (RGB, and their name for legends) of the usual targets; others take :data:`PALETTE` in name order.
TARGET_COLOURS = {
    "lesion": ((255, 48, 48), "red"),
    "liver": ((0, 255, 0), "green"),
    "sector": ((64, 160, 255), "blue"),
}
PALETTE = (
    ((255, 210, 0), "yellow"),
    ((255, 0, 255), "magenta"),
    ((0, 230, 230), "cyan"),
    ((255, 140, 0), "orange"),
    ((255, 255, 255), "white"),
)


def cpu_threads(device: str = "cpu"):
    """On CPU, compute with half the cores (:func:`liverscope.utils.default_model_threads`): on a CPU
    busy with anything else a full OpenMP team stalls at its barriers — measured here, 8 epochs of the
    phantom U-Net took 12-65 s with 2 threads and 0.7-3.5 s with 1 on a busy 2-core machine."""
    return (
        torch_threads(default_model_threads()) if str(device).startswith("cpu") else contextlib.nullcontext()
    )


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------


def build_unet(
    in_channels: int = 1,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    strides: Sequence[int] | None = None,
    dropout: float = 0.0,
):
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
    return AttentionUnet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        channels=channels,
        strides=strides,
        dropout=dropout,
    )


def unet_arch(
    in_channels: int = 1,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    strides: Sequence[int] | None = None,
    dropout: float = 0.0,
) -> dict:
    """The architecture record of ``segmenter.json`` (what :func:`build_unet` is called with)."""
    channels = [int(c) for c in channels]
    return {
        "name": "monai.networks.nets.AttentionUnet",
        "spatial_dims": 2,
        "in_channels": int(in_channels),
        "out_channels": 1,
        "channels": channels,
        "strides": [int(s) for s in (strides or (2,) * (len(channels) - 1))],
        "dropout": float(dropout),
    }


def make_arch(name: str, in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS) -> dict:
    """The architecture record of an ``--arch`` name (:data:`ARCHS`); ``in_channels`` and ``channels``
    shape the Attention U-Net only (an encoder U-Net takes RGB at its backbone's widths)."""
    if name == "attention-unet":
        return unet_arch(in_channels, channels)
    if name in ENCODERS:
        return encoder_unet_arch(name)
    raise UsageError(f"--arch {name}: expected one of {', '.join(ARCHS)}")


def segmenter_defaults(
    masks: bool, arch: str | None = None, loss: str | None = None, epochs: int | None = None
) -> tuple[str, str, int]:
    """``(arch, loss, epochs)`` with the defaults of training on expert masks or on CAM pseudo-masks
    filled in where ``None``."""
    d = MASKS_DEFAULTS if masks else PSEUDO_DEFAULTS
    return arch or d["arch"], loss or d["loss"], int(epochs or d["epochs"])


def unet_from_arch(arch: dict, pretrained: bool = False):
    """The network of an architecture record (:func:`make_arch`, ``segmenter.json``); ``pretrained``
    loads an encoder U-Net's ImageNet weights (a saved segmenter's come from its own file)."""
    if arch.get("name") == "smp.Unet":
        return build_encoder_unet(arch, pretrained)
    if arch.get("name") == NNUNET_ARCH:  # trained by nnU-Net (segment train --engine nnunet)
        return build_nnunet(arch)
    return build_unet(arch["in_channels"], arch["channels"], arch["strides"], arch.get("dropout", 0.0))


def arch_choice(arch: dict) -> str | None:
    """The ``--arch`` name (:data:`ARCHS`) of an architecture record; ``None`` for nnU-Net's."""
    if arch.get("name") == "smp.Unet":
        return next((name for name, timm in ENCODERS.items() if timm == arch.get("encoder")), None)
    return "attention-unet" if arch.get("name") == unet_arch()["name"] else None


def tensor_shapes(state: dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Name → shape of the tensors of a state dict whose names start with ``prefix``."""
    return {k: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def arch_of_weights(state: dict) -> str | None:
    """The ``--arch`` name of the network whose ``state_dict`` ``state`` is: the encoder U-Net whose
    encoder has exactly these tensors (names and shapes), the Attention U-Net by its attention gates
    (whatever its channels); ``None`` when neither."""
    encoder = tensor_shapes(state, "encoder.")
    for name in ENCODERS if encoder else ():
        if encoder == tensor_shapes(unet_from_arch(make_arch(name)).state_dict(), "encoder."):
            return name
    return "attention-unet" if any(".attention.W_g." in k for k in state) else None


def normalisation(arch: dict) -> dict:
    """``{"mean", "std"}`` of the input scaling (x/255 - mean) / std an architecture record was trained with."""
    return dict(arch.get("normalisation") or ATTENTION_NORMALISATION)


def check_size(size: int, strides: Sequence[int]) -> None:
    """Raise a clear error when ``size`` does not fit the U-Net's down-sampling."""
    step = int(np.prod(strides))
    if size % step or size < 2 * step:
        raise LiverscopeError(
            f"U-Net input size {size} must be a multiple of {step} (the product of the strides) and at least {2 * step}"
        )


def to_unet_input(images: Sequence[np.ndarray], size: int, in_channels: int = 1, norm: dict | None = None):
    """uint8 ``HxWx3`` images → float tensor ``N x C x size x size``, (x/255 - mean) / std (``norm``;
    default the Attention U-Net's, about [-2, 2])."""
    import torch

    arrs = []
    for im in images:
        im = np.asarray(im)
        if im.shape[0] != size or im.shape[1] != size:
            interp = cv2.INTER_AREA if min(im.shape[:2]) > size else cv2.INTER_LINEAR
            im = cv2.resize(im, (size, size), interpolation=interp)
        a = (
            to_grey(im)[None]
            if in_channels == 1
            else np.moveaxis(im if im.ndim == 3 else np.repeat(im[..., None], 3, 2), 2, 0)
        )
        arrs.append(a)
    x = torch.from_numpy(np.stack(arrs).astype(np.float32))
    norm = norm or ATTENTION_NORMALISATION
    return (x / 255.0 - float(norm["mean"])) / float(norm["std"])


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Boolean ``N x H x W`` masks → ``N x size x size`` (nearest neighbour)."""
    if masks.shape[1] == size and masks.shape[2] == size:
        return masks.astype(bool)
    return np.stack([to_original(np.asarray(m, bool), (size, size)) for m in masks])


# --------------------------------------------------------------------------------------------------
# the saved segmenter
# --------------------------------------------------------------------------------------------------


def segmenter_targets(run_dir: str | Path) -> list[str]:
    """The targets a run holds a segmenter for (weights and ``.json`` both present): ``lesion`` first, then by name."""
    run_dir = Path(run_dir)
    stem = SEGMENTER_META.split(".")[0] + "-"  # another target T: segmenter-T.json
    named = sorted(p.stem[len(stem) :] for p in run_dir.glob(f"{stem}*.json"))
    names = [DEFAULT_TARGET] + [t for t in named if t != DEFAULT_TARGET and TARGET_NAME.fullmatch(t)]
    return [t for t in names if all((run_dir / segmenter_files(t)[k]).is_file() for k in ("weights", "meta"))]


def target_colours(targets: Sequence[str]) -> dict[str, tuple[tuple[int, int, int], str]]:
    """Outline colour (RGB) and its name per target: :data:`TARGET_COLOURS` for the usual targets
    (lesion red, liver green, sector blue), the others :data:`PALETTE` in turn (name order); in the order given."""
    spare = itertools.cycle(PALETTE)
    others = {t: next(spare) for t in sorted(set(targets) - set(TARGET_COLOURS))}
    return {t: TARGET_COLOURS.get(t) or others[t] for t in targets}


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

    @property
    def norm(self) -> dict:
        return normalisation(self.meta["architecture"])

    @property
    def target(self) -> str:
        """What it outlines (``lesion`` for a segmenter saved before targets)."""
        return str(self.meta.get("target") or DEFAULT_TARGET)

    @property
    def preprocessing(self) -> Preprocessing | None:
        """The preprocessing its inputs were made with (``None`` when the ``.json`` records none)."""
        pp = self.meta.get("preprocessing")
        return Preprocessing.from_dict(pp) if pp else None


def predict_proba(
    segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 16, scores: bool = False
):
    """Foreground probabilities of model inputs, each at its own ``HxW`` (bilinear resize back); with
    ``scores``, ``(maps, image scores)``: the image-level head's probability per image (``None`` each
    for a segmenter without one)."""
    with cpu_threads(segmenter.device):
        x = to_unet_input(images, segmenter.size, segmenter.in_channels, segmenter.norm)
        maps, image = _predict_tensor(segmenter.model, x, segmenter.device, batch_size)
    out = []
    for im, p in zip(images, maps):
        h, w = np.asarray(im).shape[:2]
        out.append(p if (h, w) == p.shape else to_original(p, (h, w)))
    if not scores:
        return out
    return out, [None] * len(out) if image is None else [float(v) for v in image]


def segment_images(segmenter: Segmenter, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """``(masks, suppressed)``: boolean masks of preprocessed model inputs (uint8 ``HxWx3``, each at its
    ``HxW``) through the segmenter's gate (:func:`gated_masks`), and how many raw masks the gate emptied.
    ``segment predict``, the app and the report all draw outlines through this one function."""
    probs, image = predict_proba(segmenter, images, scores=True)
    return gated_masks(segmenter, probs, image)


def predict_mask(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """Boolean mask of one preprocessed model input (uint8 ``HxWx3``) at its ``HxW``: probability > 0.5,
    through the segmenter's lesion gate when it has one (:func:`gated_masks`).

    This is the app's contract (``liverscope.ui.app.segmentation_outline``).
    """
    return segment_images(segmenter, [image])[0][0]


def gated_masks(
    segmenter: Segmenter, probs: Sequence[np.ndarray], scores: Sequence[float | None] | None = None
) -> tuple[list[np.ndarray], int]:
    """``(masks, suppressed)``: the segmenter's probability maps through its gate (``segmenter.json``
    ``gate``: :func:`~liverscope.segment.gate.apply_gate`; none for a segmenter saved without one), with
    the image-level head's ``scores`` where it has one, and how many non-empty raw masks the gate emptied."""
    scores = [None] * len(probs) if scores is None else list(scores)
    out = [apply_gate(p, segmenter.meta.get("gate"), s) for p, s in zip(probs, scores)]
    return [m for m, _ in out], sum(s for _, s in out)


def save_segmenter(run_dir: str | Path, model, meta: dict, target: str = DEFAULT_TARGET) -> None:
    """The weights (safetensors, weights only) and ``.json`` of ``target``'s segmenter (:func:`segmenter_files`),
    each written atomically; the ``.json`` records ``target``."""
    run_dir, files = Path(run_dir), segmenter_files(target)
    save_weights(run_dir / files["weights"], model)
    atomic_write_json(run_dir / files["meta"], {**meta, "target": target})


def load_segmenter(
    run_dir: str | Path, device: str = "cpu", target: str = DEFAULT_TARGET
) -> Segmenter | None:
    """The run's segmenter of ``target``, or ``None`` when the run has none (no ``.json`` / ``.safetensors``).

    A segmenter saved before targets existed (``segmenter.json`` without a ``target``) is the ``lesion`` one.
    """
    run_dir, files = Path(run_dir), segmenter_files(target)
    meta_path, weights_path = run_dir / files["meta"], run_dir / files["weights"]
    if not meta_path.exists() or not weights_path.exists():
        return None
    meta = read_json(meta_path)
    meta.setdefault("target", target)
    device = resolve_device(device)
    model = unet_from_arch(meta["architecture"])
    model.load_state_dict(load_weights(weights_path))
    return Segmenter(model.to(device).eval(), meta, device)


def segmenters(run_dir: str | Path, device: str = "cpu") -> dict[str, Segmenter]:
    """Every segmenter a run holds, by target (``lesion`` first; ``{}`` for a run without one)."""
    return {t: load_segmenter(run_dir, device, t) for t in segmenter_targets(run_dir)}


# --------------------------------------------------------------------------------------------------
# predicting (fitting: liverscope.segment.training)
# --------------------------------------------------------------------------------------------------


def _predict_tensor(model, x, device: str, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N x H x W foreground probabilities, N image-level probabilities or None)`` of a network."""
    import torch

    model.eval()
    maps, image = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            logits, score = mask_and_score(model(x[i : i + batch_size].to(device)))
            maps.append(torch.sigmoid(logits).float().cpu().numpy()[:, 0])
            if score is not None:
                image.append(torch.sigmoid(score).float().cpu().numpy()[:, 0])
    maps_arr = np.concatenate(maps) if maps else np.zeros((0,) + tuple(x.shape[-2:]), np.float32)
    return maps_arr, (np.concatenate(image) if image else None)


def predict_probs_at(
    model,
    images: Sequence[np.ndarray],
    size: int,
    in_channels: int = 1,
    device: str = "cpu",
    norm: dict | None = None,
    scores: bool = False,
):
    """Foreground probabilities (``N x size x size``) of a U-Net for uint8 images; with ``scores``,
    ``(maps, image-level probabilities or None)``."""
    with cpu_threads(device):
        maps, image = _predict_tensor(model, to_unet_input(images, size, in_channels, norm), device)
    return (maps, image) if scores else maps


def predict_masks_at(
    model,
    images: Sequence[np.ndarray],
    size: int,
    in_channels: int = 1,
    device: str = "cpu",
    norm: dict | None = None,
) -> np.ndarray:
    """Boolean masks (``size x size``, probability > 0.5, no gate) of a U-Net for uint8 images."""
    return predict_probs_at(model, images, size, in_channels, device, norm) > 0.5


__all__ = [
    "LOSSES",
    "ARCHS",
    "DEFAULT_MASKS_ARCH",
    "ATTENTION_NORMALISATION",
    "make_arch",
    "normalisation",
    "MASKS_DEFAULTS",
    "PSEUDO_DEFAULTS",
    "segmenter_defaults",
    "DEFAULT_CHANNELS",
    "DEFAULT_TARGET",
    "TARGET_NAME",
    "TARGET_COLOURS",
    "PALETTE",
    "cpu_threads",
    "build_unet",
    "unet_arch",
    "check_size",
    "to_unet_input",
    "resize_masks",
    "check_target",
    "segmenter_files",
    "segmenter_targets",
    "target_colours",
    "Segmenter",
    "predict_proba",
    "predict_mask",
    "segment_images",
    "gated_masks",
    "predict_probs_at",
    "save_segmenter",
    "load_segmenter",
    "segmenters",
    "predict_masks_at",
    "unet_from_arch",
    "arch_choice",
    "arch_of_weights",
    "tensor_shapes",
]
