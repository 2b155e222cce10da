"""Training: data preparation, ``fit`` and ``finish_run`` (the Lightning pieces are in
:mod:`liverscope.training.lightning_module`).

``fit(cfg)`` is the whole recipe, readable top to bottom like torchvision's reference scripts:
list the data → drop unreadable files → split (grouped by duplicates by default) → preprocess once
into the cache → train with Lightning (checkpoints, early stopping, resumable) → pick the best epoch →
score the test split → write the run directory. ``finish_run`` also calibrates the probabilities (a
temperature on the validation logits, refused when the fit lands on the edge of its range) and fits the
out-of-distribution detector (class means and shared covariance of the training split's pooled
features, threshold on the validation images; :mod:`liverscope.evaluate.ood`). ``model.json`` records
the run's provenance (:mod:`liverscope.training.provenance`: versions, seed, git commit, command, data hash).

The same code runs on one device or as every process of a distributed run (``train.devices``,
``strategy``, ``num_nodes``; docs/scaling.md): the data preparation is :class:`RunData`'s
``prepare_data``, which Lightning runs on global rank 0 alone while the other processes wait, and only
global rank 0 writes the run directory.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, WeightedRandomSampler

from liverscope import rundir
from liverscope.config import RunConfig
from liverscope.data import splits
from liverscope.data.audit import audit_dataset
from liverscope.data.audit_report import write_audit
from liverscope.data.augment import build_transform, check_train_crop
from liverscope.data.datasets import ImageDataset, Sample, check_readable, describe_data, load_samples, warm_cache
from liverscope.data.preprocess import PreprocessCache, Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.evaluate.metrics import compute_metrics
from liverscope.evaluate.plots import plot_training_curves
from liverscope.evaluate.report import write_report
from liverscope.evaluate.scoring import score_predictions
from liverscope.evaluate.ood import DEFAULT_METHOD, DEFAULT_QUANTILE, METHODS, fit_class_gaussian, fit_threshold, flag_summary, ood_scores
from liverscope.evaluate.stats import fit_temperature_checked
from liverscope.explain.gallery import write_cam_gallery
from liverscope.labels import metavir_stages
from liverscope.training.lightning_module import (
    HistoryWriter, LitClassifier, build_trainer, load_best_weights, weight_averaging, log_final_figures, placement, seed_run, tracking_loggers,
    training_loggers, training_precision,
)
from liverscope.models import LiverNet, build_model, get_spec
from liverscope.training.provenance import collect_provenance
from liverscope.speed.training import choose_training_precision
from liverscope.utils import atomic_write_json, file_sha256, log, read_json, resolve_device, softmax, strict_fp32



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


@dataclass
class CollectedData:
    """Readable samples of a run with their duplicate groups (from the audit), before any split."""

    samples: list[Sample]
    class_names: list[str]
    groups: np.ndarray  # duplicate / patient group id per sample
    cache: PreprocessCache
    pp: Preprocessing
    skipped: list[tuple[str, str]]


Listing = tuple[list[Sample], list[str]]


def list_data(cfg: RunConfig) -> Listing:
    """The samples and class names of a recipe's data: a listing only, nothing is decoded or written
    (every process of a distributed run lists the data: the class names size the model's head)."""
    if not cfg.data.path:
        raise LiverscopeError("no data given: pass a class-per-folder tree or a CSV manifest (or run `liverscope demo`)")
    return load_samples(cfg.data.path, frames=cfg.data.frames)


def run_preprocessing(cfg: RunConfig) -> Preprocessing:
    """The preprocessing of a recipe (its model's input normalisation); an unknown model or a training
    window larger than the input fails here, before any data is read."""
    spec = get_spec(cfg.model.name)
    check_train_crop(cfg.data.train_crop, cfg.data.image_size)
    return Preprocessing.from_data_config(cfg.data, spec.mean, spec.std)


def collect_samples(cfg: RunConfig, run_dir: Path, listed: Listing | None = None) -> CollectedData:
    """List the data (or take ``listed``), drop unreadable files (listed in ``skipped.csv``), preprocess
    everything once into the cache, and audit it (``audit.json``/``audit.html``): exact and
    near-duplicate groups, sources."""
    samples, class_names = listed or list_data(cfg)
    samples = [dataclasses.replace(s) for s in samples]  # the audit fills in sha256 and source: not the caller's objects
    pp = run_preprocessing(cfg)  # an unknown model fails here, before the audit and the cache warm-up
    cache = PreprocessCache(pp, cfg.data.cache_dir)
    samples, skipped = check_readable(samples)
    t0 = time.perf_counter()
    samples, bad = warm_cache(samples, cache, workers=max(1, torch.get_num_threads()))
    skipped += bad
    log(f"{len(samples)} images ready ({cache.hits} from cache, {cache.misses} preprocessed) in {time.perf_counter() - t0:.1f}s")
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s); see {rundir.write_skipped(run_dir, skipped)}")
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
    log(f"audit: {summary['files']} files, {summary['distinct']} distinct, {summary['groups']} duplicate groups, {summary['sources']} source(s)")
    if cfg.data.distinct_only:
        seen: set[tuple[str, int | None]] = set()
        keep = []
        for i, smp in enumerate(samples):
            key = (smp.sha256, getattr(smp, "frame", None))  # the frames of one cine file are distinct images
            if key not in seen:
                seen.add(key)
                keep.append(i)
        log(f"distinct_only: keeping {len(keep)} byte-distinct images of {len(samples)}")
        samples = [samples[i] for i in keep]
        groups = groups[keep]
    return CollectedData(samples, class_names, groups, cache, pp, skipped)


