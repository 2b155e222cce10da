"""The ``liverscope segment`` commands: ``train`` (pseudo-masks → grouped split → U-Net → scores → run
directory), ``predict`` (masks and outlines of new images) and ``score`` (two mask folders)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope import __version__
from liverscope.data.audit import duplicate_group_ids
from liverscope.data.datasets import Sample, check_readable, load_samples
from liverscope.data.geometry import to_original
from liverscope.data.io import IMAGE_SUFFIXES, to_rgb
from liverscope.data.preprocess import Preprocessing, sector_mask
from liverscope.data.splits import check_leakage, holdout_split
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.evaluate.masks import dice, iou, mask_scores, score_summary
from liverscope.evaluate.report import write_report
from liverscope.rundir import PSEUDO_MASKS, SEGMENTER_META, SEGMENTER_WEIGHTS, merge_metrics, read_preprocessing, write_skipped
from liverscope.segment.images import LoadedImage, find_mask, list_images, load_images, load_masks_for, read_mask
from liverscope.segment.outline import draw_outline
from liverscope.segment.pseudo import check_out_dir, pseudo_masks
from liverscope.segment.rules import check_rule
from liverscope.segment.training import fit_unet
from liverscope.segment.unet import (
    DEFAULT_CHANNELS,
    LOSSES,
    check_size,
    load_segmenter,
    predict_masks_at,
    predict_proba,
    resize_masks,
    save_segmenter,
    unet_arch,
)
from liverscope.utils import atomic_write_csv, atomic_write_png, log, progress, resolve_device

SEG_SPLIT = "seg_split.csv"
#: Lightning's checkpoints of ``segment train`` (``best.ckpt``, ``last.ckpt``: what ``resume`` continues from).
SEGMENTER_CHECKPOINTS = "segmenter_checkpoints"


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


def train_segmenter(run_dir: str | Path, data: str | Path, *, masks: str | Path | None = None, real_masks: str | Path | None = None,
                    loss: str = "bce", epochs: int = 30, size: int | None = None, channels: Sequence[int] = DEFAULT_CHANNELS,
                    in_channels: int = 1, batch_size: int = 8, lr: float = 1e-3, rule: str = "threshold", threshold: float = 0.5,
                    q: float = 20.0, flip_average: bool = False, method: str = "gradcam", ensemble: Sequence[str | Path] | None = None,
                    seed: int = 0, device: str = "auto", test_frac: float = 0.2, val_frac: float = 0.2, patience: int | None = None,
                    max_steps: int | None = None, write_pseudo: bool = True, report: bool = True, resume: bool = False) -> dict:
    """``liverscope segment train``: pseudo-masks → grouped split → Attention U-Net → scores → run directory.

    Steps: decode and preprocess the images of ``data`` with the classifier's preprocessing; targets are
    the masks in ``masks`` (same relative path or file name) or CAM pseudo-masks by ``rule`` (also
    written to ``RUN_DIR/pseudo_masks/``); a grouped stratified split (``seg_split.csv``); training with
    Lightning, the best validation Dice kept (checkpoints in ``RUN_DIR/segmenter_checkpoints/``; ``resume``
    continues an interrupted fit from its ``last.ckpt``, given the same data and settings); IoU/Dice of
    the held-out test images against their targets (the study's figure) and, with ``real_masks``, against
    the expert masks — whole image and inside the scan sector — plus the pseudo-masks' own scores against the expert masks. Saves ``segmenter.safetensors``
    and ``segmenter.json``, merges the scores into ``metrics.json["segmentation"]`` and rewrites the report.

    Returns:
        ``{"scores": ..., "meta": ..., "summary_lines": [...]}``.
    """
    run_dir, data = Path(run_dir), Path(data)
    if loss not in LOSSES:
        raise LiverscopeError(f"--loss {loss}: expected one of {', '.join(LOSSES)}")
    check_rule(rule)
    pp = read_preprocessing(run_dir)
    size = int(size or pp.size)
    arch = unet_arch(in_channels, channels)
    check_size(size, arch["strides"])
    device = resolve_device(device)
    t0 = time.perf_counter()
    samples, _ = load_samples(data)
    samples, skipped = check_readable(samples)
    items, bad = load_images([s.path for s in samples], pp, roots=[data] if data.is_dir() else [data.parent], labels=[s.label for s in samples])
    skipped += bad
    if masks is not None:
        targets, problems = load_masks_for(items, Path(masks), pp.size)
        skipped += problems
        keep = [i for i, t in enumerate(targets) if t is not None]
        items, targets = [items[i] for i in keep], [targets[i] for i in keep]
        target_desc = f"masks from {masks}"
        target_arr = np.stack(targets) if targets else np.zeros((0, pp.size, pp.size), bool)
        sectors = np.stack([sector_mask(it.input) for it in items]) if items else target_arr
    else:
        if write_pseudo:
            check_out_dir(run_dir / PSEUDO_MASKS, [data])
        pm = pseudo_masks(run_dir, [it.input for it in items], rule, threshold=threshold, q=q, flip_average=flip_average, ensemble=ensemble, method=method)
        target_arr, sectors, target_desc = pm.masks, pm.sectors, f"CAM pseudo-masks ({pm.rule}, {method})"
        if write_pseudo:
            for it, m in zip(items, pm.masks):
                atomic_write_png(run_dir / PSEUDO_MASKS / it.rel.with_suffix(".png"), to_original(m, it.shape, it.box))
    if len(items) < 3:
        raise LiverscopeError(f"{data}: {len(items)} usable image(s) with masks; the U-Net needs at least 3 (train, val, test)")
    log(f"segmentation targets: {target_desc}; {len(items)} images")
    split = segmentation_split(items, test_frac=test_frac, val_frac=val_frac, seed=seed)
    inputs = [it.input for it in items]
    model, info = fit_unet(inputs, target_arr, split, size=size, in_channels=in_channels, channels=channels, loss=loss, epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed, device=device, patience=patience, max_steps=max_steps,
                           checkpoint_dir=run_dir / SEGMENTER_CHECKPOINTS, resume=resume)
    # scores on held-out test images, on the model grid of the classifier (pp.size)
    te = np.flatnonzero(split == "test")
    pred_small = predict_masks_at(model, [inputs[i] for i in te], size, in_channels, device)
    pred = resize_masks(pred_small, pp.size) if len(te) else np.zeros((0, pp.size, pp.size), bool)
    sec_te = [sectors[i] for i in te]
    scores: dict = {
        "masks": target_desc, "loss": loss, "size": size, "n_train": int((split == "train").sum()), "n_val": int((split == "val").sum()),
        "n_test": int(len(te)), "best_epoch": info["best_epoch"], "best_val_dice": info["best_val_dice"],
    }
    vs_target = mask_scores(list(pred), [target_arr[i] for i in te])
    vs_target_sec = mask_scores(list(pred), [target_arr[i] for i in te], sec_te)
    scores["iou_vs_targets"] = vs_target["iou"]
    scores["dice_vs_targets"] = vs_target["dice"]
    scores["iou_vs_targets_sector"] = vs_target_sec["iou"]
    scores["dice_vs_targets_sector"] = vs_target_sec["dice"]
    per_image = [{"path": str(items[i].path), "iou_vs_targets": a, "dice_vs_targets": b} for i, a, b in zip(te, vs_target["iou_per_image"], vs_target["dice_per_image"])]
    if real_masks is not None:
        reals, problems = load_masks_for([items[i] for i in te], Path(real_masks), pp.size)
        have = [k for k, r in enumerate(reals) if r is not None]
        if problems:
            log(f"{len(problems)} test image(s) have no expert mask in {real_masks}; scored on the {len(have)} that do")
        rp = [pred[k] for k in have]
        rt = [reals[k] for k in have]
        rs = [sec_te[k] for k in have]
        real = mask_scores(rp, rt)
        scores["unet_vs_real"] = _with_sector(real, mask_scores(rp, rt, rs))
        for k, a, b in zip(have, real["iou_per_image"], real["dice_per_image"]):
            per_image[k].update(iou_vs_real=a, dice_vs_real=b)
        if masks is None:
            tp = [target_arr[te[k]] for k in have]
            scores["pseudo_vs_real"] = _with_sector(mask_scores(tp, rt), mask_scores(tp, rt, rs))
        scores["real_masks"] = str(real_masks)
    meta = {
        "architecture": arch, "size": size, "input": "grey" if in_channels == 1 else "rgb", "normalisation": "(x/255 - 0.5) / 0.25",
        "preprocessing": pp.to_dict(), "classifier_run": str(run_dir), "data": str(data), "targets": target_desc,
        "pseudo_masks": None if masks is not None else {"rule": rule, "threshold": threshold, "q": q, "flip_average": flip_average, "method": method},
        "loss": loss, "epochs": epochs, "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"], "lr": lr, "batch_size": batch_size,
        "seed": seed, "split": {"method": "grouped stratified hold-out", "test_frac": test_frac, "val_frac": val_frac,
                                "counts": {k: int((split == k).sum()) for k in ("train", "val", "test")}, "file": SEG_SPLIT},
        "scores": scores, "train_seconds": info["seconds"], "history": info["history"], "engine": "lightning",
        "checkpoints": SEGMENTER_CHECKPOINTS, "resumed": bool(resume),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "liverscope_version": __version__,
    }
    atomic_write_csv(run_dir / SEG_SPLIT, ["path", "split"], [(str(it.path), s) for it, s in zip(items, split)])
    save_segmenter(run_dir, model, meta)
    report_scores = dict(scores)
    report_scores["test_images"] = per_image
    merge_metrics(run_dir, "segmentation", report_scores)
    if report:
        try:
            write_report(run_dir)
        except Exception as exc:  # the report is a convenience: never lose a trained segmenter over it
            log(f"report not written: {type(exc).__name__}: {exc}")
    lines = [
        f"U-Net trained on {target_desc}: {scores['n_train']} train / {scores['n_val']} val / {scores['n_test']} test images, "
        f"best epoch {info['best_epoch']} of {info['epochs_run']} ({info['seconds']:.0f}s)",
        f"test vs targets: IoU {scores['iou_vs_targets']:.3f}, Dice {scores['dice_vs_targets']:.3f} (n={scores['n_test']})",
    ]
    if "unet_vs_real" in scores:
        r = scores["unet_vs_real"]
        lines.append(f"test vs expert masks: IoU {r['iou']:.3f}, Dice {r['dice']:.3f} (sector: IoU {r['iou_sector']:.3f}, Dice {r['dice_sector']:.3f}; n={r['n']})")
    if "pseudo_vs_real" in scores:
        r = scores["pseudo_vs_real"]
        lines.append(f"pseudo-masks vs expert masks (same test images): IoU {r['iou']:.3f}, Dice {r['dice']:.3f}")
    lines.append(f"saved {run_dir / SEGMENTER_WEIGHTS} and {run_dir / SEGMENTER_META}")
    if skipped:
        lines.append(f"skipped {len(skipped)} file(s): " + "; ".join(f"{p} ({r})" for p, r in skipped[:10]))
    log(f"segmentation done in {time.perf_counter() - t0:.0f}s")
    return {"scores": scores, "meta": meta, "summary_lines": lines, "split": split, "skipped": skipped}


def write_predictions(run_dir: str | Path, paths: Sequence[str | Path], out: str | Path, chunk: int = 32) -> dict:
    """Masks (``NAME_mask.png``, 0/255) and outline overlays (``NAME_outline.png``) at each image's
    original size, mirroring folder-relative paths under ``out``. Bad files are skipped and listed.

    Returns:
        ``{"written", "out", "skipped": [(path, reason), ...]}``.
    """
    run_dir, out = Path(run_dir), Path(out)
    seg = load_segmenter(run_dir)
    if seg is None:
        raise LiverscopeError(f"{run_dir}: no segmenter — train one first (liverscope segment train {run_dir} DATA)")
    pp = Preprocessing.from_dict(seg.meta["preprocessing"])
    roots = [Path(p) for p in paths if Path(p).is_dir()]
    files = list_images(paths)
    written, skipped = 0, []
    for start in progress(range(0, len(files), chunk), f"masks ({len(files)} images, {chunk} a step)"):
        items, bad = load_images(files[start : start + chunk], pp, roots=roots, keep_original=True)
        skipped += bad
        if not items:
            continue
        probs = predict_proba(seg, [it.input for it in items])
        for it, p in zip(items, probs):
            mask = to_original(p > 0.5, it.shape, it.box)
            stem = it.rel.with_suffix("")
            atomic_write_png(out / f"{stem}_mask.png", mask)
            atomic_write_png(out / f"{stem}_outline.png", draw_outline(to_rgb(it.extra.pop("original")), mask))
            written += 1
    if skipped:
        write_skipped(out, skipped)
    return {"written": written, "out": out, "skipped": skipped}


def score_mask_dirs(pred_dir: str | Path, true_dir: str | Path, out: str | Path | None = None) -> dict:
    """IoU and Dice of every mask in ``pred_dir`` against its counterpart in ``true_dir`` (:func:`find_mask`).

    A predicted mask of another size is resized (nearest neighbour) to the true mask's size. Predicted
    masks without a counterpart, and unreadable files, are listed in ``skipped``.

    Returns:
        ``{"n", "mean_iou", "mean_dice", "images": [{"name", "iou", "dice"}, ...], "skipped": [...]}``.
    """
    pred_dir, true_dir = Path(pred_dir), Path(true_dir)
    for d in (pred_dir, true_dir):
        if not d.is_dir():
            raise LiverscopeError(f"{d}: not a folder of masks")
    files = sorted(p for p in pred_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                   and not p.stem.endswith("_outline"))
    rows, skipped = [], []
    for p in files:
        rel = p.relative_to(pred_dir)
        t = find_mask(true_dir, rel)
        if t is None:
            skipped.append((str(p), f"no true mask in {true_dir}"))
            continue
        try:
            tm = read_mask(t)
            pm = read_mask(p, tm.shape)
        except ImageReadError as exc:
            skipped.append((exc.path, exc.reason))
            continue
        rows.append({"name": str(rel), "true": str(t), "iou": iou(pm, tm), "dice": dice(pm, tm)})
    if not rows:
        raise LiverscopeError(f"no predicted mask in {pred_dir} has a counterpart in {true_dir} (same relative path or file name)")
    result = {"n": len(rows), "mean_iou": float(np.mean([r["iou"] for r in rows])), "mean_dice": float(np.mean([r["dice"] for r in rows])),
              "images": rows, "skipped": skipped}
    if out is not None:
        columns = ["name", "true", "iou", "dice"]
        atomic_write_csv(out, columns, ([r[c] for c in columns] for r in rows))
    return result


__all__ = ["SEG_SPLIT", "SEGMENTER_CHECKPOINTS", "segmentation_split", "train_segmenter", "write_predictions", "score_mask_dirs"]
