"""Fitting the Attention U-Net with Lightning, the engine that trains the classifier.

:class:`LitSegmenter` wraps the network (:func:`liverscope.segment.unet.build_unet`) with its loss, the
validation Dice and the epoch history; :func:`fit_unet` runs it through a ``lightning.Trainer`` built the
way :mod:`liverscope.training.lightning_module` builds the classifier's (accelerator from the device, precision
by :func:`~liverscope.training.lightning_module.training_precision`, Lightning's banners kept quiet): checkpoints
(``best.ckpt``, the best validation Dice, and ``last.ckpt``) in a folder of the caller's choice (the run's
``segmenter_checkpoints/`` for ``segment train``), early stopping on the validation Dice, and ``resume``
from ``last.ckpt``. Shuffling and flips are seeded per epoch (and batch), so an interrupted and resumed
fit sees the same batches as an uninterrupted one.

The losses are library code: binary cross-entropy with logits (the study's, torch) and MONAI's
``DiceCELoss`` for BCE + soft Dice (see :func:`segmentation_loss`). Trained on confident pixels only
(``fit_unet(..., weights=...)``, e.g. :func:`~liverscope.segment.rules.confident_targets`), the loss is
:func:`weighted_segmentation_loss`: the same terms over the pixels with a weight.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import dice
from liverscope.rundir import BEST_CKPT, LAST_CKPT
from liverscope.segment.config import FitConfig, fit_defaults
from liverscope.segment.encoder_unet import mask_and_score
from liverscope.segment.unet import (
    LOSSES,
    arch_choice,
    arch_of_weights,
    check_size,
    cpu_threads,
    normalisation,
    resize_masks,
    tensor_shapes,
    to_unet_input,
    unet_arch,
    unet_from_arch,
)
from liverscope.training.lightning_module import (
    load_best_weights,
    quiet_lightning,
    seed_run,
    training_precision,
)
from liverscope.utils import log, resolve_device

#: What ``segment train`` monitors for the best checkpoint and early stopping (higher is better).
MONITOR = "val_dice"
_HISTORY_KEY = "liverscope_segmenter_history"
_WEIGHTS_KEY = "liverscope_segmenter_initial_weights"
#: ``info["initial_weights"]`` of a network that starts without pretrained weights.
RANDOM_INIT = "random initialisation"
#: Weight of the image-level head's loss (BCE: does the image hold any target pixel?) beside the mask loss.
IMAGE_HEAD_WEIGHT = 0.5


def segmentation_loss(kind: str):
    """The U-Net's loss on one-channel logits and a ``{0, 1}`` float target of the same shape.

    ``bce`` is torch's ``BCEWithLogitsLoss`` (the study's). ``bce+dice`` is MONAI's ``DiceCELoss`` set up
    for a binary mask: ``sigmoid=True`` (one output channel: a softmax over one channel is constantly 1
    and its Dice would not depend on the network), ``include_background=True`` (with one channel it is the
    foreground; ``False`` would be ignored with a warning), the default smoothing ``smooth_nr =
    smooth_dr = 1e-5`` and per-image Dice (``batch=False``) averaged, weights ``lambda_ce = lambda_dice =
    1``. With one channel its cross-entropy term is ``BCEWithLogitsLoss``, so it equals the BCE + MONAI
    ``DiceLoss(sigmoid=True)`` sum liverscope used before (tests/test_segment.py keeps that formula).
    """
    if kind == "bce":
        return torch.nn.BCEWithLogitsLoss()
    if kind == "bce+dice":
        from monai.losses import DiceCELoss

        return DiceCELoss(
            sigmoid=True,
            include_background=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            batch=False,
            lambda_ce=1.0,
            lambda_dice=1.0,
        )
    raise LiverscopeError(f"--loss {kind}: expected one of {', '.join(LOSSES)}")


def weighted_segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "bce"
) -> torch.Tensor:
    """:func:`segmentation_loss` over the pixels that count: ``weight`` 0 ignores a pixel, 1 counts it.

    ``bce``: the per-pixel BCE with logits averaged with the pixel weights (``sum(w * bce) / sum(w)``).
    ``bce+dice`` adds the soft Dice of each image over its weighted pixels,
    ``1 - (2 sum(w p t) + 1e-5) / (sum(w p) + sum(w t) + 1e-5)`` with ``p = sigmoid(logits)``, averaged
    over images. With every weight 1 both equal :func:`segmentation_loss` (tested). Written out because
    MONAI's ``DiceCELoss`` takes no per-pixel weight (only per-class ones) and torch's
    ``BCEWithLogitsLoss(weight=...)`` still divides by every pixel, ignored or not.

    Args:
        logits: ``N x 1 x H x W`` network output.
        target: ``{0, 1}`` float, same shape.
        weight: ``>= 0`` float, same shape (a batch without any weighted pixel gives 0).
        kind: ``bce`` or ``bce+dice``.
    """
    if kind not in LOSSES:
        raise LiverscopeError(f"--loss {kind}: expected one of {', '.join(LOSSES)}")
    weight = weight.to(logits.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (weight * bce).sum() / weight.sum().clamp(min=torch.finfo(logits.dtype).tiny)
    if kind == "bce+dice":
        p, dims = torch.sigmoid(logits), tuple(range(2, logits.ndim))
        soft_dice = (2 * (weight * p * target).sum(dims) + 1e-5) / (
            (weight * p).sum(dims) + (weight * target).sum(dims) + 1e-5
        )
        loss = loss + (1 - soft_dice).mean()
    return loss


def _flip_generator(seed: int, epoch: int, batch_idx: int) -> torch.Generator:
    """A generator for one batch's random flips, fixed by (seed, epoch, batch): a resumed fit draws the
    same flips as an uninterrupted one (Lightning restores the epoch, not torch's random state)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 100_003 + int(batch_idx))


class LitSegmenter(L.LightningModule):
    """The Attention U-Net with its loss and optimiser; logs ``train_loss`` and ``val_dice``.

    ``val_dice`` is the mean over validation images of the Dice of ``sigmoid(logits) > 0.5`` against the
    target (:func:`liverscope.evaluate.masks.dice`: two empty masks agree, Dice 1). :attr:`history` holds
    one row per epoch (``epoch``, ``loss``, ``val_dice``) and travels in the checkpoints, so a resumed fit
    continues it; so does ``initial_weights`` (what the fit's first session started from:
    :func:`check_resumable` reads it back). ``settings`` gives the loss (``None``: ``bce``), the learning
    rate, the flips and their seed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        settings: FitConfig | None = None,
        verbose: bool = False,
        initial_weights: str | None = None,
    ):
        super().__init__()
        fit = fit_defaults(settings or FitConfig())
        self.model = model
        self.initial_weights = initial_weights or initial_weights_of(model)
        self.criterion, self.loss_kind = segmentation_loss(fit.loss), fit.loss
        self.lr, self.flip, self.seed = float(fit.lr), bool(fit.flip), int(fit.seed)
        self.verbose = bool(verbose)
        self.history: list[dict] = []
        self._val_dice: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mask_and_score(self.model(x))[0]

    def training_step(self, batch, batch_idx):
        x, y, *w = batch  # (image, mask) or (image, mask, pixel weights)
        if self.flip:  # random horizontal flips of (image, mask[, weights]) triples
            f = torch.rand(len(x), generator=_flip_generator(self.seed, self.current_epoch, batch_idx)) < 0.5
            f = f.to(x.device)[:, None, None, None]
            x, y, *w = (torch.where(f, t.flip(-1), t) for t in (x, y, *w))
        logits, score = mask_and_score(self.model(x))
        loss = weighted_segmentation_loss(logits, y, w[0], self.loss_kind) if w else self.criterion(logits, y)
        if score is not None:  # the image-level head learns whether the image holds anything to outline
            present = (y.flatten(1).amax(1) > 0.5).to(score.dtype)
            loss = loss + IMAGE_HEAD_WEIGHT * torch.nn.functional.binary_cross_entropy_with_logits(
                score[:, 0], present
            )
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, *w = batch
        pred = (torch.sigmoid(mask_and_score(self.model(x))[0].float()) > 0.5).cpu().numpy()[:, 0]
        truth = y[:, 0].cpu().numpy() > 0.5
        counted = (
            [None] * len(pred) if not w else list(w[0][:, 0].cpu().numpy() > 0)
        )  # Dice over the weighted pixels
        self._val_dice.extend(dice(p, t, r) for p, t, r in zip(pred, truth, counted))

    def on_validation_epoch_end(self):
        if self._val_dice:
            self.log(MONITOR, float(np.mean(self._val_dice)))
            self._val_dice.clear()

    def on_train_epoch_end(self):
        m = self.trainer.callback_metrics
        row = {
            "epoch": self.current_epoch + 1,
            "loss": float(m["train_loss"]) if "train_loss" in m else float("nan"),
            "val_dice": float(m[MONITOR]) if MONITOR in m and self.trainer.num_val_batches else float("nan"),
        }
        self.history = [h for h in self.history if h["epoch"] != row["epoch"]] + [row]
        if self.verbose:
            log(f"U-Net epoch {row['epoch']}: loss {row['loss']:.4f}, val Dice {row['val_dice']:.3f}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[_HISTORY_KEY] = list(self.history)
        checkpoint[_WEIGHTS_KEY] = self.initial_weights

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get(_HISTORY_KEY, []))

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)


def _loaders(
    x: torch.Tensor,
    y: torch.Tensor,
    tr: np.ndarray,
    va: np.ndarray,
    batch_size: int,
    seed: int,
    w: torch.Tensor | None = None,
) -> tuple[DataLoader, DataLoader | None]:
    extra = [] if w is None else [w]
    train = TensorDataset(x[tr], y[tr], *(t[tr] for t in extra))
    # torch's DistributedSampler with one replica is a shuffle seeded by (seed, epoch): Lightning sets the
    # epoch (restored on resume), so a resumed fit shuffles as an uninterrupted one would
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=int(seed))
    # BatchNorm needs two samples: a last batch of one image is dropped (unless there is only one image)
    drop_last = len(tr) > 1 and len(tr) % batch_size == 1
    train_dl = DataLoader(train, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    val_dl = (
        DataLoader(TensorDataset(x[va], y[va], *(t[va] for t in extra)), batch_size=16, shuffle=False)
        if len(va)
        else None
    )
    return train_dl, val_dl


def _checked_inputs(
    images: Sequence[np.ndarray],
    masks: np.ndarray,
    split: Sequence[str],
    weights: np.ndarray | None,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(split, masks, weights)`` as arrays, or a LiverscopeError for inputs that do not fit together."""
    split = np.asarray(split).astype(str)
    masks = np.asarray(masks, bool)
    if len(images) != len(masks) or len(images) != len(split):
        raise LiverscopeError(
            f"{len(images)} images, {len(masks)} masks and {len(split)} split labels: they must match"
        )
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != masks.shape or not np.isfinite(weights).all() or (weights < 0).any():
            raise LiverscopeError(
                f"pixel weights must be finite, >= 0 and shaped like the masks {masks.shape}, "
                f"got {weights.shape}"
            )
    if int(batch_size) < 1:
        raise LiverscopeError(f"batch size must be at least 1, got {batch_size}")
    return split, masks, weights


def _tensors(
    images: Sequence[np.ndarray], masks: np.ndarray, weights: np.ndarray | None, size: int, arch: dict
):
    """Inputs, targets and pixel weights as the network takes them (``N x C x size x size``)."""
    x_all = to_unet_input(images, size, int(arch["in_channels"]), normalisation(arch))
    y_all = torch.from_numpy(resize_masks(masks, size)[:, None].astype(np.float32))
    w_all = None
    if (
        weights is not None
    ):  # nearest neighbour, as resize_masks resizes the targets: each weight stays on its pixel
        w_all = torch.from_numpy(
            np.stack(
                [
                    w
                    if w.shape == (size, size)
                    else cv2.resize(w, (size, size), interpolation=cv2.INTER_NEAREST)
                    for w in weights
                ]
            )[:, None]
        )
    return x_all, y_all, w_all


def _trainer(
    fit: FitConfig, device: str, ckpt_dir: Path, validated: bool, progress: bool
) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning's Trainer as the classifier's is built: checkpoints (best validation Dice, last),
    early stopping."""
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=MONITOR if validated else None,
        mode="max",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks: list = [ckpt]
    if fit.patience and validated:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", patience=int(fit.patience), strict=False))
    quiet_lightning()
    trainer = L.Trainer(
        max_epochs=int(fit.epochs),
        max_steps=int(fit.max_steps) if fit.max_steps else -1,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=[int(device.split(":", 1)[1])]
        if device.startswith("cuda:")
        else 1,  # --device cuda:1 trains on that GPU
        precision=training_precision(fit.precision, device),
        callbacks=callbacks,
        logger=False,
        default_root_dir=str(ckpt_dir),
        enable_progress_bar=bool(progress),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    return trainer, ckpt


def _checkpoints_ready(ckpt_dir: Path, resume: bool) -> Path:
    """``ckpt_dir/last.ckpt``, which ``resume`` needs; a fresh fit removes an earlier fit's checkpoints
    from the folder (they are not ours to pick from)."""
    last = ckpt_dir / LAST_CKPT
    if resume and not last.exists():
        raise LiverscopeError(f"{last}: nothing to resume from; train without resume first")
    if not resume:
        for old in (BEST_CKPT, LAST_CKPT):
            (ckpt_dir / old).unlink(missing_ok=True)
    return last


def initial_weights_of(model: torch.nn.Module) -> str:
    """Where a freshly built network's weights come from: its ImageNet encoder's source, else random
    initialisation."""
    return getattr(model, "weights_source", RANDOM_INIT)


def _not_this_network(last: Path, theirs: dict, arch: dict) -> str:
    """What to tell a user whose ``last.ckpt`` holds another network than ``arch``."""
    was, now = arch_of_weights(theirs), arch_choice(arch)
    again = "or train afresh without --resume (the checkpoints are then replaced)"
    if was and was != now:
        return (
            f"{last}: the interrupted fit trained the {was} network, not {now}; resume it with "
            f"--arch {was} (network.arch: {was}), {again}"
        )
    return (
        f"{last}: the checkpoint does not hold the network of these settings ({now}); resume with the "
        f"settings of the interrupted fit (--arch, --channels, --in-channels), {again}"
    )


def check_resumable(checkpoint_dir: str | Path, arch: dict, model: torch.nn.Module | None = None) -> str:
    """Before a resumed fit: ``checkpoint_dir/last.ckpt`` (tensors only, never unpickled) must hold the
    network of ``arch`` (``model``: that network, built already). Returns the weights the interrupted
    fit started from, as its checkpoint records them (one written before liverscope recorded them: what
    a fresh ``arch`` starts from, its ImageNet encoder or random initialisation).

    Raises:
        LiverscopeError: no ``last.ckpt``, or one of another network (names the checkpoint's
            architecture and the ``--arch`` to resume with).
    """
    last = _checkpoints_ready(Path(checkpoint_dir), resume=True)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    theirs = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model = model if model is not None else unet_from_arch(arch)
    if tensor_shapes(theirs) != tensor_shapes(model.state_dict()):
        raise LiverscopeError(_not_this_network(last, theirs, arch))
    if _WEIGHTS_KEY in ckpt:
        return str(ckpt[_WEIGHTS_KEY])
    return f"ImageNet ({arch['encoder']})" if arch.get("name") == "smp.Unet" else RANDOM_INIT


def _best(model, lit: LitSegmenter, ckpt: ModelCheckpoint) -> tuple[list[dict], int, float | None]:
    """``(history, best epoch, its validation Dice)``; the best epoch's weights loaded into ``model``."""
    history = list(lit.history)
    scored = [h for h in history if np.isfinite(h["val_dice"])]
    if scored and ckpt.best_model_path:
        load_best_weights(model, ckpt.best_model_path)
        best = max(scored, key=lambda h: h["val_dice"])  # the first of equals, as the checkpoint keeps it
        return history, int(best["epoch"]), float(best["val_dice"])
    return (
        history,
        (int(history[-1]["epoch"]) if history else 0),
        None,
    )  # without validation images: the last epoch


def _fit_inputs(
    images: Sequence[np.ndarray],
    masks: np.ndarray,
    split: Sequence[str],
    weights: np.ndarray | None,
    fit: FitConfig,
    arch: dict | None,
) -> tuple[np.ndarray, np.ndarray | None, int, dict, np.ndarray, np.ndarray]:
    """``(masks, weights, size, arch, train indices, val indices)`` for :func:`fit_unet`, checked: inputs
    that fit together, a size the U-Net can take, at least one training image."""
    split, masks, weights = _checked_inputs(images, masks, split, weights, fit.batch_size)
    size = int(fit.size or np.asarray(images[0]).shape[0])
    arch = arch or unet_arch()
    check_size(size, arch["strides"])
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(tr) == 0:
        raise LiverscopeError("no training images for the U-Net (the split left none)")
    return masks, weights, size, arch, tr, va


def _run_fit(
    model: torch.nn.Module,
    lit: LitSegmenter,
    loaders: tuple[DataLoader, DataLoader | None],
    fit: FitConfig,
    device: str,
    checkpoint_dir: str | Path | None,
    *,
    resume: bool,
    progress: bool,
) -> dict:
    """Lightning's fit of ``lit`` with checkpoints in ``checkpoint_dir`` (default: a temporary folder), the
    best epoch's weights loaded into ``model`` afterwards; returns ``best_epoch``, ``best_val_dice``,
    ``epochs_run``, ``steps``, ``history`` and ``seconds``."""
    train_dl, val_dl = loaders
    with contextlib.ExitStack() as stack:
        temporary = None if checkpoint_dir else tempfile.TemporaryDirectory(prefix="unet-ckpt-")
        ckpt_dir = Path(checkpoint_dir or stack.enter_context(temporary))
        last = _checkpoints_ready(ckpt_dir, resume)
        trainer, ckpt = _trainer(fit, device, ckpt_dir, val_dl is not None, progress)
        t0 = time.perf_counter()
        with cpu_threads(device), warnings.catch_warnings():
            # resuming writes into the folder that holds last.ckpt: Lightning's "not empty" warning is expected
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            trainer.fit(
                lit,
                train_dataloaders=train_dl,
                val_dataloaders=val_dl,
                ckpt_path=str(last) if resume else None,
            )
        seconds = time.perf_counter() - t0
        history, best_epoch, best_dice = _best(model, lit, ckpt)
    return {
        "best_epoch": best_epoch,
        "best_val_dice": best_dice,
        "epochs_run": len(history),
        "steps": int(trainer.global_step),
        "history": history,
        "seconds": round(seconds, 1),
    }


def fit_unet(
    images: Sequence[np.ndarray],
    masks: np.ndarray,
    split: Sequence[str],
    settings: FitConfig | None = None,
    *,
    arch: dict | None = None,
    weights: np.ndarray | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    verbose: bool = False,
    progress: bool = False,
) -> tuple[object, dict]:
    """Train a U-Net on ``(image, mask)`` pairs with Lightning; the weights of the best validation Dice
    are kept. On CPU it runs with half the cores (see :func:`~liverscope.segment.unet.cpu_threads`).

    Args:
        images: uint8 ``HxWx3`` images (resized to ``settings.size``).
        masks: bool ``N x H x W`` targets.
        split: ``train`` / ``val`` / ``test`` per image (``test`` images are not touched).
        settings: the fit (:class:`~liverscope.segment.config.FitConfig`): ``size`` (default: the images'
            size; a multiple of 2**levels), ``loss`` (``bce``, the study's, by default, or ``bce+dice``:
            MONAI's ``DiceCELoss``), ``epochs`` (default 30; with ``resume`` the total, finished epochs
            included), ``batch_size``, ``lr`` (Adam), ``seed`` (initialisation, shuffling and flips),
            ``device`` (``auto``, ``cpu``, ``cuda``: one device, as the classifier trains), ``precision``
            (``auto`` as the classifier: :func:`~liverscope.training.lightning_module.training_precision`),
            ``patience`` (stop after this many epochs without a better validation Dice; ``None``: never),
            ``flip`` (random horizontal flips), ``max_steps`` (optimiser steps, quick checks).
        arch: the architecture record (:func:`~liverscope.segment.unet.make_arch`); default the seed
            study's Attention U-Net (grey, channels 8, 16, 32, 64). An encoder U-Net starts from its
            ImageNet weights.
        weights: float ``N x H x W`` per-pixel weights (0: ignore the pixel, 1: count it; e.g. from
            :func:`~liverscope.segment.rules.confident_targets`), resized with the masks (nearest
            neighbour); the loss is :func:`weighted_segmentation_loss` and the validation Dice counts
            the weighted pixels only. ``None``: every pixel counts (:func:`segmentation_loss`).
        checkpoint_dir: where Lightning writes ``best.ckpt`` and ``last.ckpt`` (default: a temporary folder,
            removed afterwards).
        resume: continue from ``checkpoint_dir/last.ckpt`` (same data, split and settings; checked by
            :func:`check_resumable`, and ``info["initial_weights"]`` is then the interrupted fit's).
        verbose: log every epoch.
        progress: Lightning's progress bar.

    Returns:
        ``(model in eval mode with the best weights, on device, info)``; ``info`` has ``best_epoch``,
        ``best_val_dice``, ``epochs_run``, ``steps``, ``history`` (per epoch: loss, val Dice), ``seconds``,
        ``initial_weights`` (where the fit started: an ImageNet encoder's source, or random initialisation).

    Raises:
        LiverscopeError: mismatched inputs, no training images, a size the U-Net cannot take, or
            ``resume`` without a checkpoint or from one of another network.
    """
    fit = fit_defaults(settings or FitConfig())
    masks, weights, size, arch, tr, va = _fit_inputs(images, masks, split, weights, fit, arch)
    if resume and checkpoint_dir is None:
        raise LiverscopeError("resume needs the checkpoint folder of the interrupted fit (checkpoint_dir)")
    device = resolve_device(fit.device)
    seed_run(fit.seed)
    model = unet_from_arch(arch, pretrained=not resume)  # resuming: the checkpoint holds the weights
    first = check_resumable(checkpoint_dir, arch, model) if resume else None
    lit = LitSegmenter(model, fit, verbose, initial_weights=first)
    x_all, y_all, w_all = _tensors(images, masks, weights, size, arch)
    loaders = _loaders(x_all, y_all, tr, va, int(fit.batch_size), fit.seed, w_all)
    run = _run_fit(model, lit, loaders, fit, device, checkpoint_dir, resume=resume, progress=progress)
    model.to(device).eval()
    info = {
        **run,
        "architecture": arch,
        "size": size,
        "loss": fit.loss,
        "lr": fit.lr,
        "batch_size": fit.batch_size,
        "seed": fit.seed,
        "engine": "lightning",
        "resumed": bool(resume),
        "pixel_weights": weights is not None,
        "initial_weights": lit.initial_weights,
    }
    return model, info


__all__ = [
    "MONITOR",
    "IMAGE_HEAD_WEIGHT",
    "segmentation_loss",
    "weighted_segmentation_loss",
    "LitSegmenter",
    "check_resumable",
    "fit_unet",
]