def assign_splits(data: CollectedData, cfg: RunConfig) -> np.ndarray:
    """Hold-out split labels (``train``/``val``/``test``) by the configured strategy.

    ``grouped`` keeps every duplicate group (exact, near, and patient) on one side and refuses a leaking
    split; ``stratified`` ignores duplicates; ``random`` is the legacy split the studies used.
    """
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
        log(f"WARNING: {d.split} split: {n_leaky} validation/test images have a duplicate in training (use --split grouped)")
    return assignment


def samples_in_split(listed: Sequence[Sample], split_path: Path) -> tuple[list[Sample], np.ndarray, np.ndarray | None]:
    """The listed samples that a ``split.csv`` holds, with its group, source and sha256, their split and
    (for a cv run) fold. Matched by path: the frames of a cine loop share their file's split; files
    listed but not in the split (added since), or in the split but gone, are left out."""
    prev, assignment, folds = rundir.read_split(split_path)
    row = {str(s.path): i for i, s in enumerate(prev)}
    keep = [(s, row[str(s.path)]) for s in listed if str(s.path) in row]
    samples = [dataclasses.replace(s, group=prev[i].group, source=prev[i].source or s.source, sha256=prev[i].sha256 or s.sha256) for s, i in keep]
    index = np.array([i for _, i in keep], dtype=int)
    return samples, assignment[index], None if folds is None else folds[index]


def prepared_from_split(cfg: RunConfig, listed: Listing, split_path: Path) -> PreparedData:
    """A run's data as its ``split.csv`` has it, read through the shared preprocessing cache.

    Raises:
        LiverscopeError: a class has no training image in the split.
    """
    samples, assignment, _ = samples_in_split(listed[0], split_path)
    class_names = list(listed[1])
    present = {s.label for s, a in zip(samples, assignment) if a == "train"}
    missing = [c for c in class_names if c not in present]
    if missing:
        raise LiverscopeError(f"{cfg.data.path}: classes {missing} have no training images after the split; add images or merge classes")
    pp = run_preprocessing(cfg)
    return PreparedData(samples, class_names, assignment, PreprocessCache(pp, cfg.data.cache_dir), pp, [])


def prepare_data(cfg: RunConfig, run_dir: Path, reuse_split: bool = True, listed: Listing | None = None) -> PreparedData:
    """Validate, audit, cache and split the data of a run into ``split.csv``; a split already there is
    reused (``--resume``: the same split, no second audit)."""
    listed = listed or list_data(cfg)
    split_path = run_dir / rundir.SPLIT
    if reuse_split and split_path.exists():
        log(f"reusing the split in {split_path}")
        return prepared_from_split(cfg, listed, split_path)
    data = collect_samples(cfg, run_dir, listed)
    assignment = assign_splits(data, cfg)
    for s, g in zip(data.samples, data.groups):
        s.group = str(g)
    rundir.write_split(split_path, data.samples, assignment)
    prep = prepared_from_split(cfg, (data.samples, data.class_names), split_path)
    prep.skipped = data.skipped
    return prep


