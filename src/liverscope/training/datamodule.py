"""The data of a training run: list → drop unreadable files → audit → preprocess once into the cache →
split (grouped by duplicates by default) → loaders; and :class:`RunDataModule`, the same as Lightning
hands it to one process or many (``prepare_data`` on global rank 0 alone, ``setup`` on every process).
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
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, WeightedRandomSampler

from liverscope import rundir
from liverscope.config import RunConfig
from liverscope.data import splits
from liverscope.data.audit import audit_dataset
from liverscope.data.audit_report import write_audit
from liverscope.data.augment import build_transform, check_train_crop
from liverscope.data.datasets import ImageDataset, Sample, check_readable, load_samples, warm_cache
from liverscope.data.preprocess import PreprocessCache, Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.models import get_spec
from liverscope.utils import file_sha256, log


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
        raise LiverscopeError(
            "no data given: pass a class-per-folder tree or a CSV manifest (or run `liverscope demo`)"
        )
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
    samples = [
        dataclasses.replace(s) for s in samples
    ]  # the audit fills in sha256 and source: not the caller's objects
    pp = run_preprocessing(cfg)  # an unknown model fails here, before the audit and the cache warm-up
    cache = PreprocessCache(pp, cfg.data.cache_dir)
    samples, skipped = check_readable(samples)
    t0 = time.perf_counter()
    samples, bad = warm_cache(samples, cache, workers=max(1, torch.get_num_threads()))
    skipped += bad
    log(
        f"{len(samples)} images ready ({cache.hits} from cache, {cache.misses} preprocessed) in {time.perf_counter() - t0:.1f}s"
    )
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
    log(
        f"audit: {summary['files']} files, {summary['distinct']} distinct, {summary['groups']} duplicate groups, {summary['sources']} source(s)"
    )
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
        assignment = splits.holdout_split(
            labels, data.groups, test_frac=d.test_frac, val_frac=d.val_frac, seed=seed
        )
        splits.check_leakage(assignment, data.groups, allow=d.allow_leak)
    else:
        raise LiverscopeError(f"unknown split '{d.split}' (grouped, stratified, random)")
    leaks = splits.find_leaks(assignment, data.groups)
    if leaks and d.split != "grouped":
        n_leaky = sum(len(idx) for _, idx in leaks)
        log(
            f"WARNING: {d.split} split: {n_leaky} validation/test images have a duplicate in training (use --split grouped)"
        )
    return assignment


def samples_in_split(
    listed: Sequence[Sample], split_path: Path
) -> tuple[list[Sample], np.ndarray, np.ndarray | None]:
    """The listed samples that a ``split.csv`` holds, with its group, source and sha256, their split and
    (for a cv run) fold. Matched by path: the frames of a cine loop share their file's split; files
    listed but not in the split (added since), or in the split but gone, are left out."""
    prev, assignment, folds = rundir.read_split(split_path)
    row = {str(s.path): i for i, s in enumerate(prev)}
    keep = [(s, row[str(s.path)]) for s in listed if str(s.path) in row]
    samples = [
        dataclasses.replace(
            s, group=prev[i].group, source=prev[i].source or s.source, sha256=prev[i].sha256 or s.sha256
        )
        for s, i in keep
    ]
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
        raise LiverscopeError(
            f"{cfg.data.path}: classes {missing} have no training images after the split; add images or merge classes"
        )
    pp = run_preprocessing(cfg)
    return PreparedData(samples, class_names, assignment, PreprocessCache(pp, cfg.data.cache_dir), pp, [])


def prepare_data(
    cfg: RunConfig, run_dir: Path, reuse_split: bool = True, listed: Listing | None = None
) -> PreparedData:
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
    train_ds = ImageDataset(
        [s for s, a in zip(prep.samples, prep.splits) if a == "train"],
        prep.class_names,
        prep.cache,
        build_transform(cfg.data.augment, prep.pp, train=True, crop=cfg.data.train_crop),
    )
    gen = torch.Generator().manual_seed(t.seed)
    nw = int(cfg.data.num_workers)
    share = -(
        -len(train_ds) // max(1, processes)
    )  # what one process sees: drop a ragged last batch only if a full one is left
    common = dict(
        batch_size=t.batch_size, num_workers=nw, persistent_workers=nw > 0, drop_last=share > t.batch_size
    )
    if t.balance == "sampler":
        w = class_weights(train_ds.targets, prep.class_names)[train_ds.targets]
        sampler = WeightedRandomSampler(
            torch.as_tensor(w, dtype=torch.double), num_samples=len(train_ds), replacement=True, generator=gen
        )
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
        raise LiverscopeError(
            f"classes {missing} have no training images in this split; add images of them or merge classes"
        )
    return compute_class_weight("balanced", classes=np.arange(len(class_names)), y=targets)


def eval_loader(
    samples: Sequence[Sample], prep: PreparedData, cfg: RunConfig, shard: tuple[int, int] | None = None
) -> DataLoader:
    """The images in order through the evaluation transform (no augmentation): validation, test, and the
    training split as the out-of-distribution detector sees it.

    ``shard=(rank, processes)``: this process's part of them in a distributed run, through Lightning's
    ``UnrepeatedDistributedSampler``, so that each image is scored by exactly one process. (Lightning
    would otherwise give validation a ``DistributedSampler``, which pads the last part by repeating
    images: an image counted twice in the epoch's figures.)"""
    ds = ImageDataset(samples, prep.class_names, prep.cache, build_transform("none", prep.pp, train=False))
    nw = int(cfg.data.num_workers)
    sampler = (
        None
        if shard is None
        else UnrepeatedDistributedSampler(ds, num_replicas=shard[1], rank=shard[0], shuffle=False)
    )
    return DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=nw,
        persistent_workers=nw > 0,
    )


class RunDataModule(L.LightningDataModule):
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

    prepare_data_per_node = (
        False  # one run directory and one cache, on a file system every node sees (docs/scaling.md)
    )

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
            raise LiverscopeError(
                f"{self.split_path}: {counts['val']} validation image(s) for {processes} process(es); every process needs one: "
                "add images, raise data.val_frac, or set data.val_frac=0 to train without validation"
            )
        if self.cfg.train.balance == "weighted_ce" and self.trainer is not None:
            targets = [
                prep.class_names.index(s.label) for s, a in zip(prep.samples, prep.splits) if a == "train"
            ]
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
