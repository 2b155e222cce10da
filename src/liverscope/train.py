"""Training: a LightningModule around :class:`~liverscope.models.registry.LiverNet` and ``fit``.

``fit(cfg)`` is the whole recipe, readable top to bottom like torchvision's reference scripts:
list the data → drop unreadable files → split (grouped by duplicates by default) → preprocess once
into the cache → train with Lightning (checkpoints, early stopping, resumable) → pick the best epoch →
score the test split → write the run directory.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from liverscope import __version__
from liverscope.config import RunConfig, save_config
from liverscope.data.augment import build_transform
from liverscope.data.datasets import (
    ImageDataset,
    Sample,
    check_readable,
    inverse_frequency_weights,
    load_samples,
    warm_cache,
)
from liverscope.data.io import file_sha256
from liverscope.data.preprocess import PreprocessCache, Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.models.registry import LiverNet, build_model
from liverscope.predict import infer_logits, softmax
from liverscope.utils import atomic_path, atomic_write_json, atomic_write_text, log, read_json, resolve_device, seed_everything


# --------------------------------------------------------------------------------------------------
# LightningModule
# --------------------------------------------------------------------------------------------------


class LitClassifier(L.LightningModule):
    """Cross-entropy training of a LiverNet with the recipe's optimiser and schedule.

    Logs ``train_loss`` and, per validation epoch, ``val_loss``, ``val_acc``, ``val_balanced_acc``.
    """

    def __init__(self, model: LiverNet, train_cfg, class_weights: np.ndarray | None = None):
        super().__init__()
        self.model = model
        self.cfg = train_cfg
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.criterion = nn.CrossEntropyLoss(weight=w, label_smoothing=float(train_cfg.label_smoothing))
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self.model(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._val_logits.append(self.model(x).float())
        self._val_targets.append(y)

    def on_validation_epoch_end(self):
        if not self._val_logits:
            return
        logits = self.all_gather(torch.cat(self._val_logits)).reshape(-1, self.model.num_classes)
        targets = self.all_gather(torch.cat(self._val_targets)).reshape(-1)
        self._val_logits.clear()
        self._val_targets.clear()
        # unweighted loss: comparable across balancing strategies
        loss = nn.functional.cross_entropy(logits, targets)
        pred = logits.argmax(1)
        acc = (pred == targets).float().mean()
        recalls = [((pred == c) & (targets == c)).sum() / (targets == c).sum() for c in targets.unique()]
        bal = torch.stack(recalls).float().mean()
        self.log_dict({"val_loss": loss, "val_acc": acc, "val_balanced_acc": bal}, prog_bar=True, sync_dist=False)

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


class HistoryWriter(L.Callback):
    """Writes ``history.csv`` (one row per epoch) atomically after every validation epoch, so the log
    survives a crash and continues on ``--resume``."""

    COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_balanced_acc", "lr", "epoch_seconds"]

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.exists():
            with open(self.path, newline="") as fh:
                self.rows = list(csv.DictReader(fh))
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for k in ("train_loss", "val_loss", "val_acc", "val_balanced_acc"):
            row[k] = f"{float(m[k]):.6f}" if k in m else ""
        row["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}" if trainer.optimizers else ""
        row["epoch_seconds"] = f"{time.perf_counter() - self._t0:.2f}"
        self.rows = [r for r in self.rows if int(r["epoch"]) != trainer.current_epoch] + [row]
        if trainer.is_global_zero:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self.COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
            atomic_write_text(self.path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    samples: list[Sample]
    class_names: list[str]
    splits: np.ndarray  # "train" | "val" | "test" per sample
    cache: PreprocessCache
    pp: Preprocessing
    skipped: list[tuple[str, str]]


_log = log  # progress lines: liverscope.utils.log


@dataclass
class CollectedData:
    """Readable samples of a run with their duplicate groups (from the audit), before any split."""

    samples: list[Sample]
    class_names: list[str]
    groups: np.ndarray  # duplicate / patient group id per sample
    cache: PreprocessCache
    pp: Preprocessing
    skipped: list[tuple[str, str]]


def collect_samples(cfg: RunConfig, run_dir: Path) -> CollectedData:
    """List the data, drop unreadable files (listed in ``skipped.csv``), preprocess everything once into
    the cache, and audit it (``audit.json``/``audit.html``): exact and near-duplicate groups, sources."""
    from liverscope.data.audit import audit_dataset, write_audit

    if not cfg.data.path:
        raise LiverscopeError("no data given: pass a class-per-folder tree or a CSV manifest (or run `liverscope demo`)")
    samples, class_names = load_samples(cfg.data.path)
    pp = Preprocessing.from_data_config(cfg.data)
    cache = PreprocessCache(pp, cfg.data.cache_dir)
    samples, skipped = check_readable(samples)
    t0 = time.perf_counter()
    samples, bad = warm_cache(samples, cache, workers=max(1, torch.get_num_threads()))
    skipped += bad
    _log(f"{len(samples)} images ready ({cache.hits} from cache, {cache.misses} preprocessed) in {time.perf_counter() - t0:.1f}s")
    if skipped:
        _log(f"skipped {len(skipped)} unreadable file(s); see {run_dir / 'skipped.csv'}")
        buf = io.StringIO()
        csv.writer(buf).writerows([("path", "reason"), *skipped])
        atomic_write_text(run_dir / "skipped.csv", buf.getvalue())
    if not samples:
        raise LiverscopeError(f"{cfg.data.path}: no readable images")
    audit = audit_dataset(samples)
    write_audit(audit, run_dir)
    records = {r["path"]: r for r in audit["files"]}
    for smp in samples:
        rec = records[str(smp.path)]
        smp.sha256 = smp.sha256 or rec.get("sha256") or file_sha256(smp.path)
        smp.source = smp.source or rec.get("source")
    groups = np.array([audit["group_id"][str(smp.path)] for smp in samples])
    summary = audit["summary"]
    _log(f"audit: {summary['files']} files, {summary['distinct']} distinct, {summary['groups']} duplicate groups, {summary['sources']} source(s)")
    if cfg.data.distinct_only:
        seen: set[str] = set()
        keep = []
        for i, smp in enumerate(samples):
            if smp.sha256 not in seen:
                seen.add(smp.sha256)
                keep.append(i)
        _log(f"distinct_only: keeping {len(keep)} byte-distinct images of {len(samples)}")
        samples = [samples[i] for i in keep]
        groups = groups[keep]
    return CollectedData(samples, class_names, groups, cache, pp, skipped)


def assign_splits(data: CollectedData, cfg: RunConfig) -> np.ndarray:
    """Hold-out split labels (``train``/``val``/``test``) by the configured strategy.

    ``grouped`` keeps every duplicate group (exact, near, and patient) on one side and refuses a leaking
    split; ``stratified`` ignores duplicates; ``random`` is the legacy split the studies used.
    """
    from liverscope.data import splits

    d = cfg.data
    labels = np.array([s.label for s in data.samples])
    seed = cfg.train.seed
    if d.split == "random":
        assignment = splits.random_split(labels, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed)
    elif d.split == "stratified":
        assignment = splits.holdout_split(labels, None, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed)
    elif d.split == "grouped":
        assignment = splits.holdout_split(labels, data.groups, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed)
        splits.check_leakage(assignment, data.groups, allow=d.allow_leak)
    else:
        raise LiverscopeError(f"unknown split '{d.split}' (grouped, stratified, random)")
    leaks = splits.find_leaks(assignment, data.groups)
    if leaks and d.split != "grouped":
        n_leaky = sum(len(idx) for _, idx in leaks)
        _log(f"WARNING: {d.split} split: {n_leaky} validation/test images have a duplicate in training (use --split grouped)")
    return assignment


def write_split_csv(path: Path, samples: Sequence[Sample], assignment: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split", "group", "source", "sha256"])
    for s, a in zip(samples, assignment):
        w.writerow([str(s.path), s.label, a, s.group or "", s.source or "", s.sha256 or ""])
    atomic_write_text(path, buf.getvalue())


def read_split_csv(path: Path) -> tuple[list[Sample], np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    samples = [Sample(Path(r["path"]), r["label"], r["group"] or None, r["source"] or None, r["sha256"] or None) for r in rows]
    return samples, np.array([r["split"] for r in rows])


def prepare_data(cfg: RunConfig, run_dir: Path, reuse_split: bool = True) -> PreparedData:
    """List, validate, audit, cache and split the data of a run (the split is reused on resume)."""
    data = collect_samples(cfg, run_dir)
    split_path = run_dir / "split.csv"
    samples = data.samples
    if reuse_split and split_path.exists():
        prev, assignment = read_split_csv(split_path)
        by_path = {str(s.path): a for s, a in zip(prev, assignment)}
        keep = [i for i, s in enumerate(samples) if str(s.path) in by_path]
        samples = [samples[i] for i in keep]
        assignment = np.array([by_path[str(s.path)] for s in samples])
        _log(f"reusing the split in {split_path}")
    else:
        assignment = assign_splits(data, cfg)
        for s, g in zip(samples, data.groups):
            s.group = str(g)
        write_split_csv(split_path, samples, assignment)
    present = {s.label for s, a in zip(samples, assignment) if a == "train"}
    missing = [c for c in data.class_names if c not in present]
    if missing:
        raise LiverscopeError(f"{cfg.data.path}: classes {missing} have no training images after the split; add images or merge classes")
    return PreparedData(samples, data.class_names, assignment, data.cache, data.pp, data.skipped)


def make_loaders(prep: PreparedData, cfg: RunConfig) -> tuple[DataLoader, DataLoader, DataLoader, ImageDataset]:
    t = cfg.train
    sel = {k: [s for s, a in zip(prep.samples, prep.splits) if a == k] for k in ("train", "val", "test")}
    train_ds = ImageDataset(sel["train"], prep.class_names, prep.cache, build_transform(cfg.data.augment, prep.pp, train=True))
    val_ds = ImageDataset(sel["val"], prep.class_names, prep.cache, build_transform("none", prep.pp, train=False))
    test_ds = ImageDataset(sel["test"], prep.class_names, prep.cache, build_transform("none", prep.pp, train=False))
    gen = torch.Generator().manual_seed(t.seed)
    nw = int(cfg.data.num_workers)
    common = dict(batch_size=t.batch_size, num_workers=nw, persistent_workers=nw > 0)
    if t.balance == "sampler":
        w = inverse_frequency_weights(train_ds.targets, len(prep.class_names))[train_ds.targets]
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(train_ds), replacement=True, generator=gen)
        train_dl = DataLoader(train_ds, sampler=sampler, drop_last=len(train_ds) > t.batch_size, **common)
    else:
        train_dl = DataLoader(train_ds, shuffle=True, generator=gen, drop_last=len(train_ds) > t.batch_size, **common)
    val_dl = DataLoader(val_ds, shuffle=False, **common)
    test_dl = DataLoader(test_ds, shuffle=False, **common)
    return train_dl, val_dl, test_dl, train_ds


# --------------------------------------------------------------------------------------------------
# Run directory outputs
# --------------------------------------------------------------------------------------------------


def save_model(run_dir: Path, model: LiverNet, class_names: Sequence[str], pp: Preprocessing, extra: dict | None = None) -> None:
    """``model.safetensors`` (weights only, never pickled) + ``model.json`` (everything to rebuild it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    meta = {
        "architecture": model.arch,
        "labels": list(class_names),
        "preprocessing": pp.to_dict(),
        "weights_source": model.weights_source,
        "temperature": None,
        "liverscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta.update(extra or {})
    atomic_write_json(run_dir / "model.json", meta)


def update_model_json(run_dir: Path, **fields) -> dict:
    meta = read_json(run_dir / "model.json")
    meta.update(fields)
    atomic_write_json(run_dir / "model.json", meta)
    return meta


def write_predictions_csv(path: Path, samples: Sequence[Sample], logits: np.ndarray, class_names: Sequence[str], temperature: float = 1.0) -> None:
    probs = softmax(logits, temperature)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "pred", "source", "group", *[f"prob_{c}" for c in class_names], *[f"logit_{c}" for c in class_names]])
    for s, lg, pr in zip(samples, logits, probs):
        w.writerow([str(s.path), s.label, class_names[int(np.argmax(pr))], s.source or "", s.group or "", *[f"{v:.6f}" for v in pr], *[f"{v:.6f}" for v in lg]])
    atomic_write_text(path, buf.getvalue())


