"""``liverscope segment train``: pseudo-masks or masks → grouped split → U-Net → scores → run directory,
one segmenter per target. ``segment predict`` and ``segment score`` work on files:
:mod:`liverscope.segment.mask_files`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope import __version__
from liverscope.data.audit import duplicate_group_ids
from liverscope.data.datasets import Sample, check_readable, load_samples
from liverscope.data.geometry import to_model, to_original
from liverscope.data.sector import sector_mask
from liverscope.data.splits import check_leakage, holdout_split
from liverscope.errors import LiverscopeError, UsageError
from liverscope.evaluate.masks import centred_disc, expert_mask_summary, mask_scores, score_summary
from liverscope.evaluate.report import write_report
from liverscope.rundir import MODEL_META, merge_metrics, read_preprocessing
from liverscope.segment.images import LoadedImage, load_images, load_masks_for
from liverscope.segment.pseudo import check_out_dir, pseudo_masks
from liverscope.segment.rules import check_rule, confident_targets
from liverscope.segment.encoder_unet import check_encoder_weights
from liverscope.segment.gate import apply_gate, fit_gate
from liverscope.segment.nnunet import check_engine, fit_nnunet, nnunet_dir
from liverscope.segment.training import fit_unet
from liverscope.segment.unet import (
    DEFAULT_CHANNELS,
    DEFAULT_TARGET,
    LOSSES,
    MASKS_DEFAULTS,
    check_size,
    load_segmenter,
    predict_probs_at,
    predict_proba,
    resize_masks,
    save_segmenter,
    segmenter_defaults,
    segmenter_files,
    make_arch,
    normalisation,
)
from liverscope.utils import atomic_write_csv, atomic_write_png, log, read_json, resolve_device

#: The ``lesion`` segmenter's split and checkpoint folder (another target's: :func:`segmenter_files`).
SEG_SPLIT = segmenter_files()["split"]
#: Lightning's checkpoints of ``segment train`` (``best.ckpt``, ``last.ckpt``: what ``resume`` continues from).
SEGMENTER_CHECKPOINTS = segmenter_files()["checkpoints"]


def segmentation_split(items: Sequence[LoadedImage], *, test_frac: float = 0.2, val_frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """Grouped, stratified train / val / test split: exact and near-duplicate images (audit) stay together."""
    samples = [Sample(it.path, it.label or "all") for it in items]
    groups = duplicate_group_ids(samples, annotate=False)
    labels = [s.label for s in samples]
    split = holdout_split(labels, groups, test_frac=test_frac, val_frac=val_frac, seed=seed)
    check_leakage(split, groups, paths=[s.path for s in samples])
    return split


def _with_sector(full: dict, sector: dict) -> dict:
    """``{"n", "iou", "dice", "iou_sector", "dice_sector"}`` of two :func:`mask_scores` (whole image, sector)."""
    return {**score_summary(full), "iou_sector": sector["iou"], "dice_sector": sector["dice"]}


def _stack(masks: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack(masks).astype(bool) if len(masks) else np.zeros((0, size, size), bool)


def _baselines(truth: list, classes: list, sectors: list, area: float, against: str) -> dict:
    """The trivial segmenters that see no mask of the image, scored like the U-Net: the whole scan sector,
    and a disc of ``area`` pixels at the sector's centroid (:func:`centred_disc`)."""
    return {"sector": {**expert_mask_summary(sectors, truth, classes, sectors), "against": against},
            "centred_disc": {**expert_mask_summary([centred_disc(s, area) for s in sectors], truth, classes, sectors),
                             "against": against, "area_px": area}}


def _summary_line(name: str, summary: dict) -> str:
    """One line of an :func:`expert_mask_summary`'s overall figures."""
    o = summary.get("overall") or {}
    parts = []
    if o.get("n_lesion"):
        parts.append(f"Dice {o['dice']:.3f}, IoU {o['iou']:.3f} over the {o['n_lesion']} images with something to outline, "
                     f"detected {o['detection_rate']:.2f}")
    if o.get("n_empty"):
        parts.append(f"false alarms on {o['false_positive_rate']:.0%} of the {o['n_empty']} images with nothing to outline")
    return f"{name}: " + ("; ".join(parts) or "no test image")


