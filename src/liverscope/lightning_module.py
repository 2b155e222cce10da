"""The Lightning side of training a classifier: the LightningModule, its validation metrics, the
loggers and the per-epoch history, the Trainer.

:class:`LitClassifier` trains a :class:`~liverscope.models.LiverNet` with the recipe's loss, optimiser
and schedule; its validation figures are torchmetrics metrics (accumulated over batches, synchronised
across processes by torchmetrics). Every epoch's figures go to a list of Lightning loggers, of which
Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` is always one (:func:`training_loggers`);
:class:`HistoryWriter` folds its ``metrics.csv`` into the run's ``history.csv`` after every epoch.
:func:`liverscope.train.train_prepared` puts these together.
"""

from __future__ import annotations

import csv
import logging
import time
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from liverscope import rundir
from liverscope.config import RunConfig
from liverscope.errors import LiverscopeError, UsageError
from liverscope.models import LiverNet
from liverscope.utils import log, resolve_device

#: The largest seed NumPy's global generator takes (Lightning refuses larger ones).
MAX_SEED = 2**32 - 1


def seed_run(seed: int) -> int:
    """Seed Python, NumPy and torch through Lightning (``workers=True``: every DataLoader worker of a
    Trainer gets its own derived seed, NumPy's included).

    Raises:
        UsageError: a seed outside ``0..2**32 - 1``.
    """
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"train.seed = {seed}: a seed must lie in 0..{MAX_SEED}")
    return L.seed_everything(seed, workers=True, verbose=False)


# --------------------------------------------------------------------------------------------------
# LightningModule
# --------------------------------------------------------------------------------------------------


def validation_metrics(num_classes: int) -> MetricCollection:
    """``val_acc`` (accuracy) and ``val_balanced_acc`` (macro-averaged recall) as torchmetrics metrics.

    ``val_balanced_acc`` equals scikit-learn's ``balanced_accuracy_score`` whenever every class occurs
    among the validation labels (the split is stratified, so it does unless a class is tiny). A class
    absent from the validation labels but predicted for some image counts as recall 0 in torchmetrics,
    where scikit-learn leaves it out; a class neither present nor predicted is left out by both.
    """
    return MetricCollection({
        "val_acc": MulticlassAccuracy(num_classes, average="micro"),
        "val_balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
    })


