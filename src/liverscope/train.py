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
from liverscope.utils import atomic_path, atomic_write_json, atomic_write_text, read_json, resolve_device, seed_everything


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


def _log(msg: str) -> None:
    print(f"[liverscope] {msg}", file=sys.stderr, flush=True)


def duplicate_groups(samples: Sequence[Sample]) -> list[str]:
    """Group id per sample: the manifest's ``group`` (patient) when given, merged with exact and
    near-duplicate images (see :mod:`liverscope.data.audit`), so no copy of an image straddles a split."""
    from liverscope.data.audit import duplicate_group_ids

    return duplicate_group_ids(samples)


def assign_splits(samples: Sequence[Sample], class_names: Sequence[str], cfg: RunConfig) -> np.ndarray:
    """Hold-out split labels (``train``/``val``/``test``) by the configured strategy."""
    from liverscope.data import splits

    d = cfg.data
    labels = np.array([s.label for s in samples])
    seed = cfg.train.seed
    if d.split == "random":
        return splits.random_split(labels, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed)
    if d.split == "stratified":
        return splits.holdout_split(labels, None, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed)
    if d.split == "grouped":
        groups = np.array(duplicate_groups(samples))
        for s, g in zip(samples, groups):
            s.group = s.group or str(g)
        assignment = splits.holdout_split(labels, groups, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed)
        splits.check_leakage(assignment, groups, allow=d.allow_leak)
        return assignment
    raise LiverscopeError(f"unknown split '{d.split}' (grouped, stratified, random)")


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
    """List, validate, split and cache the data of a run (the split is reused on resume)."""
    if not cfg.data.path:
        raise LiverscopeError("no data given: pass a class-per-folder tree or a CSV manifest (or run `liverscope demo`)")
    samples, class_names = load_samples(cfg.data.path)
    pp = Preprocessing.from_data_config(cfg.data)
    cache = PreprocessCache(pp, cfg.data.cache_dir)
    split_path = run_dir / "split.csv"
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
    for s in samples:
        s.sha256 = s.sha256 or file_sha256(s.path)
    if reuse_split and split_path.exists():
        prev, assignment = read_split_csv(split_path)
        by_path = {str(s.path): a for s, a in zip(prev, assignment)}
        samples = [s for s in samples if str(s.path) in by_path]
        assignment = np.array([by_path[str(s.path)] for s in samples])
        _log(f"reusing the split in {split_path}")
    else:
        assignment = assign_splits(samples, class_names, cfg)
        write_split_csv(split_path, samples, assignment)
    present = {s.label for s, a in zip(samples, assignment) if a == "train"}
    missing = [c for c in class_names if c not in present]
    if missing:
        raise LiverscopeError(f"{cfg.data.path}: classes {missing} have no training images after the split; add images or merge classes")
    return PreparedData(samples, class_names, assignment, cache, pp, skipped)


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


def _trainer(cfg: RunConfig, run_dir: Path, callbacks: list) -> L.Trainer:
    t = cfg.train
    device = resolve_device(t.device)
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
        limit_train_batches=t.max_train_batches if t.max_train_batches else 1.0,
        deterministic=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def fit(cfg: RunConfig, resume: bool = False) -> Path:
    """Train one model by the recipe ``cfg`` and write its run directory.

    Args:
        cfg: resolved configuration (data path, model, training).
        resume: continue from ``checkpoints/last.ckpt`` of the same run (same split, same history).

    Returns:
        The run directory.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    run_dir = cfg.run_dir
    if run_dir.exists() and (run_dir / "model.json").exists() and not resume and (run_dir / "checkpoints" / "last.ckpt").exists():
        raise LiverscopeError(f"{run_dir} already holds a trained run; choose another --name, or --resume to continue it")
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise LiverscopeError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt); start without --resume")
    seed_everything(cfg.train.seed)
    save_config(cfg, run_dir / "config.yaml")

    prep = prepare_data(cfg, run_dir, reuse_split=True)
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
    save_model(run_dir, model, prep.class_names, prep.pp, {"best_epoch": best_epoch, "monitor": monitor, "split": cfg.data.split})
    finish_run(run_dir, model, prep, val_dl, test_dl, cfg)
    _log(f"trained in {train_seconds:.0f}s; run directory: {run_dir}")
    return run_dir


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
    from liverscope.evaluate.metrics import compute_metrics
    from liverscope.evaluate.report import plot_confusion_matrix, plot_training_curves
    from liverscope.evaluate.stats import expected_calibration_error, fit_temperature

    device = resolve_device(cfg.train.device)
    metrics: dict = {"split": cfg.data.split, "class_names": prep.class_names}
    temperature = 1.0
    if len(val_dl.dataset):
        val_logits, val_y = infer_logits(model, val_dl, device)
        temperature = float(fit_temperature(val_logits, val_y))
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
        cm = np.asarray(metrics["test"]["confusion_matrix"])
        plot_confusion_matrix(cm, prep.class_names, run_dir / "confusion_matrix.png")
    atomic_write_json(run_dir / "metrics.json", metrics)
    if (run_dir / "history.csv").exists():
        plot_training_curves(run_dir / "history.csv", run_dir / "curves.png")
    try:
        from liverscope.evaluate.report import write_report

        write_report(run_dir)
    except Exception as exc:  # the report is a convenience: never lose a trained model over it
        _log(f"report not written: {type(exc).__name__}: {exc}")
    return metrics


__all__ = ["LitClassifier", "fit", "prepare_data", "make_loaders", "assign_splits", "save_model", "finish_run"]