def train_loader(prep: PreparedData, cfg: RunConfig, processes: int = 1) -> DataLoader:
    """The training split, augmented, shuffled (or drawn by the weighted sampler), in batches of
    ``train.batch_size``. Under a distributed strategy Lightning gives each of the ``processes`` its
    share: a plain shuffle becomes its ``DistributedSampler``, the weighted sampler is wrapped by its
    ``DistributedSamplerWrapper``, which splits one weighted draw (seeded alike on every process) between them."""
    t = cfg.train
    train_ds = ImageDataset([s for s, a in zip(prep.samples, prep.splits) if a == "train"], prep.class_names, prep.cache,
                            build_transform(cfg.data.augment, prep.pp, train=True, crop=cfg.data.train_crop))
    gen = torch.Generator().manual_seed(t.seed)
    nw = int(cfg.data.num_workers)
    share = -(-len(train_ds) // max(1, processes))  # what one process sees: drop a ragged last batch only if a full one is left
    common = dict(batch_size=t.batch_size, num_workers=nw, persistent_workers=nw > 0, drop_last=share > t.batch_size)
    if t.balance == "sampler":
        w = class_weights(train_ds.targets, prep.class_names)[train_ds.targets]
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(train_ds), replacement=True, generator=gen)
        return DataLoader(train_ds, sampler=sampler, **common)
    return DataLoader(train_ds, shuffle=True, generator=gen, **common)


def class_weights(targets: Sequence[int], class_names: Sequence[str]) -> np.ndarray:
    """Inverse-frequency class weights w_i = N / (K n_i) of the training targets (the multi-disease
    study's weighted cross-entropy; per image, the weighted sampler's): scikit-learn's ``balanced``.

    Raises:
        LiverscopeError: a class has no training image (its weight would be undefined).
    """
    targets = np.asarray(targets, dtype=int)
    missing = [c for i, c in enumerate(class_names) if not np.any(targets == i)]
    if missing:
        raise LiverscopeError(f"classes {missing} have no training images in this split; add images of them or merge classes")
    return compute_class_weight("balanced", classes=np.arange(len(class_names)), y=targets)


def eval_loader(samples: Sequence[Sample], prep: PreparedData, cfg: RunConfig, shard: tuple[int, int] | None = None) -> DataLoader:
    """The images in order through the evaluation transform (no augmentation): validation, test, and the
    training split as the out-of-distribution detector sees it.

    ``shard=(rank, processes)``: this process's part of them in a distributed run, through Lightning's
    ``UnrepeatedDistributedSampler``, so that each image is scored by exactly one process. (Lightning
    would otherwise give validation a ``DistributedSampler``, which pads the last part by repeating
    images: an image counted twice in the epoch's figures.)"""
    ds = ImageDataset(samples, prep.class_names, prep.cache, build_transform("none", prep.pp, train=False))
    nw = int(cfg.data.num_workers)
    sampler = None if shard is None else UnrepeatedDistributedSampler(ds, num_replicas=shard[1], rank=shard[0], shuffle=False)
    return DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=False, sampler=sampler, num_workers=nw, persistent_workers=nw > 0)