class LitClassifier(L.LightningModule):
    """Cross-entropy training of a LiverNet with the recipe's optimiser and schedule.

    Logs ``train_loss`` and, per validation epoch, ``val_loss`` (unweighted cross-entropy, comparable
    across balancing strategies), ``val_acc``, ``val_balanced_acc``.
    """

    def __init__(self, model: LiverNet, train_cfg, class_weights: np.ndarray | None = None, stage_of_class: Sequence[int] | None = None):
        super().__init__()
        self.model = model
        self.cfg = train_cfg
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.criterion = nn.CrossEntropyLoss(weight=w, label_smoothing=float(train_cfg.label_smoothing))
        # ordered stages: an extra penalty on the squared distance between the expected stage under the
        # predicted distribution and the true one, so that F0 called F4 costs more than F0 called F1
        # (cross-entropy alone treats every wrong stage alike); 0 switches it off
        self.ordinal_weight = float(getattr(train_cfg, "ordinal_weight", 0.0)) if stage_of_class is not None else 0.0
        stages = torch.as_tensor(stage_of_class if stage_of_class is not None else [], dtype=torch.float32)
        self.register_buffer("stages", (stages - stages.min()) / max(1.0, float(stages.max() - stages.min())) if stages.numel() else stages)
        self.val_loss = MeanMetric()
        self.val_metrics = validation_metrics(model.num_classes)
        # channels-last: fp32 training steps 5-33% faster on this CPU (benchmarks/train_speed.py), and
        # what cuDNN's tensor-core kernels want
        self.memory_format = torch.channels_last if getattr(train_cfg, "channels_last", False) else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)

    def forward(self, x):
        return self.model(x)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x.contiguous(memory_format=self.memory_format), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, plus ``ordinal_weight`` x the mean squared error of the expected stage (stages
        scaled to [0, 1]) when the labels are ordered."""
        loss = self.criterion(logits, y)
        if self.ordinal_weight > 0:
            expected = logits.float().softmax(1) @ self.stages
            loss = loss + self.ordinal_weight * ((expected - self.stages[y]) ** 2).mean()
        return loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.model(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x).float()
        # the batch mean weighted by its size: the mean over every validation image at the epoch's end
        self.val_loss.update(nn.functional.cross_entropy(logits, y), weight=len(y))
        self.val_metrics.update(logits, y)
        self.log("val_loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        c = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        elif c.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        elif c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay, momentum=0.9, nesterov=True)
        else:
            raise LiverscopeError(f"unknown optimizer '{c.optimizer}' (adam, adamw, sgd)")
        if c.scheduler == "none":
            return opt
        if c.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, c.epochs))
        elif c.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma)
        elif c.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=c.plateau_factor, patience=c.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        else:
            raise LiverscopeError(f"unknown scheduler '{c.scheduler}' (cosine, step, plateau, none)")
        return {"optimizer": opt, "lr_scheduler": sched}


# --------------------------------------------------------------------------------------------------
# loggers and history.csv
# --------------------------------------------------------------------------------------------------


def training_loggers(run_dir: str | Path, extra: Sequence[Logger] = ()) -> list[Logger]:
    """The Lightning loggers of a training run: a :class:`CSVLogger` under ``logs/csv/version_N/``
    (a new version per session, so a resumed run keeps the first session's file), then ``extra``
    (e.g. TensorBoard or MLflow loggers)."""
    return [CSVLogger(save_dir=Path(run_dir) / rundir.LOGS, name="csv"), *extra]


def epoch_rows(metrics_csv: str | Path) -> list[dict[str, str]]:
    """One row per epoch from a CSVLogger ``metrics.csv``: Lightning writes the training and the
    validation figures of one epoch on separate rows (and may repeat a key); the last value of each
    key in an epoch is kept."""
    path = Path(metrics_csv)
    if not path.exists():
        return []
    by_epoch: dict[int, dict[str, str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if not row.get("epoch"):
                continue
            merged = by_epoch.setdefault(int(float(row["epoch"])), {})
            merged.update({k: v for k, v in row.items() if v not in (None, "")})
    return [dict(r, epoch=str(e)) for e, r in sorted(by_epoch.items())]


class HistoryWriter(L.Callback):
    """Writes ``history.csv`` (one row per epoch, :data:`COLUMNS`) from the CSV logger's figures, so
    the log survives a crash and continues on ``--resume``; logs ``lr`` and ``epoch_seconds`` itself.

    Lightning hands an epoch's training figures to the loggers after every ``on_train_epoch_end`` hook,
    so the file is rewritten when the next epoch starts, when training ends, and on an exception.
    """

    COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_balanced_acc", "lr", "epoch_seconds"]
    _FORMATS = {"lr": "{:.3g}", "epoch_seconds": "{:.2f}"}

    def __init__(self, path: str | Path, logger: CSVLogger, resume: bool = False):
        self.path = Path(path)
        self.logger = logger
        # rows of the sessions before a resumed one (a fresh run starts its history anew)
        self.earlier = {int(r["epoch"]): r for r in rundir.read_history(self.path)} if resume else {}
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()
        self.write(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.optimizers:
            pl_module.log("lr", float(trainer.optimizers[0].param_groups[0]["lr"]), on_step=False, on_epoch=True)
        pl_module.log("epoch_seconds", time.perf_counter() - self._t0, on_step=False, on_epoch=True)

    def on_train_end(self, trainer, pl_module):
        self.write(trainer)

    def on_exception(self, trainer, pl_module, exception):
        self.write(trainer)

    def write(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        self.logger.save()
        rows = dict(self.earlier)
        for r in epoch_rows(self.logger.experiment.metrics_file_path):
            rows[int(r["epoch"])] = {c: self._format(c, r.get(c)) for c in self.COLUMNS}
        if rows:
            rundir.write_history(self.path, self.COLUMNS, [rows[e] for e in sorted(rows)])

    def _format(self, column: str, value: str | None) -> str:
        if column == "epoch" or value in (None, ""):
            return value or ""
        return self._FORMATS.get(column, "{:.6f}").format(float(value))


# --------------------------------------------------------------------------------------------------
# the Trainer
# --------------------------------------------------------------------------------------------------


def load_best_weights(model: LiverNet, ckpt_path: str | Path) -> None:
    """The ``model.*`` weights of a Lightning checkpoint into ``model`` (tensors only, never unpickled)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})


def quiet_lightning() -> None:
    """Keep Lightning's banners and advertising tips out of the user's terminal (our own log says what
    device and data are used); real warnings still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def training_precision(precision: str, device: str) -> str:
    """Resolve ``auto``: bf16-mixed on a GPU with bf16, 32-true elsewhere. On CPUs without native bf16
    (AVX-512-BF16/AMX) autocast emulates bf16 and a training step runs 6-20x slower than fp32 here
    (benchmarks/train_speed.py); where it is native, ask for ``bf16-mixed`` and measure."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks: list, loggers: Sequence[Logger]) -> L.Trainer:
    """The Trainer of a run: one device, the recipe's epochs and precision, ``callbacks``, ``loggers``."""
    t = cfg.train
    device = resolve_device(t.device)
    quiet_lightning()
    precision = training_precision(t.precision, device)
    log(f"training on {device} ({precision})")
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        precision=precision,
        callbacks=callbacks,
        logger=list(loggers),
        default_root_dir=str(run_dir),
        enable_progress_bar=bool(t.progress),
        enable_model_summary=False,
        limit_train_batches=t.max_train_batches or None,
        deterministic=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


__all__ = [
    "MAX_SEED", "seed_run", "validation_metrics", "LitClassifier", "training_loggers", "epoch_rows", "HistoryWriter",
    "load_best_weights", "quiet_lightning", "training_precision", "build_trainer",
]
