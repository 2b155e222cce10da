"""``liverscope segment train``: pseudo-masks or masks → grouped split → U-Net → scores → run directory,
one segmenter per target, configured by a :class:`~liverscope.segment.config.SegmentConfig`
(:func:`train_segmenter` and its steps). ``segment predict`` and ``segment score`` work on files:
:mod:`liverscope.segment.mask_files`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope.data.audit import duplicate_group_ids
from liverscope.data.datasets import Sample, check_readable, load_samples
from liverscope.data.geometry import to_model, to_original
from liverscope.data.sector import sector_mask
from liverscope.data.splits import check_leakage, holdout_split
from liverscope.errors import LiverscopeError, UsageError
from liverscope.rundir import MODEL_META, read_preprocessing
from liverscope.segment.config import SegmentConfig, checked
from liverscope.segment.encoder_unet import check_encoder_weights
from liverscope.segment.heldout import (
    FittedSegmenter,
    SegmentSetup,
    SegmentTargets,
    predict_held_out,
    score_held_out,
    segmenter_meta,
    summary_lines,
    write_segmenter,
)
from liverscope.segment.images import LoadedImage, load_images, load_masks_for
from liverscope.segment.nnunet import check_engine, fit_nnunet, nnunet_dir
from liverscope.segment.pseudo import check_out_dir, pseudo_masks
from liverscope.segment.rules import confident_targets
from liverscope.segment.training import check_resumable, fit_unet
from liverscope.segment.unet import check_size, load_segmenter, make_arch, predict_proba, segmenter_files
from liverscope.utils import atomic_write_png, log, read_json, resolve_device

#: The ``lesion`` segmenter's split and checkpoint folder (another target's: :func:`segmenter_files`).
SEG_SPLIT = segmenter_files()["split"]
#: Lightning's checkpoints of ``segment train`` (``best.ckpt``, ``last.ckpt``: what ``resume`` continues from).
SEGMENTER_CHECKPOINTS = segmenter_files()["checkpoints"]


def segmentation_split(
    items: Sequence[LoadedImage], *, test_frac: float = 0.2, val_frac: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Grouped, stratified train / val / test split: exact and near-duplicate images (audit) stay together."""
    samples = [Sample(it.path, it.label or "all") for it in items]
    groups = duplicate_group_ids(samples, annotate=False)
    labels = [s.label for s in samples]
    split = holdout_split(labels, groups, test_frac=test_frac, val_frac=val_frac, seed=seed)
    check_leakage(split, groups, paths=[s.path for s in samples])
    return split