class RunData(L.LightningDataModule):
    """The data of one training run as Lightning hands it to one process or many.

    ``prepare_data`` runs on global rank 0 only, while Lightning holds the other processes at a barrier
    (``lightning_module.DDP_TIMEOUT``: 12 hours, not torch.distributed's 30 minutes): the audit, the preprocessing cache (filled once, shared through the file
    system) and ``split.csv`` (:meth:`prepare`). ``setup`` then runs on every process: the samples and
    their split read back from ``split.csv``; the class weights of ``weighted_ce``. The loaders are
    :func:`train_loader` and :func:`eval_loader` (validation sharded without repeats).

    Args:
        cfg: the run's recipe (``cfg.run_dir`` is the run directory).
        listed: the data's samples and class names (:func:`list_data`).
        has_val: whether the split has validation images (``None``: ``data.val_frac > 0``).
    """

    prepare_data_per_node = False  # one run directory and one cache, on a file system every node sees (docs/scaling.md)

    def __init__(self, cfg: RunConfig, listed: Listing, has_val: bool | None = None):
        super().__init__()
        self.cfg, self.listed = cfg, listed
        self.class_names = list(listed[1])
        self.has_val = cfg.data.val_frac > 0 if has_val is None else has_val
        self.prep: PreparedData | None = None

    @property
    def split_path(self) -> Path:
        return self.cfg.run_dir / rundir.SPLIT

    def prepare(self) -> None:
        """Global rank 0, before every process reads ``split.csv``: audit, cache and split the data."""
        prepare_data(self.cfg, self.cfg.run_dir, reuse_split=True, listed=self.listed)

    def prepare_data(self) -> None:
        self.prepare()

    def prepared(self) -> PreparedData:
        """The run's samples and split (read from ``split.csv`` on first use)."""
        if self.prep is None:
            self.prep = prepared_from_split(self.cfg, self.listed, self.split_path)
        return self.prep

    def _shard(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        prep = self.prepared()
        counts = {k: int((prep.splits == k).sum()) for k in ("train", "val", "test")}
        log(f"split ({self.cfg.data.split}): {counts}; classes: {prep.class_names}")
        processes = self._shard()[1]
        if self.has_val and counts["val"] < processes:
            raise LiverscopeError(f"{self.split_path}: {counts['val']} validation image(s) for {processes} process(es); every process needs one: "
                                  "add images, raise data.val_frac, or set data.val_frac=0 to train without validation")
        if self.cfg.train.balance == "weighted_ce" and self.trainer is not None:
            targets = [prep.class_names.index(s.label) for s, a in zip(prep.samples, prep.splits) if a == "train"]
            self.trainer.lightning_module.set_class_weights(class_weights(targets, prep.class_names))

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.prepared(), self.cfg, self._shard()[1])

    def val_dataloader(self):
        prep = self.prepared()
        if not self.has_val:
            return []
        rank, processes = self._shard()
        val = [s for s, a in zip(prep.samples, prep.splits) if a == "val"]
        return eval_loader(val, prep, self.cfg, shard=(rank, processes) if processes > 1 else None)

    def loaders(self, split: str) -> DataLoader:
        """One split in order, in this process alone (scoring after training)."""
        prep = self.prepared()
        return eval_loader([s for s, a in zip(prep.samples, prep.splits) if a == split], prep, self.cfg)


# --------------------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------------------


