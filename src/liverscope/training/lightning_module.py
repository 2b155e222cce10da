"""The Lightning side of training a classifier: the LightningModule, its validation metrics, the
loggers and the per-epoch history, the Trainer.

:class:`LitClassifier` trains a :class:`~liverscope.models.LiverNet` with the recipe's loss, optimiser
and schedule; its validation figures are torchmetrics metrics (accumulated over batches, synchronised
across processes by torchmetrics). Every epoch's figures go to a list of Lightning loggers, of which
Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` is always one (:func:`training_loggers`;
``train.logger`` adds TensorBoard or MLflow: :func:`tracking_loggers`); :class:`HistoryWriter` folds
its ``metrics.csv`` into the run's ``history.csv`` after every epoch. :func:`build_trainer` places the
run on Lightning's accelerator, devices, strategy and nodes (``train.accelerator``, ``devices``,
``strategy``, ``num_nodes``; docs/scaling.md). :func:`liverscope.training.train.train_prepared` puts these together.
"""

from __future__ import annotations

import csv
import logging
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from liverscope import rundir
from liverscope.config import RunConfig, TrainConfig, parse_devices
from liverscope.errors import LiverscopeError, UsageError
from liverscope.models import LiverNet
from liverscope.utils import import_optional, log, logger, progress_enabled, resolve_device, set_progress

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
    return MetricCollection(
        {
            "val_acc": MulticlassAccuracy(num_classes, average="micro"),
            "val_balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        }
    )


class LitClassifier(L.LightningModule):
    """Cross-entropy training of a LiverNet with the recipe's optimiser and schedule.

    Logs ``train_loss`` and, per validation epoch, ``val_loss`` (unweighted cross-entropy, comparable
    across balancing strategies), ``val_acc``, ``val_balanced_acc`` and ``val_images`` (how many
    validation images the figures count: each exactly once, also across the processes of a distributed
    run). ``config`` (the resolved recipe, ``RunConfig.to_dict()``) becomes the module's
    hyper-parameters: Lightning logs them to every logger and keeps them in the checkpoints.
    """

    def __init__(
        self,
        model: LiverNet,
        train_cfg: TrainConfig,
        class_weights: np.ndarray | None = None,
        stage_of_class: Sequence[int] | None = None,
        config: dict | None = None,
    ):
        super().__init__()
        if config is not None:
            self.save_hyperparameters(config)
        self.model = model
        self.cfg = train_cfg
        self.set_class_weights(class_weights)
        # ordered stages: an extra penalty on the squared distance between the expected stage under the
        # predicted distribution and the true one, so that F0 called F4 costs more than F0 called F1
        # (cross-entropy alone treats every wrong stage alike); 0 switches it off
        self.ordinal_weight = float(train_cfg.ordinal_weight) if stage_of_class is not None else 0.0
        stages = torch.as_tensor(stage_of_class if stage_of_class is not None else [], dtype=torch.float32)
        self.register_buffer(
            "stages",
            (stages - stages.min()) / max(1.0, float(stages.max() - stages.min()))
            if stages.numel()
            else stages,
        )
        self.val_loss = MeanMetric()
        self.val_images = SumMetric()
        self.val_metrics = validation_metrics(model.num_classes)
        # channels-last: fp32 training steps 5-33% faster on this CPU (benchmarks/train_speed.py), and
        # what cuDNN's tensor-core kernels want
        self.memory_format = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.mixer = batch_mixer(train_cfg, model.num_classes)

    def set_class_weights(self, class_weights: np.ndarray | None) -> None:
        """The weights of the weighted cross-entropy (``None``: unweighted); set when the training split
        is known, which in a distributed run is after Lightning's ``setup`` (:class:`liverscope.training.datamodule.RunDataModule`)."""
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.criterion = nn.CrossEntropyLoss(weight=w, label_smoothing=float(self.cfg.label_smoothing))

    def forward(self, x):
        return self.model(x)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x.contiguous(memory_format=self.memory_format), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, plus ``ordinal_weight`` x the mean squared error of the expected stage (stages
        scaled to [0, 1]) when the labels are ordered. ``y`` is class indices, or soft targets (``N x K``,
        mixup/cutmix: timm's, label smoothing already in them)."""
        soft = y.ndim == 2
        if soft and self.criterion.weight is not None:
            raise LiverscopeError(
                "train.mixup / train.cutmix mix the labels, which a class-weighted loss cannot weigh: use train.balance sampler or none"
            )
        loss = -(y * logits.float().log_softmax(1)).sum(1).mean() if soft else self.criterion(logits, y)
        if self.ordinal_weight > 0:
            expected = logits.float().softmax(1) @ self.stages
            truth = y.float() @ self.stages if soft else self.stages[y]
            loss = loss + self.ordinal_weight * ((expected - truth) ** 2).mean()
        return loss

    def on_train_epoch_start(self):
        # head-only warm-up: the backbone's weights get no gradient (AdamW then leaves them alone) until
        # train.warmup_epochs have passed; a backbone frozen by the recipe stays frozen
        warm = int(self.cfg.warmup_epochs)
        if warm and not self.model.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(self.current_epoch >= warm)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if (
            self.mixer is not None and len(y) % 2 == 0
        ):  # timm's batch mixing pairs images: an odd last batch trains unmixed
            x, y = self.mixer(x, y)
        loss = self.loss(self.model(x), y)
        # sync_dist: the epoch's mean over every process's batches, not rank 0's alone (one reduction per epoch)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True
        )
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x).float()
        # the batch mean weighted by its size: the mean over every validation image at the epoch's end
        self.val_loss.update(nn.functional.cross_entropy(logits, y), weight=len(y))
        self.val_metrics.update(logits, y)
        self.val_images.update(torch.tensor(float(len(y)), device=logits.device))
        self.log("val_loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val_images", self.val_images, on_step=False, on_epoch=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        c = self.cfg
        params = parameter_groups(self.model, c.lr, float(c.backbone_lr_mult))
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
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=c.plateau_factor, patience=c.plateau_patience
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        else:
            raise LiverscopeError(f"unknown scheduler '{c.scheduler}' (cosine, step, plateau, none)")
        return {"optimizer": opt, "lr_scheduler": sched}


def batch_mixer(train_cfg: TrainConfig, num_classes: int):
    """timm's ``Mixup`` for ``train.mixup`` / ``train.cutmix`` (one of the two per batch when both are on;
    label smoothing folded into its soft targets), or ``None`` when both are 0."""
    mixup, cutmix = float(train_cfg.mixup), float(train_cfg.cutmix)
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        label_smoothing=float(train_cfg.label_smoothing),
        num_classes=int(num_classes),
    )