def _stack(masks: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack(masks).astype(bool) if len(masks) else np.zeros((0, size, size), bool)


def _segmenter_inputs(items: list[LoadedImage], pp, seg_pp, roots: list[Path]) -> list[LoadedImage]:
    """``items`` preprocessed with ``seg_pp`` (the same files, loaded again) when it differs from ``pp``."""
    if seg_pp == pp:
        return items
    again, _ = load_images([it.path for it in items], seg_pp, roots=roots, labels=[it.label for it in items])
    if [it.path for it in again] != [it.path for it in items]:
        raise LiverscopeError(
            f"images changed while being read ({len(items)} read once, {len(again)} again); run the command again"
        )
    return again


def predicted_regions(
    run_dir: str | Path, target: str, items: list[LoadedImage], pp, roots: Sequence[Path]
) -> list[np.ndarray]:
    """Masks of the run's ``target`` segmenter (e.g. ``liver``) on ``items`` — model inputs made with
    ``pp`` — on the items' grid (probability > 0.5). A segmenter that took its inputs at another size or
    crop reads the same files again with its own preprocessing; its masks are mapped back through the
    original image. Normalisation does not matter: the U-Net takes the uint8 inputs.

    Raises:
        LiverscopeError: the run has no ``target`` segmenter (says how to train one).
    """
    seg = load_segmenter(run_dir, target=target)
    if seg is None:
        raise LiverscopeError(
            f"{run_dir}: no '{target}' segmenter to restrict the CAMs to; train one first with "
            f"`liverscope segment train {run_dir} DATA --masks MASK_DIR --target {target}`"
        )
    own = seg.preprocessing
    seg_pp = pp if own is None else dataclasses.replace(own, mean=pp.mean, std=pp.std)
    seg_items = _segmenter_inputs(items, pp, seg_pp, list(roots))
    probs = predict_proba(seg, [it.input for it in seg_items])
    if seg_items is items:
        return [p > 0.5 for p in probs]
    return [
        to_model(to_original(p > 0.5, s.shape, s.box), it.box, pp.size)
        for p, s, it in zip(probs, seg_items, items)
    ]


def _setup(run_dir: str | Path, data: str | Path, cfg: SegmentConfig, resume: bool) -> SegmentSetup:
    """The configuration checked and everything that needs no image: the classifier's preprocessing,
    the segmenter's size and grid, its architecture (and its ImageNet weights, or with ``resume`` the
    interrupted fit's checkpoint of the same network), the device."""
    check_engine(cfg.engine.name, confident=cfg.pseudo.confident)
    cfg = checked(cfg)
    run_dir, data = Path(run_dir), Path(data)
    files = segmenter_files(cfg.target)
    pp = read_preprocessing(run_dir)
    cfg.train.size = size = int(cfg.train.size or pp.size)
    arch = make_arch(cfg.network.arch, cfg.network.in_channels, cfg.network.channels)
    if cfg.engine.name != "nnunet":  # what can only fail later, said before any image is read
        if resume:
            check_resumable(run_dir / files["checkpoints"], arch)  # no checkpoint, or one of another network
        else:
            check_encoder_weights(arch)  # offline without the weights package
    check_size(size, arch["strides"])
    seg_pp = dataclasses.replace(pp, size=size) if size > pp.size else pp
    roots = [data] if data.is_dir() else [data.parent]
    return SegmentSetup(run_dir, data, cfg, files, pp, seg_pp, arch, resolve_device(cfg.train.device), roots)


def _load_targets(s: SegmentSetup, write_pseudo: bool) -> SegmentTargets:
    """The images of the data decoded and preprocessed, with their targets: the given masks, or CAM
    pseudo-masks (:func:`_pseudo_targets`); images without a mask and unreadable files are skipped."""
    samples, _ = load_samples(s.data)
    samples, skipped = check_readable(samples)
    # given masks: straight at the segmenter's preprocessing; pseudo-masks: the classifier's first (its CAMs)
    pp = s.pp if s.cfg.masks is None else s.seg_pp
    items, bad = load_images([x.path for x in samples], pp, roots=s.roots, labels=[x.label for x in samples])
    t = _pseudo_targets(s, items, write_pseudo) if s.cfg.masks is None else _given_masks(s, items)
    t.skipped = skipped + bad + t.skipped
    if len(t.items) < 3:
        raise LiverscopeError(
            f"{s.data}: {len(t.items)} usable image(s) with masks; "
            "the U-Net needs at least 3 (train, val, test)"
        )
    log(f"segmentation targets ({s.cfg.target}): {t.desc}; {len(t.items)} images at {s.seg_pp.size} px")
    return t


def _given_masks(s: SegmentSetup, items: list[LoadedImage]) -> SegmentTargets:
    grid = s.seg_pp.size
    targets, problems = load_masks_for(items, Path(s.cfg.masks), grid)
    keep = [i for i, t in enumerate(targets) if t is not None]
    items, targets = [items[i] for i in keep], [targets[i] for i in keep]
    sectors = _stack([sector_mask(it.input) for it in items], grid)
    return SegmentTargets(items, _stack(targets, grid), sectors, None, f"masks from {s.cfg.masks}", problems)


def _only_positive(
    run_dir: Path, positive: list[str], classes: np.ndarray, pseudo: np.ndarray, weights: np.ndarray | None
) -> None:
    """Empty the pseudo-masks (and count every pixel) of images whose explained class is not ``positive``."""
    names = read_json(run_dir / MODEL_META)["labels"]
    unknown = sorted(set(positive) - set(names))
    if unknown:
        raise UsageError(f"--positive {','.join(positive)}: {unknown} not among the run's classes {names}")
    off = np.array([names[int(c)] not in positive for c in classes], bool)
    pseudo[off] = False
    if weights is not None:
        weights[off] = 1.0


def _pseudo_targets(s: SegmentSetup, items: list[LoadedImage], write_pseudo: bool) -> SegmentTargets:
    """CAM pseudo-masks on the classifier's inputs (written to ``RUN_DIR/pseudo_masks[-T]/``), moved to
    the segmenter's grid when it differs."""
    p, grid, weights = s.cfg.pseudo, s.seg_pp.size, None
    pseudo_dir = s.run_dir / s.files["pseudo"]
    if write_pseudo:
        check_out_dir(pseudo_dir, [s.data])
    regions = predicted_regions(s.run_dir, p.within, items, s.pp, s.roots) if p.within else None
    pm = pseudo_masks(s.run_dir, [it.input for it in items], p, regions=regions)
    desc = f"CAM pseudo-masks ({pm.rule}, {p.method}" + (
        f", inside the predicted {p.within})" if p.within else ")"
    )
    pseudo = pm.masks.copy()
    if p.confident is not None:
        pseudo, weights = confident_targets(pm.cams, pm.sectors, *p.confident)
        desc += f", confident pixels only (CAM <= {p.confident[0]} or >= {p.confident[1]})"
    if p.positive:
        _only_positive(s.run_dir, p.positive, pm.classes, pseudo, weights)
        desc += f", empty unless the predicted class is {' or '.join(p.positive)}"
    if write_pseudo:
        for it, m in zip(items, pseudo):
            atomic_write_png(pseudo_dir / it.rel.with_suffix(".png"), to_original(m, it.shape, it.box))
    seg_items = _segmenter_inputs(items, s.pp, s.seg_pp, s.roots)  # the masks move to the segmenter's grid
    if seg_items is items:
        return SegmentTargets(items, pseudo, pm.sectors, weights, desc)

    def moved(arrays):
        return [
            to_model(to_original(m, c.shape, c.box), it.box, grid)
            for m, c, it in zip(arrays, items, seg_items)
        ]

    weights = None if weights is None else np.stack(moved(weights))
    sectors = _stack([sector_mask(it.input) for it in seg_items], grid)
    return SegmentTargets(seg_items, _stack(moved(pseudo), grid), sectors, weights, desc)


def _fit(s: SegmentSetup, t: SegmentTargets, split: np.ndarray, resume: bool) -> FittedSegmenter:
    """The segmenter trained by the configured engine on the training images (validation: the val images)."""
    cfg, inputs = s.cfg, [it.input for it in t.items]
    if (
        cfg.engine.name == "nnunet"
    ):  # nnU-Net's own planning, preprocessing and trainer on the same images, targets and split
        model, info = fit_nnunet(
            inputs,
            t.masks,
            split,
            cfg.engine,
            size=cfg.train.size,
            paths=[str(it.path) for it in t.items],
            work_dir=s.run_dir / nnunet_dir(cfg.target),
            label=cfg.target,
            device=s.device,
            resume=resume,
        )
        return FittedSegmenter(
            model, info, *(info[k] for k in ("architecture", "arch", "loss", "epochs", "lr", "batch_size"))
        )
    fit = dataclasses.replace(cfg.train, device=s.device)
    model, info = fit_unet(
        inputs,
        t.masks,
        split,
        fit,
        arch=s.arch,
        weights=t.weights,
        checkpoint_dir=s.run_dir / s.files["checkpoints"],
        resume=resume,
    )
    return FittedSegmenter(
        model,
        info,
        s.arch,
        cfg.network.arch,
        cfg.train.loss,
        cfg.train.epochs,
        cfg.train.lr,
        cfg.train.batch_size,
    )


def train_segmenter(
    run_dir: str | Path,
    data: str | Path,
    cfg: SegmentConfig | None = None,
    *,
    resume: bool = False,
    report: bool = True,
    write_pseudo: bool = True,
) -> dict:
    """``liverscope segment train``: targets → grouped split → segmenter → scores → run directory.

    ``cfg`` (:class:`~liverscope.segment.config.SegmentConfig`; default: every default) says what to
    train; :func:`~liverscope.segment.config.checked` checks it first (nothing is read before) and fills in
    the defaults that depend on ``masks``: ``network.arch``, ``train.loss``, ``train.epochs`` and
    ``train.size`` are :data:`~liverscope.segment.unet.MASKS_DEFAULTS` with ``masks`` (expert targets: the
    ImageNet-encoder U-Net, BCE + Dice, 192 px) and :data:`~liverscope.segment.unet.PSEUDO_DEFAULTS` on CAM
    pseudo-masks (the seed study's Attention U-Net of ``network.channels``/``in_channels``, BCE, the
    classifier's size). The resolved configuration is saved in the segmenter's ``.json`` (``config``).

    Steps: :func:`_setup` (the run's preprocessing, the segmenter's size — larger than the classifier's
    input, the images are preprocessed at it, so a bigger U-Net sees the detail; the ``.json`` records
    the preprocessing used — and architecture); :func:`_load_targets` (the masks in ``masks``, same
    relative path or file name, or CAM pseudo-masks by ``pseudo.rule`` on the classifier's own inputs,
    also written to ``RUN_DIR/pseudo_masks/`` unless ``write_pseudo`` is false); a grouped stratified
    split (:func:`segmentation_split`); :func:`_fit` (Lightning, the best validation Dice kept;
    ``resume`` continues an interrupted fit from its ``last.ckpt``, given the same data and settings);
    :func:`~liverscope.segment.heldout.score_held_out` of the held-out test images on the segmenter's grid:

    * against their targets: mean IoU/Dice (the study's figure) and :func:`expert_mask_summary` (``vs_targets``);
    * against expert masks — ``real_masks``, else ``masks`` (given masks are taken as the experts'):
      ``vs_expert`` (Dice/IoU over the images with a non-empty mask, detection rate, false alarms on
      empty masks, per class and per size quartile), and for pseudo-masks ``pseudo_vs_expert``; with
      ``real_masks`` also the mean IoU/Dice of before (``unet_vs_real``, ``pseudo_vs_real``);
    * ``baselines`` scored the same way (against the experts when known, else the targets): the whole
      scan sector, and a disc at the sector's centroid whose area is the median non-empty target area
      of the *training* images (what the U-Net itself learnt from; no mask of a test image is used).

    Pseudo-mask settings (``pseudo``): ``layers`` (the CAM's layers,
    :func:`liverscope.explain.cams.resolve_layers`);
    ``positive`` (class names, e.g. ``benign,malignant``): an image whose explained (predicted) class is
    not among them gets an empty mask — a normal liver has no lesion to outline; ``confident=[low, high]``:
    only confident pixels train the U-Net (:func:`~liverscope.segment.rules.confident_targets`: CAM ≥ high
    foreground, ≤ low background, in between ignored by the loss); ``within`` (a target of the run, e.g.
    ``liver``): CAMs are normalised and cut inside that segmenter's prediction (:func:`predicted_regions`)
    instead of the whole scan sector.

    ``engine.name: nnunet`` trains with nnU-Net instead of Lightning, on the same images, targets and
    split (:func:`~liverscope.segment.nnunet.fit_nnunet` with the ``engine`` settings, e.g. ``trainer:
    nnUNetTrainer_100epochs``; its folders in ``RUN_DIR/nnunet[-T]/``); ``network``, ``loss``, ``lr``,
    ``batch_size`` and ``patience`` are then nnU-Net's own, and ``epochs`` overrides its trainer's.

    Files: ``target`` names the segmenter (:func:`~liverscope.segment.unet.segmenter_files`); ``lesion``
    writes ``segmenter.safetensors``/``.json``, ``seg_split.csv``, ``segmenter_checkpoints/`` and
    ``metrics.json["segmentation"]`` as before targets; another target T ``segmenter-T.*``,
    ``seg_split-T.csv``, ``segmenter-T_checkpoints/`` and ``metrics.json["segmentation_T"]``. The report
    is rewritten unless ``report`` is false.

    Returns:
        ``{"scores": ..., "meta": ..., "summary_lines": [...], "split", "skipped"}``.

    Raises:
        UsageError: a setting outside its choices or range, ``target`` not a lower-case name, or
            ``within`` with ``masks`` (checked before any work).
        LiverscopeError: fewer than 3 usable images, a run without what the settings need.
    """
    s = _setup(run_dir, data, cfg or SegmentConfig(), resume)
    t0 = time.perf_counter()
    t = _load_targets(s, write_pseudo)
    split = segmentation_split(
        t.items, test_frac=s.cfg.train.test_frac, val_frac=s.cfg.train.val_frac, seed=s.cfg.train.seed
    )
    f = _fit(s, t, split, resume)
    gate, test = predict_held_out(s, t, split, f)
    scores, per_image = score_held_out(s, t, split, f, gate, test)
    meta = segmenter_meta(s, t, split, f, scores, resume)
    write_segmenter(s, t, split, f, meta, per_image, report)
    lines = summary_lines(s, t, f, scores)
    log(f"segmentation done in {time.perf_counter() - t0:.0f}s")
    return {"scores": scores, "meta": meta, "summary_lines": lines, "split": split, "skipped": t.skipped}


__all__ = ["SEG_SPLIT", "SEGMENTER_CHECKPOINTS", "segmentation_split", "predicted_regions", "train_segmenter"]
