"""Training a classifier, and only that: build the model, time the precision, fit with Lightning
(checkpoints, early stopping, resumable), keep the chosen epoch's weights and save the model with its
provenance (:mod:`liverscope.training.provenance`: versions, seed, git commit, command, data hash).
The data comes from :mod:`liverscope.training.datamodule`, the Lightning pieces from
:mod:`liverscope.training.lightning_module`; what follows a fit (calibration, the OOD detector, scores,
plots, the CAM gallery, the report) is :mod:`liverscope.training.postrun`, and
:func:`liverscope.training.run.fit` puts the two together.

The same code runs on one device or as every process of a distributed run (``train.devices``,
``strategy``, ``num_nodes``; docs/scaling.md): the data preparation is :class:`RunDataModule`'s
``prepare_data``, which Lightning runs on global rank 0 alone while the other processes wait, and only
global rank 0 writes the run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from liverscope import rundir
from liverscope.config import RunConfig
from liverscope.data.datasets import describe_data
from liverscope.labels import metavir_stages
from liverscope.models import LiverNet, build_model
from liverscope.speed.training import choose_training_precision
from liverscope.training.datamodule import RunDataModule, list_data
from liverscope.training.lightning_module import (
    HistoryWriter,
    LitClassifier,
    build_trainer,
    load_best_weights,
    placement,
    seed_run,
    tracking_loggers,
    training_loggers,
    weight_averaging,
)
from liverscope.training.provenance import collect_provenance
from liverscope.utils import atomic_write_json, log, read_json


@dataclass
class Trained:
    """A freshly trained model and what the post-run steps need of its run (global rank 0)."""

    run_dir: Path
    model: LiverNet
    data: RunDataModule
    cfg: RunConfig
    device: str
    loggers: list
    global_step: int
    train_seconds: float


def measured_precision(cfg: RunConfig, model: LiverNet) -> dict | None:
    """``train.precision: auto`` on one CPU or one GPU: chosen by timing a few steps of ``model`` at the run's
    batch and input size in fp32 and bf16-mixed (:func:`~liverscope.speed.training.choose_training_precision`).
    ``None`` for a precision asked for, and for a run of several processes, whose ranks must agree
    (``training_precision`` then decides, without timing)."""
    t, where = cfg.train, placement(cfg.train)
    devices = where["devices"]
    single = devices == 1 or (isinstance(devices, list) and len(devices) == 1)
    if (
        t.precision != "auto"
        or not single
        or where["num_nodes"] != 1
        or where["accelerator"] not in ("cpu", "gpu", "cuda")
    ):
        return None
    device = (
        "cpu" if where["accelerator"] == "cpu" else f"cuda:{devices[0] if isinstance(devices, list) else 0}"
    )
    if device != "cpu" and not torch.cuda.is_available():
        return None  # Lightning says why when the trainer is built
    size = cfg.data.train_crop or cfg.data.image_size
    choice = choose_training_precision(model, cfg.model.name, t.batch_size, size, device, t.channels_last)
    log(f"train.precision auto → {choice['precision']} ({choice['reason']})")
    return choice


def train_prepared(cfg: RunConfig, data: RunDataModule, resume: bool = False) -> Trained | None:
    """Train on a run's data (:class:`RunDataModule`: prepared by global rank 0 inside ``trainer.fit``)
    into ``cfg.run_dir``: checkpoints, history, the model with its meta.

    Used by :func:`liverscope.training.run.fit` (one hold-out split) and
    :func:`liverscope.training.cv.cross_validate` (one call per fold). Every process of a distributed run
    calls it: they train together; global rank 0 alone saves the model and gets the :class:`Trained`
    model for the post-run steps (:func:`liverscope.training.postrun.finish`), the others get ``None``.
    """
    run_dir = cfg.run_dir
    seed_run(cfg.train.seed)
    last = rundir.last_checkpoint(run_dir)
    m = cfg.model
    model = build_model(
        m.name, len(data.class_names), m.head, m.pretrained, m.weights, m.freeze_backbone, m.dropout, m.hidden
    )
    # class weights of weighted_ce: RunDataModule.setup
    lit = LitClassifier(model, cfg.train, None, metavir_stages(data.class_names), config=cfg.to_dict())
    monitor = cfg.train.monitor if data.has_val else "train_loss"
    mode = "min" if monitor.endswith("loss") else "max"
    select = selection(cfg)
    ckpt, callbacks, loggers = _callbacks(cfg, data.has_val, monitor, mode, select, resume)
    precision_file = run_dir / rundir.TRAINING_PRECISION
    # a resumed run trains in the precision its first session measured (timings differ from call to call)
    chosen = (
        read_json(precision_file) if resume and precision_file.exists() else measured_precision(cfg, model)
    )
    trainer = build_trainer(cfg, run_dir, callbacks, loggers, precision=chosen and chosen["precision"])
    rundir.start_run(
        cfg, resume, write=trainer.is_global_zero
    )  # every process checks; rank 0 writes config.yaml
    if chosen and trainer.is_global_zero:
        precision_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(precision_file, chosen)
    t0 = time.perf_counter()
    trainer.fit(lit, datamodule=data, ckpt_path=str(last) if resume else None)
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    kept = ckpt.last_model_path if select == "last" else ckpt.best_model_path
    if kept:
        load_best_weights(model, kept)
    prep = data.prepared()
    rundir.save_model(
        run_dir,
        model,
        prep.class_names,
        prep.pp,
        {
            "best_epoch": _best_epoch(run_dir / rundir.HISTORY, None if select == "last" else monitor, mode),
            "monitor": monitor,
            "select": select,
            "split": cfg.data.split,
            "train_seconds": round(train_seconds, 1),
            "processes": trainer.world_size,
            "training_precision": chosen
            or {"precision": str(trainer.precision), "reason": f"train.precision {cfg.train.precision}"},
            "provenance": collect_provenance(cfg.train.seed, run_dir / rundir.SPLIT),
            # the report and the app name it
            "training_data": describe_data(cfg.data.path, [s.source for s in prep.samples]),
        },
    )
    device = "cuda" if trainer.strategy.root_device.type == "cuda" else "cpu"
    return Trained(run_dir, model, data, cfg, device, loggers, trainer.global_step, train_seconds)


def _callbacks(
    cfg: RunConfig, has_val: bool, monitor: str, mode: str, select: str, resume: bool
) -> tuple[ModelCheckpoint, list, list]:
    """The checkpoint callback (best and last), every callback of the fit (history, EMA, early
    stopping when the best epoch is kept) and the loggers (CSV always: history.csv is made from it)."""
    run_dir = cfg.run_dir
    ckpt = ModelCheckpoint(
        dirpath=run_dir / rundir.CHECKPOINTS,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    loggers = training_loggers(run_dir, tracking_loggers(cfg, run_dir))
    callbacks: list = [
        ckpt,
        HistoryWriter(run_dir / rundir.HISTORY, loggers[0], resume),
        *weight_averaging(cfg.train),
    ]
    if cfg.train.early_stop_patience > 0 and has_val and select == "best":
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.early_stop_patience))
    return ckpt, callbacks, loggers


def train(cfg: RunConfig, resume: bool = False) -> Trained | None:
    """Train one model by the recipe ``cfg`` on its data (one hold-out split); see :func:`train_prepared`."""
    return train_prepared(cfg, RunDataModule(cfg, list_data(cfg)), resume)


def selection(cfg: RunConfig) -> str:
    """The weights a run keeps (``train.select``): ``best`` (the epoch with the best ``train.monitor``) or
    ``last`` (the final epoch, chosen by nothing). ``auto`` is ``best`` here; :func:`liverscope.training.cv.fold_config`
    makes it ``last`` for cv folds, whose validation images are the out-of-fold ones. Under ``last`` early
    stopping is off: it too would choose the epoch on the validation images."""
    select = "best" if cfg.train.select == "auto" else cfg.train.select
    if select == "last" and cfg.train.early_stop_patience > 0:
        log(
            "train.select last: early stopping is off (it would choose the epoch on the validation images); every epoch is trained"
        )
    return select


def _best_epoch(history: Path, monitor: str | None, mode: str) -> int | None:
    """The epoch whose weights were kept: the best by ``monitor``, or (``None``) the last one trained."""
    rows = [r for r in rundir.read_history(history) if r.get(monitor or "epoch") not in (None, "")]
    if not rows:
        return None
    if monitor is None:
        return max(int(r["epoch"]) for r in rows)
    key = (lambda r: float(r[monitor])) if mode == "max" else (lambda r: -float(r[monitor]))
    return int(max(rows, key=key)["epoch"])