def infer_outputs(model: LiverNet, loader, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, pooled features and targets of a model over a DataLoader of ``(x, y)`` batches (eval
    mode, no grad; one forward pass gives logits and features, see :meth:`liverscope.models.LiverNet.forward_with_features`).
    In true fp32 whatever the training precision (TF32 off on a GPU: :func:`~liverscope.utils.strict_fp32`): the
    split's figures in ``metrics.json`` say ``"precision": "fp32"``."""
    model.eval().to(device)
    logits, feats, targets = [], [], []
    with torch.inference_mode(), strict_fp32(device):
        for x, y in loader:
            lg, f = model.forward_with_features(x.to(device))
            logits.append(lg.float().cpu())
            feats.append(f.float().cpu())
            targets.append(torch.as_tensor(y))
    return torch.cat(logits).numpy(), torch.cat(feats).numpy(), torch.cat(targets).numpy()


def measured_precision(cfg: RunConfig, model: LiverNet) -> dict | None:
    """``train.precision: auto`` on one CPU or one GPU: chosen by timing a few steps of ``model`` at the run's
    batch and input size in fp32 and bf16-mixed (:func:`~liverscope.speed.training.choose_training_precision`).
    ``None`` for a precision asked for, and for a run of several processes, whose ranks must agree
    (``training_precision`` then decides, without timing)."""
    t, where = cfg.train, placement(cfg.train)
    devices = where["devices"]
    single = devices == 1 or (isinstance(devices, list) and len(devices) == 1)
    if t.precision != "auto" or not single or where["num_nodes"] != 1 or where["accelerator"] not in ("cpu", "gpu", "cuda"):
        return None
    device = "cpu" if where["accelerator"] == "cpu" else f"cuda:{devices[0] if isinstance(devices, list) else 0}"
    if device != "cpu" and not torch.cuda.is_available():
        return None  # Lightning says why when the trainer is built
    size = cfg.data.train_crop or cfg.data.image_size
    choice = choose_training_precision(model, cfg.model.name, t.batch_size, size, device, t.channels_last)
    log(f"train.precision auto → {choice['precision']} ({choice['reason']})")
    return choice


def train_prepared(cfg: RunConfig, data: RunData, run_dir: Path, resume: bool = False) -> Path:
    """Train on a run's data (:class:`RunData`: prepared by global rank 0 inside ``trainer.fit``) and
    write ``run_dir`` = ``cfg.run_dir``.

    Used by :func:`fit` (one hold-out split) and :func:`liverscope.training.cv.cross_validate` (one call per
    fold). Every process of a distributed run calls it: they train together; global rank 0 alone then
    scores the splits and writes the run directory, the others return at once.
    """
    seed_run(cfg.train.seed)
    last = rundir.last_checkpoint(run_dir)
    m = cfg.model
    model = build_model(m.name, len(data.class_names), m.head, m.pretrained, m.weights, m.freeze_backbone, m.dropout, m.hidden)
    lit = LitClassifier(model, cfg.train, None, metavir_stages(data.class_names), config=cfg.to_dict())  # weighted_ce: RunData.setup

    monitor = cfg.train.monitor if data.has_val else "train_loss"
    mode = "min" if monitor.endswith("loss") else "max"
    ckpt = ModelCheckpoint(dirpath=run_dir / rundir.CHECKPOINTS, filename="best", monitor=monitor, mode=mode, save_last=True, save_top_k=1, enable_version_counter=False)
    loggers = training_loggers(run_dir, tracking_loggers(cfg, run_dir))  # CSV always (history.csv is made from it), then the tracker
    callbacks: list = [ckpt, HistoryWriter(run_dir / rundir.HISTORY, loggers[0], resume), *weight_averaging(cfg.train)]
    select = selection(cfg)
    if cfg.train.early_stop_patience > 0 and data.has_val and select == "best":
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.early_stop_patience))
    precision_file = run_dir / rundir.TRAINING_PRECISION
    # a resumed run trains in the precision its first session measured (timings differ from call to call)
    chosen = read_json(precision_file) if resume and precision_file.exists() else measured_precision(cfg, model)
    trainer = build_trainer(cfg, run_dir, callbacks, loggers, precision=chosen and chosen["precision"])
    rundir.start_run(cfg, resume, write=trainer.is_global_zero)  # every process checks; rank 0 writes config.yaml
    if chosen and trainer.is_global_zero:
        precision_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(precision_file, chosen)
    t0 = time.perf_counter()
    trainer.fit(lit, datamodule=data, ckpt_path=str(last) if resume else None)
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return run_dir
    kept = ckpt.last_model_path if select == "last" else ckpt.best_model_path
    if kept:
        load_best_weights(model, kept)

    prep = data.prepared()
    best_epoch = _best_epoch(run_dir / rundir.HISTORY, None if select == "last" else monitor, mode)
    rundir.save_model(run_dir, model, prep.class_names, prep.pp, {
        "best_epoch": best_epoch, "monitor": monitor, "select": select, "split": cfg.data.split, "train_seconds": round(train_seconds, 1),
        "processes": trainer.world_size, "training_precision": chosen or {"precision": str(trainer.precision), "reason": f"train.precision {cfg.train.precision}"},
        "provenance": collect_provenance(cfg.train.seed, run_dir / rundir.SPLIT),
        "training_data": describe_data(cfg.data.path, [s.source for s in prep.samples]),  # the report and the app name it
    })
    device = "cuda" if trainer.strategy.root_device.type == "cuda" else "cpu"
    metrics = finish_run(run_dir, model, prep, data.loaders("val"), data.loaders("test"), cfg, device=device)
    log_final_figures(loggers, metrics, step=trainer.global_step, config=cfg.to_dict())
    log(f"trained in {train_seconds:.0f}s; run directory: {run_dir}")
    return run_dir


def fit(cfg: RunConfig, resume: bool = False) -> Path:
    """Train one model by the recipe ``cfg`` and write its run directory.

    Every process of a distributed run calls it (Lightning's launcher, ``torchrun`` or ``srun`` start
    them); only global rank 0 audits, caches, splits and writes.

    Args:
        cfg: resolved configuration (data path, model, training, placement).
        resume: continue from ``checkpoints/last.ckpt`` of the same run (same split, same history).

    Returns:
        The run directory.
    """
    return train_prepared(cfg, RunData(cfg, list_data(cfg)), cfg.run_dir, resume)


