"""Screen a texture lever cheaply (issue 23): features of a frozen backbone on native-scale tiles of
the scan sector, pooled per image, with a small head fitted per fold, scored out of fold and fused
with a trained run's out-of-fold probabilities.

One forward pass per tile and a logistic regression per fold: minutes, not the hour a 5-fold fine-tune
takes, so it tells whether native-scale texture carries the stage before a texture branch is built.

    python benchmarks/tile_features.py ../shared/data/liver-fibrosis --folds-from runs/screen/base192

The folds are the run's own (each fold's ``split.csv``), so the fused figure is out of fold too.
Features are cached in ``--cache`` (one ``.npz`` per backbone and tile size).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from liverscope.data.io import read_image, to_grey
from liverscope.data.sector import sector_mask
from liverscope.models.registry import build_model, get_spec, pretrained_normalisation


def tile_boxes(mask: np.ndarray, tile: int, skip_top: float, inside: float, max_tiles: int) -> list:
    """Corners of non-overlapping ``tile`` squares at least ``inside`` within the sector, below the
    top ``skip_top`` of the sector's depth (the abdominal wall), at most ``max_tiles`` spread evenly."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    start = int(top + skip_top * (bottom - top))
    boxes = [
        (y, x)
        for y in range(start, bottom - tile + 2, tile)
        for x in range(left, right - tile + 2, tile)
        if mask[y : y + tile, x : x + tile].mean() >= inside
    ]
    if len(boxes) > max_tiles:
        boxes = [boxes[i] for i in np.linspace(0, len(boxes) - 1, max_tiles).round().astype(int)]
    return boxes


def image_tiles(path: str, args) -> np.ndarray:
    grey = to_grey(read_image(path))
    boxes = tile_boxes(sector_mask(grey, "fan"), args.tile, args.skip_top, args.inside, args.max_tiles)
    if not boxes:  # a sector too small for one tile: the centre of the image stands in
        h, w = grey.shape
        boxes = [(max(0, (h - args.tile) // 2), max(0, (w - args.tile) // 2))]
    return np.stack([grey[y : y + args.tile, x : x + args.tile] for y, x in boxes])


@torch.no_grad()
def extract(paths: list[str], args) -> np.ndarray:
    model = build_model(args.backbone, 2, head="linear", pretrained=True).eval()
    mean, std = (
        np.asarray(v, np.float32)[:, None, None]
        for v in pretrained_normalisation(get_spec(args.backbone).timm_name)
    )
    feats = []
    for i, path in enumerate(paths):
        tiles = image_tiles(path, args).astype(np.float32) / 255.0
        x = (np.repeat(tiles[:, None], 3, axis=1) - mean) / std
        f = model.forward_features(torch.from_numpy(x)).mean((2, 3)).numpy()
        feats.append(np.concatenate([f.mean(0), f.std(0)]))
        if i % 200 == 0:
            print(f"  {i}/{len(paths)} images, {len(tiles)} tiles in the last", flush=True)
    return np.stack(feats)


def fold_table(run: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(glob.glob(str(run / "folds" / "fold*" / "predictions_val.csv"))):
        df = pd.read_csv(f)
        df["fold"] = int(Path(f).parent.name.removeprefix("fold"))
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def scores(y: np.ndarray, prob: np.ndarray, source: pd.Series) -> dict:
    pred = prob.argmax(1)
    out = {
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "macro_auc": roc_auc_score(y, prob, multi_class="ovr", average="macro"),
        "qwk": cohen_kappa_score(y, pred, weights="quadratic"),
    }
    for s in sorted(source.unique()):
        m = (source == s).to_numpy()
        out[f"bacc[{s}]"] = balanced_accuracy_score(y[m], pred[m])
    return {k: round(float(v), 3) for k, v in out.items()}


def head_oof(x: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float) -> np.ndarray:
    prob = np.zeros((len(y), y.max() + 1))
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        scaler = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
        clf.fit(scaler.transform(x[tr]), y[tr])
        prob[va] = clf.predict_proba(scaler.transform(x[va]))
    return prob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument(
        "--folds-from", required=True, type=Path, help="a cv run: its folds and out-of-fold probabilities"
    )
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--max-tiles", type=int, default=16)
    ap.add_argument("--skip-top", type=float, default=0.2)
    ap.add_argument("--inside", type=float, default=0.98)
    ap.add_argument("--c", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    ap.add_argument("--cache", type=Path, default=Path("runs/tile_features"))
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = fold_table(args.folds_from)
    classes = sorted(table.label.unique())
    y = table.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
    base = table[[f"prob_{c}" for c in classes]].to_numpy()
    paths = [str(Path(args.data) / Path(p).relative_to(Path(p).parents[1])) for p in table.path]
    cache = args.cache / f"{args.backbone}_t{args.tile}_m{args.max_tiles}_s{args.skip_top}.npz"
    t0 = time.perf_counter()
    if cache.exists() and list(np.load(cache, allow_pickle=True)["paths"]) == paths:
        x = np.load(cache)["x"]
    else:
        x = extract(paths, args)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, paths=np.asarray(paths))
    minutes = (time.perf_counter() - t0) / 60
    figures = {
        "cpu": platform.processor() or platform.machine(),
        "features_minutes": round(minutes, 2),
        "n": len(y),
    }
    figures["run"] = scores(y, base, table.source)
    for c in args.c:
        tiles = head_oof(x, y, table.fold.to_numpy(), c)
        fused = np.exp((np.log(base + 1e-9) + np.log(tiles + 1e-9)) / 2)
        figures[f"tiles C={c}"] = scores(y, tiles, table.source)
        figures[f"fused C={c}"] = scores(y, fused / fused.sum(1, keepdims=True), table.source)
    print(json.dumps(figures, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