def _load_best_weights(model: LiverNet, ckpt_path: str | Path) -> None:
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})


def _quiet_lightning() -> None:
    """Keep Lightning's banners and advertising tips out of the user's terminal (our own log says what
    device and data are used); real warnings still show."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _trainer(cfg: RunConfig, run_dir: Path, callbacks: list) -> L.Trainer:
    t = cfg.train
    device = resolve_device(t.device)
    _quiet_lightning()
    _log(f"training on {device} ({t.precision})")
    return L.Trainer(
        max_epochs=t.epochs,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        precision=t.precision,
        callbacks=callbacks,
        logger=False,
        default_root_dir=str(run_dir),
        enable_progress_bar=bool(t.progress),
        enable_model_summary=False,
        limit_train_batches=t.max_train_batches or None,
        deterministic=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def _start_run_dir(cfg: RunConfig, resume: bool) -> Path:
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "model.json").exists() and last.exists() and not resume:
        raise LiverscopeError(f"{run_dir} already holds a trained run; choose another --name, or --resume to continue it")
    if resume and not last.exists():
        raise LiverscopeError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt); start without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def train_prepared(cfg: RunConfig, prep: PreparedData, run_dir: Path, resume: bool = False) -> Path:
    """Train on already prepared (listed, split, cached) data and write ``run_dir``.

    Used by :func:`fit` (one hold-out split) and :func:`cross_validate` (one call per fold).
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    seed_everything(cfg.train.seed)
    last = run_dir / "checkpoints" / "last.ckpt"
    train_dl, val_dl, test_dl, train_ds = make_loaders(prep, cfg)
    counts = {k: int((prep.splits == k).sum()) for k in ("train", "val", "test")}
    _log(f"split ({cfg.data.split}): {counts}; classes: {prep.class_names}")

    m = cfg.model
    model = build_model(m.name, len(prep.class_names), m.head, m.pretrained, m.weights, m.freeze_backbone, m.dropout, m.hidden)
    class_weights = inverse_frequency_weights(train_ds.targets, len(prep.class_names)) if cfg.train.balance == "weighted_ce" else None
    lit = LitClassifier(model, cfg.train, class_weights)

    has_val = counts["val"] > 0
    monitor = cfg.train.monitor if has_val else "train_loss"
    mode = "min" if monitor.endswith("loss") else "max"
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode, save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list = [ckpt, HistoryWriter(run_dir / "history.csv")]
    if cfg.train.early_stop_patience > 0 and has_val:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.early_stop_patience))
    trainer = _trainer(cfg, run_dir, callbacks)
    t0 = time.perf_counter()
    trainer.fit(lit, train_dataloaders=train_dl, val_dataloaders=val_dl if has_val else None, ckpt_path=str(last) if resume else None)
    train_seconds = time.perf_counter() - t0
    if ckpt.best_model_path:
        _load_best_weights(model, ckpt.best_model_path)

    best_epoch = _best_epoch(run_dir / "history.csv", monitor, mode)
    save_model(run_dir, model, prep.class_names, prep.pp, {"best_epoch": best_epoch, "monitor": monitor, "split": cfg.data.split, "train_seconds": round(train_seconds, 1)})
    finish_run(run_dir, model, prep, val_dl, test_dl, cfg)
    _log(f"trained in {train_seconds:.0f}s; run directory: {run_dir}")
    return run_dir


