"""Screen the liver-region crop lever (issue 23) without changing the product: every image of a cv
run's split cut to the bounding box of the liver segmenter's mask, and a copy of the run's
``split.csv`` that points at the crops, so that ``liverscope cv`` trains the same folds on them.

1. Masks of the distinct images with a liver segmenter (trained on the lesion set's expert liver masks):
   ``liverscope segment predict SEG_RUN DISTINCT_DIR --out MASKS`` (``--link-distinct`` makes
   DISTINCT_DIR: one symbolic link per distinct file of the split, in its class folder).
2. ``python benchmarks/liver_crop.py SPLIT MASKS OUT_DATA OUT_RUN``: crops (PNG, the class folders kept)
   and ``OUT_RUN/split.csv`` — same groups, folds and sources as SPLIT, the crops' own sha256 (so no
   preprocessing cache entry of the uncropped file is reused).
3. ``liverscope cv OUT_DATA --recipe cpu-best --test-frac 0 --fold 0 --out-dir DIR --name NAME
   --set data.crop_sector=false`` with OUT_RUN = DIR/NAME: the run reuses the split it finds there.

A mask whose largest region covers less than ``--min-area`` of the image keeps the whole image (counted
in the summary): the crop must never throw the liver away.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from liverscope.data.datasets import Sample
from liverscope.data.geometry import bounding_box
from liverscope.data.io import read_image
from liverscope.rundir import SPLIT, read_split, write_split
from liverscope.segment.images import read_mask
from liverscope.segment.mask_files import mask_file
from liverscope.utils import atomic_write_png


def liver_box(mask: np.ndarray, margin: float, min_area: float) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the mask's largest region grown on each side by ``margin`` of its extent
    (last minus first row or column), clipped to the image; None when that region covers less than
    ``min_area`` of the image."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    region = labels == 1 + int(np.argmax(sizes))
    if region.mean() < min_area:
        return None
    y0, y1, x0, x1 = bounding_box(region)
    dy, dx = int(margin * (y1 - 1 - y0)), int(margin * (x1 - 1 - x0))
    h, w = mask.shape
    return max(0, y0 - dy), min(h, y1 + dy), max(0, x0 - dx), min(w, x1 + dx)


def distinct(samples: list[Sample]) -> dict[str, Sample]:
    """The first sample of each sha256.

    Raises:
        SystemExit: two different files would share one mask or crop file (same class folder and file
            stem): the crops are named ``LABEL/STEM.png``.
    """
    first: dict[str, Sample] = {}
    named: dict[tuple[str, str], str] = {}
    for s in samples:
        first.setdefault(s.sha256, s)
        key = (s.label, s.path.stem)
        if named.setdefault(key, s.sha256) != s.sha256:
            raise SystemExit(
                f"{s.path}: another file of class {s.label} has the stem {s.path.stem!r}; rename one"
            )
    return first


def link_distinct(split: Path, out: Path) -> int:
    """One symbolic link per distinct file of ``split`` under ``out/LABEL/``: what ``segment predict`` reads."""
    samples, _, _ = read_split(split)
    firsts = distinct(samples)
    for s in firsts.values():
        dst = out / s.label / s.path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(s.path.resolve(), dst)
    return len(firsts)


def crop_all(split: Path, masks: Path, out_data: Path, out_run: Path, margin: float, min_area: float) -> dict:
    """Write the crops and the mapped split; returns counts and the crops' mean share of the image."""
    samples, assignment, folds = read_split(split)
    crops, whole, shares = {}, 0, []
    for sha, s in distinct(samples).items():
        img = read_image(s.path)
        box = liver_box(
            read_mask(masks / s.label / mask_file(s.path.stem, "liver"), img.shape[:2]), margin, min_area
        )
        if box is None:
            whole += 1
            box = (0, img.shape[0], 0, img.shape[1])
        y0, y1, x0, x1 = box
        shares.append((y1 - y0) * (x1 - x0) / (img.shape[0] * img.shape[1]))
        crops[sha] = img[y0:y1, x0:x1]
    mapped = []
    for s in samples:
        dst = out_data / s.label / f"{s.path.stem}.png"
        atomic_write_png(dst, crops[s.sha256])
        mapped.append(dataclasses.replace(s, path=dst, sha256=hashlib.sha256(dst.read_bytes()).hexdigest()))
    out_run.mkdir(parents=True, exist_ok=True)
    write_split(out_run / SPLIT, mapped, assignment, folds=folds)
    return {
        "files": len(samples),
        "distinct": len(crops),
        "whole_image_kept": whole,
        "mean_box_share": float(np.mean(shares)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("split", type=Path, help="split.csv of the cv run whose folds to keep")
    ap.add_argument("masks", type=Path, nargs="?", help="segment predict's output folder")
    ap.add_argument("out_data", type=Path, nargs="?")
    ap.add_argument("out_run", type=Path, nargs="?")
    ap.add_argument("--link-distinct", type=Path, metavar="DIR", help="only write DIR for segment predict")
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--min-area", type=float, default=0.10)
    a = ap.parse_args()
    if a.link_distinct:
        print(f"{link_distinct(a.split, a.link_distinct)} distinct files linked under {a.link_distinct}")
        return
    if not (a.masks and a.out_data and a.out_run):
        ap.error("MASKS, OUT_DATA and OUT_RUN are needed unless --link-distinct is given")
    print(json.dumps(crop_all(a.split, a.masks, a.out_data, a.out_run, a.margin, a.min_area)))


if __name__ == "__main__":
    main()