def parameter_groups(model: LiverNet, lr: float, backbone_lr_mult: float = 1.0) -> list:
    """The optimiser's parameters: one group at ``lr``, or — differential learning rates — the backbone
    at ``lr x backbone_lr_mult`` and the rest (the head) at ``lr``. A backbone frozen by the recipe
    (``requires_grad`` off) is left out."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_mult == 1.0:
        return trainable
    backbone = {id(p) for p in model.backbone.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) in backbone], "lr": lr * backbone_lr_mult},
        {"params": [p for p in trainable if id(p) not in backbone], "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def weight_averaging(train_cfg: TrainConfig) -> list:
    """Lightning's EMA callback for ``train.ema`` (the decay; the averaged weights are validated,
    checkpointed and kept), or nothing."""
    decay = float(train_cfg.ema)
    if decay <= 0:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging

    return [EMAWeightAveraging(decay=decay)]


# --------------------------------------------------------------------------------------------------
# loggers and history.csv
# --------------------------------------------------------------------------------------------------


def training_loggers(run_dir: str | Path, extra: Sequence[Logger] = ()) -> list[Logger]:
    """The Lightning loggers of a training run: a :class:`CSVLogger` under ``logs/csv/version_N/``
    (a new version per session, so a resumed run keeps the first session's file), then ``extra``
    (e.g. TensorBoard or MLflow loggers)."""
    return [CSVLogger(save_dir=Path(run_dir) / rundir.LOGS, name="csv"), *extra]


#: The MLflow experiment every liverscope run is filed under (its MLflow run is named after the run directory).
MLFLOW_EXPERIMENT = "liverscope"
#: The local MLflow folder (in the working directory) when ``train.mlflow_uri`` names none.
MLRUNS = "mlruns"


def tracking_loggers(cfg: RunConfig, run_dir: str | Path) -> list[Logger]:
    """The experiment tracker that ``train.logger`` asks for besides the CSV logger: TensorBoard event
    files under ``logs/tensorboard/version_N/`` (``pip install 'liverscope[tensorboard]'``), or an MLflow
    run (``pip install 'liverscope[mlflow]'``) in ``train.mlflow_uri``, by default a local ``mlruns/``
    folder in the working directory (``mlruns/mlflow.db``, SQLite: MLflow 3 refuses its old plain-file
    store; artifacts in ``mlruns/artifacts``; ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``).
    ``MLFLOW_TRACKING_URI`` is not followed: a shell variable must not send a clinical data set's
    figures to a server nobody named for this run.

    Raises:
        LiverscopeError: the extra of the chosen logger is not installed (names its ``pip install`` line).
    """
    kind = cfg.train.logger
    if kind == "csv":
        return []
    if kind == "tensorboard":
        import_optional("tensorboard", "tensorboard", "--logger tensorboard")
        return [
            TensorBoardLogger(
                save_dir=Path(run_dir) / rundir.LOGS, name="tensorboard", default_hp_metric=False
            )
        ]
    if kind == "mlflow":
        import_optional("mlflow", "mlflow", "--logger mlflow")
        uri, artifacts = cfg.train.mlflow_uri, None
        if not uri:
            local = (Path.cwd() / MLRUNS).resolve()
            local.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{local / 'mlflow.db'}", (local / "artifacts").as_uri()
        return [
            MLFlowLogger(
                experiment_name=MLFLOW_EXPERIMENT,
                run_name=str(cfg.run_dir),
                tracking_uri=uri,
                artifact_location=artifacts,
                tags={"run_dir": str(Path(run_dir).resolve())},
            )
        ]
    raise UsageError(f"train.logger is '{kind}'; choose one of: csv, tensorboard, mlflow")


def final_figures(metrics: dict) -> dict[str, float]:
    """The headline figures of a run's ``metrics.json`` as flat ``split/metric`` numbers for a tracker."""
    out: dict[str, float] = {}
    for split in ("test", "validation", "oof", "ensemble"):
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_kappa", "ece", "n"):
            value = (metrics.get(split) or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                out[f"{split}/{key}"] = float(value)
    if isinstance(metrics.get("temperature"), (int, float)):
        out["temperature"] = float(metrics["temperature"])
    return out


def log_final_figures(
    loggers: Sequence[Logger], metrics: dict, step: int, config: dict | None = None
) -> None:
    """Send a finished run's figures to its trackers (the CSV logger's record of them is
    ``metrics.json``), then close them: MLflow gets them as metrics at the last step; TensorBoard with
    the resolved ``config`` as an hparams session, so its HPARAMS tab sets runs' settings beside their
    figures. Lightning's loggers write on global rank 0 only."""
    figures = final_figures(metrics)
    for lg in loggers:
        if isinstance(lg, CSVLogger) or not figures:
            continue
        if isinstance(lg, TensorBoardLogger) and config is not None:
            lg.log_hyperparams(config, metrics=figures)
        else:
            lg.log_metrics(figures, step=step)
        lg.finalize("success")


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
        if trainer.optimizers:  # the same on every process; sync_dist keeps Lightning from warning
            pl_module.log(
                "lr",
                float(trainer.optimizers[0].param_groups[0]["lr"]),
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
        pl_module.log(
            "epoch_seconds", time.perf_counter() - self._t0, on_step=False, on_epoch=True, sync_dist=True
        )

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
    # the module's channels-last hook is meant to run with the run's DataModule
    warnings.filterwarnings(
        "ignore", message=".*overridden `on_before_batch_transfer` in `LightningModule`.*"
    )
    # a run without validation images (data.val_frac=0) hands Lightning an empty list of validation loaders
    warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero.*")


def training_precision(precision: str, device: str) -> str:
    """Resolve ``auto``: bf16-mixed on a GPU with bf16, 32-true elsewhere. On CPUs without native bf16
    (AVX-512-BF16/AMX) autocast emulates bf16 and a training step runs 6-20x slower than fp32 here
    (benchmarks/train_speed.py); where it is native, ask for ``bf16-mixed`` and measure."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "32-true"


#: How long the processes of a DDP run wait for each other at a barrier (rank 0 preparing the data).
DDP_TIMEOUT = timedelta(hours=12)


def placement(train_cfg: TrainConfig) -> dict:
    """Lightning's ``accelerator``, ``devices``, ``strategy`` and ``num_nodes`` of a recipe.

    ``train.accelerator: auto`` keeps the meaning of ``train.device`` (``auto``: a CUDA GPU when one is
    visible, else the CPU; ``cuda:N``: that GPU); any other accelerator, the devices, the strategy and
    the nodes go to Lightning as they are."""
    t = train_cfg
    devices = parse_devices(t.devices)
    if t.accelerator != "auto":
        return {
            "accelerator": t.accelerator,
            "devices": devices,
            "strategy": t.strategy,
            "num_nodes": int(t.num_nodes),
        }
    device = resolve_device(t.device)
    if device.startswith("cuda:") and devices == 1:
        devices = [int(device.split(":", 1)[1])]  # --device cuda:1 trains on that GPU
    return {
        "accelerator": "gpu" if device.startswith("cuda") else "cpu",
        "devices": devices,
        "strategy": t.strategy,
        "num_nodes": int(t.num_nodes),
    }


def global_rank() -> int:
    """This process's rank in a distributed run (0 in a plain one): Lightning's, exact once a Trainer
    has been built in this process, before that read from the launcher's environment (``RANK``,
    ``LOCAL_RANK``, ``SLURM_PROCID``)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def build_trainer(
    cfg: RunConfig, run_dir: Path, callbacks: list, loggers: Sequence[Logger], precision: str | None = None
) -> L.Trainer:
    """The Trainer of a run: the recipe's placement (:func:`placement`), epochs and precision,
    ``callbacks``, ``loggers`` (``precision``: one chosen by measurement, see :mod:`liverscope.speed.training`). On the processes of a distributed run other than global rank 0,
    liverscope's messages and progress bars are switched off (they would repeat rank 0's).

    Raises:
        UsageError: Lightning refuses the accelerator, devices, strategy or nodes (e.g. GPUs asked for on
            a machine without one).
    """
    t = cfg.train
    where = placement(t)
    if where["strategy"] in ("ddp", "ddp_find_unused_parameters_true"):
        # the other ranks wait at a barrier while rank 0 audits and fills the cache (prepare_data), and
        # between folds while it scores: torch.distributed's default 30-minute timeout is too short for
        # a first pass over a large set
        where["strategy"] = DDPStrategy(
            timeout=DDP_TIMEOUT, find_unused_parameters=where["strategy"].endswith("_true")
        )
    quiet_lightning()
    on_gpu = (
        where["accelerator"] in ("gpu", "cuda") and torch.cuda.is_available()
    )  # without one, Lightning refuses below
    precision = precision or training_precision(t.precision, "cuda" if on_gpu else str(where["accelerator"]))
    try:
        trainer = L.Trainer(
            max_epochs=t.epochs,
            **where,
            precision=precision,
            callbacks=callbacks,
            logger=list(loggers),
            default_root_dir=str(run_dir),
            enable_progress_bar=bool(t.progress) and progress_enabled(),
            enable_model_summary=False,
            limit_train_batches=t.max_train_batches or None,
            deterministic=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        raise UsageError(
            f"train.accelerator={t.accelerator}, devices={t.devices}, strategy={t.strategy}, num_nodes={t.num_nodes}: "
            f"Lightning refuses them ({exc}); see docs/scaling.md"
        ) from None
    if trainer.is_global_zero:
        world = trainer.world_size
        what = (
            f"{world} processes ({where['accelerator']}, {trainer.strategy.__class__.__name__}, {t.num_nodes} node(s))"
            if world > 1
            else where["accelerator"]
        )
        log(
            f"training on {what} ({precision}); effective batch {t.batch_size * world} = {t.batch_size} per process x {world}"
        )
    else:
        set_progress(False)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    return trainer


__all__ = [
    "batch_mixer",
    "parameter_groups",
    "weight_averaging",
    "MAX_SEED",
    "seed_run",
    "validation_metrics",
    "LitClassifier",
    "training_loggers",
    "tracking_loggers",
    "final_figures",
    "log_final_figures",
    "epoch_rows",
    "HistoryWriter",
    "load_best_weights",
    "quiet_lightning",
    "training_precision",
    "placement",
    "global_rank",
    "build_trainer",
]