def fit(cfg: RunConfig, resume: bool = False) -> Path:
    """Train one model by the recipe ``cfg`` and write its run directory.

    Args:
        cfg: resolved configuration (data path, model, training).
        resume: continue from ``checkpoints/last.ckpt`` of the same run (same split, same history).

    Returns:
        The run directory.
    """
    run_dir = _start_run_dir(cfg, resume)
    prep = prepare_data(cfg, run_dir, reuse_split=True)
    return train_prepared(cfg, prep, run_dir, resume)


def _best_epoch(history: Path, monitor: str, mode: str) -> int | None:
    if not history.exists():
        return None
    with open(history, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(monitor)]
    if not rows:
        return None
    key = (lambda r: float(r[monitor])) if mode == "max" else (lambda r: -float(r[monitor]))
    return int(max(rows, key=key)["epoch"])


def finish_run(run_dir: Path, model: LiverNet, prep: PreparedData, val_dl: DataLoader, test_dl: DataLoader, cfg: RunConfig) -> dict:
    """After training: calibrate on validation, score the test split, write metrics, plots and report."""
    from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
    from liverscope.evaluate.report import plot_confusion_matrix, plot_training_curves
    from liverscope.evaluate.stats import expected_calibration_error, fit_temperature

    device = resolve_device(cfg.train.device)
    metrics: dict = {"split": cfg.data.split, "class_names": prep.class_names}
    temperature = 1.0
    if len(val_dl.dataset):
        val_logits, val_y = infer_logits(model, val_dl, device)
        temperature = float(fit_temperature(val_logits, val_y))
        write_predictions_csv(run_dir / "predictions_val.csv", val_dl.dataset.samples, val_logits, prep.class_names, temperature)
        metrics["validation"] = compute_metrics(val_y, softmax(val_logits, temperature), prep.class_names)
        update_model_json(run_dir, temperature=temperature, validation={k: metrics["validation"].get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")})
    if len(test_dl.dataset):
        test_samples = test_dl.dataset.samples
        logits, y = infer_logits(model, test_dl, device)
        write_predictions_csv(run_dir / "predictions_test.csv", test_samples, logits, prep.class_names, temperature)
        probs = softmax(logits, temperature)
        metrics["test"] = compute_metrics(y, probs, prep.class_names, ci=True)
        metrics["test"]["ece_uncalibrated"] = float(expected_calibration_error(softmax(logits), y))
        metrics["test"]["ece"] = float(expected_calibration_error(probs, y))
        metrics["temperature"] = temperature
        sources = [smp.source or "unknown" for smp in test_samples]
        if len(set(sources)) > 1:
            metrics["test_by_source"] = metrics_by_group(y, probs, sources, prep.class_names)
        cm = np.asarray(metrics["test"]["confusion_matrix"])
        plot_confusion_matrix(cm, prep.class_names, run_dir / "confusion_matrix.png")
    atomic_write_json(run_dir / "metrics.json", metrics)
    if (run_dir / "history.csv").exists():
        plot_training_curves(run_dir / "history.csv", run_dir / "curves.png")
    try:  # a few correct and wrong test cases per class with their Grad-CAM, for the report
        from liverscope.explain import write_cam_gallery

        write_cam_gallery(run_dir, data_root=cfg.data.path)
    except Exception as exc:  # a convenience, like the report: never lose a trained model over it
        _log(f"CAM gallery not written: {type(exc).__name__}: {exc}")
    try:
        from liverscope.evaluate.report import write_report

        write_report(run_dir)
    except Exception as exc:  # the report is a convenience: never lose a trained model over it
        _log(f"report not written: {type(exc).__name__}: {exc}")
    return metrics


# --------------------------------------------------------------------------------------------------
# Cross-validation and fold ensembles (the ResNet-50 + CBAM study's protocol, grouped)
# --------------------------------------------------------------------------------------------------


def read_predictions_csv(path: Path, class_names: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """``(paths, labels as indices, logits, sources)`` from a predictions CSV written by this module."""
    index = {c: i for i, c in enumerate(class_names)}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = [r["path"] for r in rows]
    y = np.array([index[r["label"]] for r in rows], dtype=int)
    logits = np.array([[float(r[f"logit_{c}"]) for c in class_names] for r in rows]).reshape(len(rows), len(class_names))
    sources = [r.get("source") or "unknown" for r in rows]
    return paths, y, logits, sources


def ensemble_logits(fold_logits: Sequence[np.ndarray]) -> np.ndarray:
    """The fold ensemble: the mean of the fold models' logits (softmax is applied afterwards)."""
    return np.mean(np.stack([np.asarray(l, dtype=np.float64) for l in fold_logits]), axis=0)


def cv_assignments(data: CollectedData, cfg: RunConfig, k: int, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Outer hold-out (``test``/``dev``) and fold index (-1 for test) per sample.

    ``grouped`` (default): duplicate groups never straddle the test hold-out or two folds.
    ``random``: the leaky protocol of the published studies, kept to demonstrate the leak.
    """
    from liverscope.data import splits

    labels = np.array([s.label for s in data.samples])
    seed = cfg.train.seed
    grouped = cfg.data.split == "grouped"
    groups = data.groups if grouped else None
    if test_frac > 0:
        if cfg.data.split == "random":
            outer = splits.random_split(labels, test_frac=test_frac, val_frac=0.0, seed=seed)
        else:
            outer = splits.holdout_split(labels, groups, test_frac=test_frac, val_frac=0.0, seed=seed)
    else:
        outer = np.array(["train"] * len(labels))
    dev = np.nonzero(outer != "test")[0]
    fold = np.full(len(labels), -1, dtype=int)
    for i, (_, val_idx) in enumerate(splits.kfold_split(labels[dev], None if groups is None else groups[dev], k=k, seed=seed)):
        fold[dev[val_idx]] = i
    if grouped:
        for i in range(k):
            split_i = np.where(outer == "test", "test", np.where(fold == i, "val", "train"))
            splits.check_leakage(split_i, data.groups, allow=cfg.data.allow_leak)
    return np.where(outer == "test", "test", "dev"), fold


def cross_validate(cfg: RunConfig, k: int = 5, test_frac: float = 0.2, folds: Sequence[int] | None = None, resume: bool = False) -> Path:
    """Stratified (grouped) k-fold training with a hold-out test set and a logit-averaging ensemble.

    The run directory gets ``split.csv`` (with the fold of every development image), ``folds/foldI/``
    (a complete run per fold: its validation fold is the I-th fold), ``oof_predictions.csv`` (every
    development image scored by the model that did not train on it), the ensemble's
    ``predictions_test.csv``, ``cv_folds.csv`` and ``metrics.json`` (``oof``, ``ensemble``, ``folds``).
    Finished folds are kept, so an interrupted ``cv`` resumes where it stopped.

    Args:
        cfg: the recipe (``data.split`` = grouped | stratified | random).
        k: number of folds.
        test_frac: share of the data held out for the ensemble's test (0 for CV only).
        folds: train only these folds (e.g. one per GPU process); ``None`` = all, then aggregate.
        resume: continue an interrupted fold from its last checkpoint.
    """
    import copy

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    data = collect_samples(cfg, run_dir)
    split_path = run_dir / "split.csv"
    if split_path.exists():
        prev, outer = read_split_csv(split_path)
        with open(split_path, newline="") as fh:
            fold_of = {r["path"]: int(r["fold"]) for r in csv.DictReader(fh)}
        by_path = {str(s.path): (s, a) for s, a in zip(prev, outer)}
        keep = [i for i, s in enumerate(data.samples) if str(s.path) in by_path]
        data.samples = [data.samples[i] for i in keep]
        data.groups = data.groups[keep]
        outer = np.array([by_path[str(s.path)][1] for s in data.samples])
        fold = np.array([fold_of[str(s.path)] for s in data.samples])
        _log(f"reusing the cross-validation split in {split_path}")
    else:
        outer, fold = cv_assignments(data, cfg, k, test_frac)
        for s, g in zip(data.samples, data.groups):
            s.group = str(g)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "label", "split", "fold", "group", "source", "sha256"])
        for s, a, f in zip(data.samples, outer, fold):
            w.writerow([str(s.path), s.label, a, f, s.group or "", s.source or "", s.sha256 or ""])
        atomic_write_text(split_path, buf.getvalue())
    k = int(fold.max()) + 1
    todo = list(range(k)) if folds is None else list(folds)
    for i in todo:
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.out_dir, fold_cfg.name = str(run_dir / "folds"), f"fold{i}"
        fold_dir = fold_cfg.run_dir
        if (fold_dir / "metrics.json").exists() and (fold_dir / "model.safetensors").exists():
            _log(f"fold {i}: already trained, kept")
            continue
        fold_resume = resume and (fold_dir / "checkpoints" / "last.ckpt").exists()
        _start_run_dir(fold_cfg, fold_resume)
        assignment = np.where(outer == "test", "test", np.where(fold == i, "val", "train"))
        write_split_csv(fold_dir / "split.csv", data.samples, assignment)
        prep = PreparedData(data.samples, data.class_names, assignment, data.cache, data.pp, data.skipped)
        _log(f"fold {i + 1}/{k}")
        train_prepared(fold_cfg, prep, fold_dir, fold_resume)
    if folds is not None and any(not (run_dir / "folds" / f"fold{i}" / "metrics.json").exists() for i in range(k)):
        return run_dir  # other processes train the remaining folds; aggregate when all are done
    aggregate_cv(run_dir, data.class_names, k, data.pp)
    return run_dir


def aggregate_cv(run_dir: Path, class_names: Sequence[str], k: int, pp: Preprocessing) -> dict:
    """Out-of-fold metrics, the logit-averaging ensemble on the hold-out test set, and the fold table."""
    from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
    from liverscope.evaluate.report import plot_confusion_matrix

    fold_dirs = [run_dir / "folds" / f"fold{i}" for i in range(k)]
    oof_rows, fold_table, test_logits = [], [], []
    test_paths: list[str] = []
    for i, fd in enumerate(fold_dirs):
        paths, y, logits, sources = read_predictions_csv(fd / "predictions_val.csv", class_names)
        temperature = float(read_json(fd / "model.json").get("temperature") or 1.0)
        oof_rows.append((paths, y, logits, sources, temperature))
        fm = read_json(fd / "metrics.json")
        row = {"fold": i, "n_val": len(y)}
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_kappa"):
            row[f"val_{key}"] = (fm.get("validation") or {}).get(key)
            row[f"test_{key}"] = (fm.get("test") or {}).get(key)
        fold_table.append(row)
        if (fd / "predictions_test.csv").exists():
            tp, ty, tl, ts = read_predictions_csv(fd / "predictions_test.csv", class_names)
            test_paths, test_y, test_sources = tp, ty, ts
            test_logits.append(tl)

    paths = [p for r in oof_rows for p in r[0]]
    y = np.concatenate([r[1] for r in oof_rows])
    logits = np.concatenate([r[2] for r in oof_rows])
    sources = [s for r in oof_rows for s in r[3]]
    probs = np.concatenate([softmax(r[2], r[4]) for r in oof_rows])
    result: dict = {"k": k, "class_names": list(class_names)}
    result["oof"] = compute_metrics(y, probs, class_names, ci=True)
    if len(set(sources)) > 1:
        result["oof_by_source"] = metrics_by_group(y, probs, sources, class_names)
    oof_samples = [Sample(Path(p), class_names[t], None, s) for p, t, s in zip(paths, y, sources)]
    write_predictions_csv(run_dir / "oof_predictions.csv", oof_samples, logits, class_names)

    if test_logits:
        ens = ensemble_logits(test_logits)
        ens_probs = softmax(ens)
        result["ensemble"] = compute_metrics(test_y, ens_probs, class_names, ci=True)
        result["test"] = result["ensemble"]
        if len(set(test_sources)) > 1:
            result["ensemble_by_source"] = metrics_by_group(test_y, ens_probs, test_sources, class_names)
            result["test_by_source"] = result["ensemble_by_source"]
        test_samples = [Sample(Path(p), class_names[t], None, s) for p, t, s in zip(test_paths, test_y, test_sources)]
        write_predictions_csv(run_dir / "predictions_test.csv", test_samples, ens, class_names)
        plot_confusion_matrix(np.asarray(result["ensemble"]["confusion_matrix"]), list(class_names), run_dir / "confusion_matrix.png")
    result["folds"] = fold_table
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fold_table[0]))
    w.writeheader()
    w.writerows(fold_table)
    atomic_write_text(run_dir / "cv_folds.csv", buf.getvalue())
    atomic_write_json(run_dir / "metrics.json", result)
    first = read_json(fold_dirs[0] / "model.json")
    atomic_write_json(run_dir / "model.json", {
        "architecture": first["architecture"], "labels": list(class_names), "preprocessing": pp.to_dict(),
        "weights_source": first.get("weights_source"), "temperature": None,
        "ensemble": [str(fd.relative_to(run_dir)) for fd in fold_dirs],
        "validation": {key: result["oof"].get(key) for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
        "liverscope_version": __version__,
    })
    try:
        from liverscope.evaluate.report import write_report

        write_report(run_dir)
    except Exception as exc:
        _log(f"report not written: {type(exc).__name__}: {exc}")
    return result


def launch_folds_on_gpus(cfg_path: Path, k: int, n_gpus: int, extra_args: Sequence[str] = ()) -> None:
    """Train the folds of a cross-validation in parallel, one process per GPU
    (``CUDA_VISIBLE_DEVICES``), each running ``liverscope cv --fold I``; then aggregate."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i % n_gpus))
        cmd = [sys.executable, "-m", "liverscope.cli", "cv", "--recipe", str(cfg_path), "--fold", str(i), "--k", str(k), *extra_args]
        return subprocess.run(cmd, env=env, check=False).returncode

    with ThreadPoolExecutor(max_workers=n_gpus) as ex:
        codes = list(ex.map(one, range(k)))
    if any(codes):
        raise LiverscopeError(f"fold processes failed with exit codes {codes}; rerun `liverscope cv` with the same --name to resume")


__all__ = ["LitClassifier", "fit", "prepare_data", "make_loaders", "assign_splits", "save_model", "finish_run", "cross_validate", "aggregate_cv", "ensemble_logits"]