def _segmenter_inputs(items: list[LoadedImage], pp, seg_pp, roots: list[Path]) -> list[LoadedImage]:
    """``items`` preprocessed with ``seg_pp`` (the same files, loaded again) when it differs from ``pp``."""
    if seg_pp == pp:
        return items
    again, _ = load_images([it.path for it in items], seg_pp, roots=roots, labels=[it.label for it in items])
    if [it.path for it in again] != [it.path for it in items]:
        raise LiverscopeError(f"images changed while being read ({len(items)} read once, {len(again)} again); run the command again")
    return again


def predicted_regions(run_dir: str | Path, target: str, items: list[LoadedImage], pp, roots: Sequence[Path]) -> list[np.ndarray]:
    """Masks of the run's ``target`` segmenter (e.g. ``liver``) on ``items`` — model inputs made with
    ``pp`` — on the items' grid (probability > 0.5). A segmenter that took its inputs at another size or
    crop reads the same files again with its own preprocessing; its masks are mapped back through the
    original image. Normalisation does not matter: the U-Net takes the uint8 inputs.

    Raises:
        LiverscopeError: the run has no ``target`` segmenter (says how to train one).
    """
    seg = load_segmenter(run_dir, target=target)
    if seg is None:
        raise LiverscopeError(f"{run_dir}: no '{target}' segmenter to restrict the CAMs to; train one first with "
                              f"`liverscope segment train {run_dir} DATA --masks MASK_DIR --target {target}`")
    own = seg.preprocessing
    seg_pp = pp if own is None else dataclasses.replace(own, mean=pp.mean, std=pp.std)
    seg_items = _segmenter_inputs(items, pp, seg_pp, list(roots))
    probs = predict_proba(seg, [it.input for it in seg_items])
    if seg_items is items:
        return [p > 0.5 for p in probs]
    return [to_model(to_original(p > 0.5, s.shape, s.box), it.box, pp.size) for p, s, it in zip(probs, seg_items, items)]


def _fit_gate_on_validation(model, inputs: list, targets: np.ndarray, split: np.ndarray, size: int, arch: dict, device: str) -> dict | None:
    """The lesion gate (:func:`~liverscope.segment.gate.fit_gate`) fitted on the validation images, when
    they hold both images with something to outline and images with nothing (else ``None``: no gate)."""
    va = np.flatnonzero(split == "val")
    if not len(va):
        return None
    truths = resize_masks(targets[va], size)
    has = truths.reshape(len(va), -1).any(1)
    if not (has.any() and (~has).any()):
        return None
    probs, image = predict_probs_at(model, [inputs[i] for i in va], size, int(arch["in_channels"]), device, normalisation(arch), scores=True)
    return fit_gate(list(probs), list(truths), None if image is None else list(image))


def _image_head_auc(image: Sequence[float | None], truths: Sequence[np.ndarray]) -> float | None:
    """ROC AUC of the image-level head (anything to outline vs nothing) on the test images; ``None``
    without a head or without both kinds of image."""
    present = [bool(np.asarray(t).any()) for t in truths]
    if any(s is None for s in image) or len(set(present)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(present, image)), 4)


