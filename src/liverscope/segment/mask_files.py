"""The ``segment predict`` and ``segment score`` commands on files: every segmenter's masks and one outline
overlay of new images (:func:`write_segmentations`), and IoU/Dice of two mask folders (:func:`score_mask_dirs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope.data.geometry import to_original
from liverscope.data.io import IMAGE_SUFFIXES, to_rgb
from liverscope.data.preprocess import crop_box, preprocess_array
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.evaluate.masks import dice, iou
from liverscope.rundir import read_preprocessing, write_skipped
from liverscope.segment.images import find_mask, list_images, load_images, read_mask
from liverscope.segment.outline import draw_outline
from liverscope.segment.unet import DEFAULT_TARGET, segment_images, segmenters, target_colours
from liverscope.utils import atomic_write_csv, atomic_write_png, progress


def mask_file(stem: str | Path, target: str = DEFAULT_TARGET) -> str:
    """The file name ``segment predict`` gives a mask: ``NAME_mask.png`` (lesion), ``NAME_T_mask.png`` (target T)."""
    return f"{stem}_mask.png" if target == DEFAULT_TARGET else f"{stem}_{target}_mask.png"


def write_segmentations(
    run_dir: str | Path, paths: Sequence[str | Path], out: str | Path, chunk: int = 32
) -> dict:
    """Every segmenter's masks (:func:`mask_file`, 0/255) and one outline overlay (``NAME_outline.png``,
    each target's contour in its colour: :func:`~liverscope.segment.unet.target_colours`) at each image's
    original size, mirroring folder-relative paths under ``out``. Each segmenter sees the images
    preprocessed as it was trained (its ``.json``). Bad files are skipped and listed.

    A segmenter with a lesion gate (``segmenter.json["gate"]``) outlines only where the gate lets a
    region through; ``suppressed`` counts, per target, the images whose raw mask the gate emptied.

    Returns:
        ``{"written", "out", "targets", "colours": {target: colour name}, "skipped": [(path, reason), ...], "suppressed"}``.
    """
    run_dir, out = Path(run_dir), Path(out)
    segs = segmenters(run_dir)
    if not segs:
        raise LiverscopeError(
            f"{run_dir}: no segmenter — train one first (liverscope segment train {run_dir} DATA)"
        )
    colours = target_colours(list(segs))
    pps = {t: s.preprocessing or read_preprocessing(run_dir) for t, s in segs.items()}
    first = next(iter(pps.values()))
    roots = [Path(p) for p in paths if Path(p).is_dir()]
    files = list_images(paths)
    written, skipped, suppressed = 0, [], {}
    for start in progress(
        range(0, len(files), chunk), f"masks ({len(files)} images, {chunk} a step, {len(segs)} target(s))"
    ):
        items, bad = load_images(files[start : start + chunk], first, roots=roots, keep_original=True)
        skipped += bad
        if not items:
            continue
        found = {}
        for t, seg in segs.items():
            pp = pps[t]
            own = pp == first
            inputs = [it.input if own else preprocess_array(it.extra["original"], pp) for it in items]
            boxes = [it.box if own else crop_box(it.extra["original"], pp) for it in items]
            masks, n_off = segment_images(seg, inputs)
            if seg.meta.get("gate"):
                suppressed[t] = suppressed.get(t, 0) + n_off
            found[t] = [to_original(m, it.shape, box) for m, it, box in zip(masks, items, boxes)]
        for k, it in enumerate(items):
            stem = it.rel.with_suffix("")
            overlay = to_rgb(it.extra.pop("original"))
            for t in segs:
                atomic_write_png(out / mask_file(stem, t), found[t][k])
                overlay = draw_outline(overlay, found[t][k], colours[t][0])
            atomic_write_png(out / f"{stem}_outline.png", overlay)
            written += 1
    if skipped:
        write_skipped(out, skipped)
    return {
        "written": written,
        "out": out,
        "targets": list(segs),
        "colours": {t: c[1] for t, c in colours.items()},
        "skipped": skipped,
        "suppressed": suppressed,
    }


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
    files = sorted(
        p
        for p in pred_dir.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and not p.stem.endswith("_outline")
    )
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
        raise LiverscopeError(
            f"no predicted mask in {pred_dir} has a counterpart in {true_dir} (same relative path or file name)"
        )
    result = {
        "n": len(rows),
        "mean_iou": float(np.mean([r["iou"] for r in rows])),
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "images": rows,
        "skipped": skipped,
    }
    if out is not None:
        columns = ["name", "true", "iou", "dice"]
        atomic_write_csv(out, columns, ([r[c] for c in columns] for r in rows))
    return result


__all__ = ["mask_file", "write_segmentations", "score_mask_dirs"]