def selection(cfg: RunConfig) -> str:
    """The weights a run keeps (``train.select``): ``best`` (the epoch with the best ``train.monitor``) or
    ``last`` (the final epoch, chosen by nothing). ``auto`` is ``best`` here; :func:`liverscope.training.cv.fold_config`
    makes it ``last`` for cv folds, whose validation images are the out-of-fold ones. Under ``last`` early
    stopping is off: it too would choose the epoch on the validation images."""
    select = "best" if cfg.train.select == "auto" else cfg.train.select
    if select == "last" and cfg.train.early_stop_patience > 0:
        log("train.select last: early stopping is off (it would choose the epoch on the validation images); every epoch is trained")
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


def finish_run(run_dir: Path, model: LiverNet, prep: PreparedData, val_dl: DataLoader, test_dl: DataLoader, cfg: RunConfig,
               device: str | None = None) -> dict:
    """After training: calibrate on validation, fit the out-of-distribution detector, score the test
    split, write metrics, plots and report (on ``device``, default ``train.device``)."""
    device = resolve_device(device or cfg.train.device)
    metrics: dict = {"split": cfg.data.split, "class_names": prep.class_names}
    temperature, ood = 1.0, None
    if len(val_dl.dataset):
        val_logits, val_feats, val_y = infer_outputs(model, val_dl, device)
        fit = fit_temperature_checked(val_logits, val_y)
        if fit["warning"]:
            log(f"WARNING: {fit['warning']}")
        temperature = fit["temperature"]
        metrics["validation"] = compute_metrics(val_y, softmax(val_logits, temperature), prep.class_names)
        rundir.update_model_meta(run_dir, temperature=temperature, temperature_fit=fit,  # 1.0 when the fit is refused
                                 validation={k: metrics["validation"].get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")})
        train_samples = [s for s, a in zip(prep.samples, prep.splits) if a == "train"]
        try:
            ood = fit_ood(run_dir, model, eval_loader(train_samples, prep, cfg), val_logits, val_feats, device)
        except Exception as exc:  # the flag is a safeguard on top of the model: never lose a trained model over it
            log(f"WARNING: out-of-distribution detector not fitted ({type(exc).__name__}: {exc}); predictions carry no OOD flag")
        rundir.write_predictions(run_dir / rundir.PREDICTIONS_VAL, val_dl.dataset.samples, val_logits, prep.class_names, temperature,
                                 ood=(ood["val_scores"], ood["threshold"]) if ood else None)
        metrics["temperature_fit"] = fit
        if ood:
            metrics["ood"] = {k: ood[k] for k in ("method", "threshold", "thresholds", "quantile", "validation")}
    if len(test_dl.dataset):
        logits, feats, y = infer_outputs(model, test_dl, device)
        test_ood = None
        if ood:
            scores = ood_scores(ood["method"], logits, feats, ood)
            test_ood = (scores, ood["threshold"])
            metrics["ood"]["test"] = flag_summary(scores, ood["threshold"])
        scored = score_predictions(run_dir, rundir.PREDICTIONS_TEST, test_dl.dataset.samples, y, logits, prep.class_names, temperature, ood=test_ood)
        metrics["test"] = scored["metrics"]
        metrics["temperature"] = temperature
        if scored["by_source"]:
            metrics["test_by_source"] = scored["by_source"]
    rundir.write_metrics(run_dir, metrics)
    if (run_dir / rundir.HISTORY).exists():
        plot_training_curves(run_dir / rundir.HISTORY, run_dir / "curves.png")
    try:  # a few correct and wrong test cases per class with their Grad-CAM, for the report
        write_cam_gallery(run_dir, data_root=cfg.data.path)
    except Exception as exc:  # a convenience, like the report: never lose a trained model over it
        log(f"CAM gallery not written: {type(exc).__name__}: {exc}")
    write_report_safely(run_dir)
    return metrics


def fit_ood(run_dir: Path, model: LiverNet, train_loader: DataLoader, val_logits: np.ndarray, val_feats: np.ndarray, device: str = "cpu",
            quantile: float = DEFAULT_QUANTILE) -> dict:
    """Fit and store a run's out-of-distribution detector (``ood.safetensors``, ``model.json["ood"]``).

    The class means and the shared, shrunk covariance come from the pooled features of the training
    split seen without augmentation (``train_loader``); the threshold of every method in
    :data:`~liverscope.evaluate.ood.METHODS` is the ``quantile`` of the validation images' scores, so
    about that share of them pass. The run ships :data:`~liverscope.evaluate.ood.DEFAULT_METHOD`.

    Returns:
        ``model.json["ood"]`` plus the arrays (``means``, ``classes``, ``precision``) and ``val_scores``
        (the validation images' scores under the shipped method).
    """
    _, train_feats, train_y = infer_outputs(model, train_loader, device)
    gauss = fit_class_gaussian(train_feats, train_y, model.num_classes)
    # stored as float32; the thresholds are fitted with exactly the stored statistics
    stats = {"means": gauss["means"].astype(np.float32), "classes": gauss["classes"], "precision": gauss["precision"].astype(np.float32)}
    val_scores = {m: ood_scores(m, val_logits, val_feats, stats) for m in METHODS}
    thresholds = {m: fit_threshold(val_scores[m], quantile) for m in METHODS}
    info = {
        "method": DEFAULT_METHOD, "threshold": thresholds[DEFAULT_METHOD], "thresholds": thresholds, "quantile": quantile,
        "validation": flag_summary(val_scores[DEFAULT_METHOD], thresholds[DEFAULT_METHOD]),
        "validation_share_flagged": {m: flag_summary(val_scores[m], thresholds[m])["share"] for m in METHODS},
        "n_train": int(len(train_y)), "feature_dim": int(train_feats.shape[1]),
    }
    rundir.save_ood(run_dir, stats, info)
    log(f"out-of-distribution flag ({DEFAULT_METHOD}): threshold {info['threshold']:.4g} passes "
        f"{info['validation']['n'] - info['validation']['flagged']} of {info['validation']['n']} validation images")
    return dict(info, **stats, val_scores=val_scores[DEFAULT_METHOD])


def fit_run_ood(run_dir: str | Path, device: str = "auto", quantile: float = DEFAULT_QUANTILE) -> dict:
    """Fit the out-of-distribution detector of an already trained run (one trained before liverscope
    scored OOD) from its own ``split.csv``: ``train`` rows for the class Gaussian, ``val`` rows for the
    threshold. Images are read through the run's preprocessing cache (recomputed where it is gone).

    Raises:
        LiverscopeError: no trained model, or a split without training or validation rows.
    """
    run_dir = Path(run_dir)
    model, meta = rundir.load_model(run_dir)
    cfg = rundir.read_config(run_dir)
    samples, assignment, _ = rundir.read_split(run_dir / rundir.SPLIT)
    pp = Preprocessing.from_dict(meta["preprocessing"])
    prep = PreparedData(samples, list(meta["labels"]), assignment, PreprocessCache(pp, cfg.data.cache_dir), pp, [])
    part = {k: [s for s, a in zip(samples, assignment) if a == k] for k in ("train", "val")}
    for k, rows in part.items():
        if not rows:
            raise LiverscopeError(f"{run_dir / rundir.SPLIT}: no '{k}' rows; the OOD detector needs training images (class means) and validation images (threshold)")
    device = resolve_device(device)
    val_logits, val_feats, _ = infer_outputs(model, eval_loader(part["val"], prep, cfg), device)
    return fit_ood(run_dir, model, eval_loader(part["train"], prep, cfg), val_logits, val_feats, device, quantile)


def write_report_safely(run_dir: Path) -> None:
    """The report is a convenience: a failure is logged, never allowed to lose a trained model."""
    try:
        write_report(run_dir)
    except Exception as exc:
        log(f"report not written: {type(exc).__name__}: {exc}")


__all__ = [
    "LitClassifier", "HistoryWriter", "CollectedData", "PreparedData", "Listing", "list_data", "run_preprocessing", "collect_samples",
    "assign_splits", "samples_in_split", "prepared_from_split", "prepare_data", "RunData", "train_loader", "class_weights", "selection",
    "eval_loader", "training_precision", "infer_outputs", "train_prepared", "fit", "finish_run", "fit_ood", "fit_run_ood", "write_report_safely",
]