def train_segmenter(run_dir: str | Path, data: str | Path, *, masks: str | Path | None = None, real_masks: str | Path | None = None,
                    target: str = DEFAULT_TARGET, loss: str | None = None, epochs: int | None = None, size: int | None = None,
                    channels: Sequence[int] = DEFAULT_CHANNELS, in_channels: int = 1, batch_size: int = 8, lr: float = 1e-3,
                    rule: str = "threshold", threshold: float = 0.5, q: float = 20.0, flip_average: bool = False, method: str = "gradcam",
                    ensemble: Sequence[str | Path] | None = None, seed: int = 0, device: str = "auto", test_frac: float = 0.2,
                    val_frac: float = 0.2, patience: int | None = None, max_steps: int | None = None, write_pseudo: bool = True,
                    report: bool = True, resume: bool = False, layers: Sequence[str | int] | str | None = None,
                    confident: tuple[float, float] | None = None, positive: Sequence[str] | None = None,
                    within: str | None = None, arch: str | None = None, engine: str = "liverscope", nnunet: dict | None = None) -> dict:
    """``liverscope segment train``: targets → grouped split → segmenter → scores → run directory.

    ``arch`` (:data:`~liverscope.segment.unet.ARCHS`), ``loss``, ``epochs`` and ``size`` default to
    :data:`~liverscope.segment.unet.MASKS_DEFAULTS` with ``masks`` (expert targets: the ImageNet-encoder
    U-Net, BCE + Dice, 192 px) and to :data:`~liverscope.segment.unet.PSEUDO_DEFAULTS` on CAM pseudo-masks
    (the seed study's Attention U-Net of ``channels``/``in_channels``, BCE, the classifier's size).

    Steps: decode and preprocess the images of ``data`` with the classifier's preprocessing — at ``size``
    when that is larger than the classifier's input (so a bigger U-Net sees the detail, not an upsampled
    image; the segmenter's ``.json`` records the preprocessing it used); targets are the masks in ``masks``
    (same relative path or file name) or CAM pseudo-masks by ``rule`` (computed on the classifier's own
    inputs, also written to ``RUN_DIR/pseudo_masks/``); a grouped stratified split; training with
    Lightning, the best validation Dice kept (``resume`` continues an interrupted fit from its
    ``last.ckpt``, given the same data and settings); scores of the held-out test images on the
    segmenter's grid (the larger of ``size`` and the classifier's input size):

    * against their targets: mean IoU/Dice (the study's figure) and :func:`expert_mask_summary` (``vs_targets``);
    * against expert masks — ``real_masks``, else ``masks`` (given masks are taken as the experts'):
      ``vs_expert`` (Dice/IoU over the images with a non-empty mask, detection rate, false alarms on
      empty masks, per class and per size quartile), and for pseudo-masks ``pseudo_vs_expert``; with
      ``real_masks`` also the mean IoU/Dice of before (``unet_vs_real``, ``pseudo_vs_real``);
    * ``baselines`` scored the same way (against the experts when known, else the targets): the whole
      scan sector, and a disc at the sector's centroid whose area is the median non-empty target area
      of the *training* images (what the U-Net itself learnt from; no mask of a test image is used).

    Pseudo-mask options: ``layers`` (the CAM's layers, :func:`liverscope.explain.resolve_layers`);
    ``positive`` (class names, e.g. ``benign,malignant``): an image whose explained (predicted) class is
    not among them gets an empty mask — a normal liver has no lesion to outline; ``confident=(low, high)``:
    only confident pixels train the U-Net (:func:`~liverscope.segment.rules.confident_targets`: CAM ≥ high
    foreground, ≤ low background, in between ignored by the loss); ``within`` (a target of the run, e.g.
    ``liver``): CAMs are normalised and cut inside that segmenter's prediction (:func:`predicted_regions`)
    instead of the whole scan sector.

    ``engine="nnunet"`` trains with nnU-Net instead of Lightning, on the same images, targets and split
    (:func:`~liverscope.segment.nnunet.fit_nnunet`, whose options ``nnunet`` passes on, e.g.
    ``{"trainer": "nnUNetTrainer_100epochs"}``; its folders in ``RUN_DIR/nnunet[-T]/``); ``arch``, ``loss``,
    ``epochs``, ``lr``, ``batch_size``, ``patience`` and ``seed`` are then nnU-Net's own.

    Files: ``target`` names the segmenter (:func:`~liverscope.segment.unet.segmenter_files`); ``lesion``
    writes ``segmenter.safetensors``/``.json``, ``seg_split.csv``, ``segmenter_checkpoints/`` and
    ``metrics.json["segmentation"]`` as before targets; another target T ``segmenter-T.*``,
    ``seg_split-T.csv``, ``segmenter-T_checkpoints/`` and ``metrics.json["segmentation_T"]``. The report is rewritten.

    Returns:
        ``{"scores": ..., "meta": ..., "summary_lines": [...], "split", "skipped"}``.

    Raises:
        UsageError: ``target`` is not a lower-case name, or ``within`` with ``masks`` (checked before any work).
        LiverscopeError: an unknown loss or rule, a size the U-Net cannot take, fewer than 3 usable images.
    """
    run_dir, data = Path(run_dir), Path(data)
    files = segmenter_files(target)
    check_engine(engine, confident=confident)
    arch_name, loss, epochs = segmenter_defaults(masks is not None, arch, loss, epochs)
    if masks is not None and size is None:
        size = MASKS_DEFAULTS["size"]
    if loss not in LOSSES:
        raise LiverscopeError(f"--loss {loss}: expected one of {', '.join(LOSSES)}")
    if within and masks is not None:
        raise UsageError(f"--within {within} restricts CAM pseudo-masks; with --masks the targets are given: drop one of the two")
    check_rule(rule)
    pp = read_preprocessing(run_dir)
    size = int(size or pp.size)
    arch = make_arch(arch_name, in_channels, channels)
    in_channels = int(arch["in_channels"])
    if engine != "nnunet" and not resume:
        check_encoder_weights(arch)  # offline without the weights package: say so before any image is read
    check_size(size, arch["strides"])
    seg_pp = dataclasses.replace(pp, size=size) if size > pp.size else pp
    grid = seg_pp.size
    device = resolve_device(device)
    t0 = time.perf_counter()
    samples, _ = load_samples(data)
    samples, skipped = check_readable(samples)
    roots = [data] if data.is_dir() else [data.parent]
    # given masks: straight at the segmenter's preprocessing; pseudo-masks: the classifier's first (its CAMs)
    items, bad = load_images([s.path for s in samples], pp if masks is None else seg_pp, roots=roots, labels=[s.label for s in samples])
    skipped += bad
    weights = None  # per-pixel loss weights (--confident)
    if masks is not None:
        targets, problems = load_masks_for(items, Path(masks), grid)
        skipped += problems
        keep = [i for i, t in enumerate(targets) if t is not None]
        items, targets = [items[i] for i in keep], [targets[i] for i in keep]
        target_desc = f"masks from {masks}"
        target_arr = _stack(targets, grid)
        sectors = _stack([sector_mask(it.input) for it in items], grid)
    else:
        pseudo_dir = run_dir / files["pseudo"]
        if write_pseudo:
            check_out_dir(pseudo_dir, [data])
        regions = predicted_regions(run_dir, within, items, pp, roots) if within else None
        pm = pseudo_masks(run_dir, [it.input for it in items], rule, threshold=threshold, q=q, flip_average=flip_average, ensemble=ensemble,
                          method=method, layers=layers, regions=regions)
        target_desc = f"CAM pseudo-masks ({pm.rule}, {method}" + (f", inside the predicted {within})" if within else ")")
        pseudo = pm.masks.copy()
        if confident is not None:
            pseudo, weights = confident_targets(pm.cams, pm.sectors, *confident)
            target_desc += f", confident pixels only (CAM <= {confident[0]} or >= {confident[1]})"
        if positive:
            names = read_json(run_dir / MODEL_META)["labels"]
            unknown = sorted(set(positive) - set(names))
            if unknown:
                raise UsageError(f"--positive {','.join(positive)}: {unknown} not among the run's classes {names}")
            off = np.array([names[int(c)] not in positive for c in pm.classes], bool)
            pseudo[off] = False
            if weights is not None:
                weights[off] = 1.0
            target_desc += f", empty unless the predicted class is {' or '.join(positive)}"
        if write_pseudo:
            for it, m in zip(items, pseudo):
                atomic_write_png(pseudo_dir / it.rel.with_suffix(".png"), to_original(m, it.shape, it.box))
        seg_items = _segmenter_inputs(items, pp, seg_pp, roots)  # the masks move to the segmenter's grid
        if seg_items is items:
            target_arr, sectors = pseudo, pm.sectors
        else:
            target_arr = _stack([to_model(to_original(m, c.shape, c.box), it.box, grid) for m, c, it in zip(pseudo, items, seg_items)], grid)
            if weights is not None:
                weights = np.stack([to_model(to_original(w, c.shape, c.box), it.box, grid) for w, c, it in zip(weights, items, seg_items)])
            sectors = _stack([sector_mask(it.input) for it in seg_items], grid)
            items = seg_items
    if len(items) < 3:
        raise LiverscopeError(f"{data}: {len(items)} usable image(s) with masks; the U-Net needs at least 3 (train, val, test)")
    log(f"segmentation targets ({target}): {target_desc}; {len(items)} images at {grid} px")
    split = segmentation_split(items, test_frac=test_frac, val_frac=val_frac, seed=seed)
    inputs = [it.input for it in items]
    if engine == "nnunet":  # nnU-Net's own planning, preprocessing and trainer on the same images, targets and split
        model, info = fit_nnunet(inputs, target_arr, split, size=size, paths=[str(it.path) for it in items], work_dir=run_dir / nnunet_dir(target),
                                 label=target, device=device, resume=resume, **(nnunet or {}))
        arch, arch_name, in_channels, loss, epochs, lr, batch_size = (info[k] for k in ("architecture", "arch", "in_channels", "loss", "epochs", "lr", "batch_size"))
    else:
        model, info = fit_unet(inputs, target_arr, split, size=size, in_channels=in_channels, channels=channels, loss=loss, epochs=epochs,
                               batch_size=batch_size, lr=lr, seed=seed, device=device, patience=patience, max_steps=max_steps,
                               checkpoint_dir=run_dir / files["checkpoints"], resume=resume, weights=weights, arch=arch)
    # scores on held-out test images, on the segmenter's grid
    gate = _fit_gate_on_validation(model, inputs, target_arr, split, size, arch, device)
    te = np.flatnonzero(split == "test")
    probs_te, image_te = predict_probs_at(model, [inputs[i] for i in te], size, in_channels, device, normalisation(arch), scores=True)
    image_te = [None] * len(te) if image_te is None else list(image_te)
    pred = [to_original(apply_gate(p, gate, s)[0], (grid, grid)) for p, s in zip(probs_te, image_te)]
    pred_raw = [to_original(p > 0.5, (grid, grid)) for p in probs_te]
    sec_te = [sectors[i] for i in te]
    true_te = [target_arr[i] for i in te]
    classes_te = [items[i].label or "all" for i in te]
    scores: dict = {
        "target": target, "masks": target_desc, "loss": loss, "size": size, "grid": grid, "n_train": int((split == "train").sum()),
        "n_val": int((split == "val").sum()), "n_test": int(len(te)), "best_epoch": info["best_epoch"], "best_val_dice": info["best_val_dice"],
    }
    vs_target = mask_scores(pred, true_te)
    vs_target_sec = mask_scores(pred, true_te, sec_te)
    scores["iou_vs_targets"] = vs_target["iou"]
    scores["dice_vs_targets"] = vs_target["dice"]
    scores["iou_vs_targets_sector"] = vs_target_sec["iou"]
    scores["dice_vs_targets_sector"] = vs_target_sec["dice"]
    scores["vs_targets"] = expert_mask_summary(pred, true_te, classes_te, sec_te)
    per_image = [{"path": str(items[i].path), "iou_vs_targets": a, "dice_vs_targets": b} for i, a, b in zip(te, vs_target["iou_per_image"], vs_target["dice_per_image"])]
    # expert masks: --real-masks, else the given --masks themselves
    have, experts = list(range(len(te))), (true_te if masks is not None else None)
    if real_masks is not None:
        reals, problems = load_masks_for([items[i] for i in te], Path(real_masks), grid)
        have = [k for k, r in enumerate(reals) if r is not None]
        if problems:
            log(f"{len(problems)} test image(s) have no expert mask in {real_masks}; scored on the {len(have)} that do")
        experts = [reals[k] for k in have]
        rp, rs = [pred[k] for k in have], [sec_te[k] for k in have]
        real = mask_scores(rp, experts)
        scores["unet_vs_real"] = _with_sector(real, mask_scores(rp, experts, rs))
        for k, a, b in zip(have, real["iou_per_image"], real["dice_per_image"]):
            per_image[k].update(iou_vs_real=a, dice_vs_real=b)
        if masks is None:
            tp = [true_te[k] for k in have]
            scores["pseudo_vs_real"] = _with_sector(mask_scores(tp, experts), mask_scores(tp, experts, rs))
        scores["real_masks"] = str(real_masks)
    cls_x, sec_x = [classes_te[k] for k in have], [sec_te[k] for k in have]
    scores["gate"] = gate
    scores["image_head_auc"] = _image_head_auc(image_te, true_te)
    if experts is not None:
        scores["expert_masks"] = str(real_masks if real_masks is not None else masks)
        scores["vs_expert"] = expert_mask_summary([pred[k] for k in have], experts, cls_x, sec_x)
        if gate:
            scores["vs_expert_ungated"] = expert_mask_summary([pred_raw[k] for k in have], experts, cls_x, sec_x)
        if masks is None:
            scores["pseudo_vs_expert"] = expert_mask_summary([true_te[k] for k in have], experts, cls_x, sec_x)
    train_areas = [int(target_arr[i].sum()) for i in np.flatnonzero(split == "train") if target_arr[i].any()]
    area = float(np.median(train_areas)) if train_areas else 0.0
    scores["baselines"] = (_baselines(experts, cls_x, sec_x, area, "expert masks") if experts is not None
                           else _baselines(true_te, classes_te, sec_te, area, "targets"))
    meta = {
        "target": target, "architecture": arch, "size": size, "arch": arch_name, "input": "grey" if in_channels == 1 else "rgb",
        "normalisation": "(x/255 - {mean}) / {std}".format(**normalisation(arch)), "initial_weights": info["initial_weights"],
        "preprocessing": seg_pp.to_dict(), "classifier_size": pp.size, "classifier_run": str(run_dir), "data": str(data), "targets": target_desc,
        "pseudo_masks": None if masks is not None else {"rule": rule, "threshold": threshold, "q": q, "flip_average": flip_average, "method": method,
                                                        "layers": layers, "confident": list(confident) if confident else None,
                                                        "positive": list(positive) if positive else None, "within": within},
        "loss": loss, "epochs": epochs, "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"], "lr": lr, "batch_size": batch_size,
        "seed": seed, "split": {"method": "grouped stratified hold-out", "test_frac": test_frac, "val_frac": val_frac,
                                "counts": {k: int((split == k).sum()) for k in ("train", "val", "test")}, "file": files["split"]},
        "gate": gate, "scores": scores, "train_seconds": info["seconds"], "history": info["history"], "engine": info["engine"],
        **{k: info[k] for k in ("nnunet",) if k in info},
        "checkpoints": files["checkpoints"], "resumed": bool(resume),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "liverscope_version": __version__,
    }
    atomic_write_csv(run_dir / files["split"], ["path", "split"], [(str(it.path), s) for it, s in zip(items, split)])
    save_segmenter(run_dir, model, meta, target)
    merge_metrics(run_dir, files["metrics"], {**scores, "test_images": per_image})
    if report:
        try:
            write_report(run_dir)
        except Exception as exc:  # the report is a convenience: never lose a trained segmenter over it
            log(f"report not written: {type(exc).__name__}: {exc}")
    lines = [
        f"U-Net ({target}) trained on {target_desc} at {size} px: {scores['n_train']} train / {scores['n_val']} val / {scores['n_test']} test images, "
        f"best epoch {info['best_epoch']} of {info['epochs_run']} ({info['seconds']:.0f}s)",
    ]
    # headline figures never count an empty prediction on an empty mask as a perfect Dice: Dice over the
    # images with something to outline, false alarms on the others (expert_mask_summary)
    against = "expert masks" if experts is not None else "targets"
    if gate:
        lines.append(f"lesion gate (fitted on the validation images): largest region only, at least {gate['min_area']:.2%} of the grid "
                     f"and a peak probability of {gate['min_peak']:.2f}"
                     + (f", on images the image-level head scores at least {gate['min_score']:.2f}" if "min_score" in gate else ""))
    if scores["image_head_auc"] is not None:
        lines.append(f"image-level head (anything to outline?): test ROC AUC {scores['image_head_auc']:.3f}")
    for key, name in (("vs_expert", "test vs expert masks"), ("vs_expert_ungated", "the same without the gate"),
                      ("pseudo_vs_expert", "pseudo-masks vs expert masks"), ("vs_targets", "test vs targets")):
        if key in scores and (key != "vs_targets" or experts is None or masks is None):
            lines.append(_summary_line(name, scores[key]))
    lines.append(_summary_line(f"baseline, whole sector vs {against}", scores["baselines"]["sector"]))
    lines.append(_summary_line(f"baseline, centred disc of {area:.0f} px vs {against}", scores["baselines"]["centred_disc"]))
    lines.append(f"saved {run_dir / files['weights']} and {run_dir / files['meta']}")
    if skipped:
        lines.append(f"skipped {len(skipped)} file(s): " + "; ".join(f"{p} ({r})" for p, r in skipped[:10]))
    log(f"segmentation done in {time.perf_counter() - t0:.0f}s")
    return {"scores": scores, "meta": meta, "summary_lines": lines, "split": split, "skipped": skipped}


__all__ = ["SEG_SPLIT", "SEGMENTER_CHECKPOINTS", "segmentation_split", "predicted_regions", "train_segmenter"]
