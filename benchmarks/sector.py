"""Benchmark: the scan sector against expert outlines and on the fibrosis set (issue 21).

1. AUL lesion images (``liver-lesions``; every pixel outside the expert sector is 0): IoU of each
   sector method against the 623 expert masks, on the images as they are, on copies whose background
   is grey 10 (the fan keeps its grey levels, offset by 10 so that its darkest pixels equal the
   background), and on those copies with burned-in text, a depth scale and a colour bar drawn outside
   the sector. Per-image figures go to ``--out``/sector_iou.csv.
2. Fibrosis images (no expert masks): the share of each source (image size) whose sector takes in the
   background (runs along over 40% of the image border), per method, and a montage of ``--montage`` images, every source, with
   the sector outline (green: ``fan``, red: ``threshold``).

    python benchmarks/sector.py [--data ../shared/data] [--out runs/sector] [--montage docs/images/sector_montage.png]
"""

from __future__ import annotations

import argparse
import csv
import platform
import random
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from liverscope.data.io import read_image, to_grey
from liverscope.data.sector import SECTOR_METHODS, sector_mask
from liverscope.evaluate.masks import iou

REPO = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{platform.processor() or platform.machine()} [{' '.join(have)}]"


def grey10(img: np.ndarray, sector: np.ndarray) -> np.ndarray:
    return np.where(sector, np.round(10 + img * (245 / 255)), 10).astype(np.uint8)


def with_marks(img: np.ndarray, sector: np.ndarray) -> np.ndarray:
    """Scanner text, a depth scale and a colour bar, drawn only outside the sector (where scanners put them)."""
    h, w = img.shape
    layer = np.zeros_like(img)
    scale = h / 700
    cv2.putText(
        layer, "GE LOGIQ E9  C1-6  12cm", (5, int(25 * scale) + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, 230, 2
    )
    cv2.putText(layer, "Liver R  MI 1.1 TIs 0.4", (5, h - 10), cv2.FONT_HERSHEY_SIMPLEX, scale, 200, 2)
    for k in range(8):
        y = int(h * (0.1 + 0.1 * k))
        cv2.line(layer, (w - 30, y), (w - 18, y), 220, 2)
    cv2.rectangle(layer, (w - 12, int(h * 0.3)), (w - 4, int(h * 0.7)), 180, -1)
    out = img.copy()
    outside = (layer > 0) & ~sector
    out[outside] = layer[outside]
    return out


def lesion_ious(data: Path, out: Path) -> None:
    root = data / "liver-lesions"
    rows, seconds = [], defaultdict(float)
    cases = sorted((root / "masks" / "sector").glob("*.png"))
    for mask_path in cases:
        image_path = next(
            root / c / mask_path.name
            for c in ("benign", "malignant", "normal")
            if (root / c / mask_path.name).exists()
        )
        img = to_grey(read_image(image_path))
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
        variants = {"as is": img, "grey 10": grey10(img, truth)}
        variants["grey 10 + text"] = with_marks(variants["grey 10"], truth)
        row = {"case": mask_path.name, "shape": f"{img.shape[1]}x{img.shape[0]}"}
        for method in SECTOR_METHODS:
            for name, im in variants.items():
                t0 = time.perf_counter()
                row[f"{method} | {name}"] = round(iou(sector_mask(im, method), truth), 4)
                seconds[method] += time.perf_counter() - t0
        rows.append(row)
    with open(out / "sector_iou.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nAUL expert sector masks: {len(rows)} images; CPU {cpu_flags()}")
    print("| method | images | mean IoU | 5th percentile | minimum | ms per image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in [k for k in rows[0] if "|" in k]:
        v = np.array([r[key] for r in rows])
        method = key.split(" | ")[0]
        ms = 1000 * seconds[method] / (3 * len(rows))
        print(
            f"| {method} | {key.split(' | ')[1]} | {v.mean():.3f} | {np.percentile(v, 5):.3f} | {v.min():.3f} | {ms:.1f} |"
        )


def takes_background(mask: np.ndarray) -> bool:
    """True when the sector takes in over 40% of the image border. The frame's border is background in
    every source; a fan reaches it at most along the top edge and at two corners, a sector that has
    taken in the background (the old threshold on a grey-10 frame) runs along all of it."""
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return bool(border.mean() > 0.4)


def fibrosis(data: Path, montage: Path | None, n_montage: int, seed: int = 0) -> None:
    root = data / "liver-fibrosis"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    by_source: dict[str, list[Path]] = defaultdict(list)
    images = {}
    for p in files:
        img = to_grey(read_image(p))
        images[p] = img
        by_source[f"{img.shape[1]}x{img.shape[0]}"].append(p)
    print(
        f"\nFibrosis images whose sector takes in the background (over 40% of the image border; in brackets the mean share of the image the sector covers), {len(files)} files; CPU {cpu_flags()}"
    )
    print("| source | images | " + " | ".join(SECTOR_METHODS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SECTOR_METHODS) + " |")
    for source, paths in sorted(by_source.items(), key=lambda kv: -len(kv[1])):
        masks = {m: [sector_mask(images[p], m) for p in paths] for m in SECTOR_METHODS}
        shares = [np.mean([takes_background(k) for k in masks[m]]) for m in SECTOR_METHODS]
        areas = [np.mean([k.mean() for k in masks[m]]) for m in SECTOR_METHODS]
        print(
            f"| {source} | {len(paths)} | "
            + " | ".join(f"{s:.1%} ({a:.0%})" for s, a in zip(shares, areas))
            + " |"
        )
    if montage:
        write_montage(images, by_source, montage, n_montage, seed)


def write_montage(images: dict, by_source: dict, path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    picks = []
    for _source, paths in sorted(by_source.items(), key=lambda kv: -len(kv[1])):
        k = max(1, round(n * len(paths) / len(images)))
        picks += rng.sample(paths, min(k, len(paths)))
    tiles = []
    for p in picks[:n]:
        img = images[p]
        view = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        for method, colour in (("threshold", (0, 0, 255)), ("fan", (0, 255, 0))):
            contours, _ = cv2.findContours(
                sector_mask(img, method).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(view, contours, -1, colour, 3)
        tile = cv2.resize(view, (200, 160), interpolation=cv2.INTER_AREA)
        cv2.putText(
            tile,
            f"{p.parent.name}/{p.name} {img.shape[1]}x{img.shape[0]}",
            (3, 12),
            cv2.FONT_HERSHEY_PLAIN,
            0.8,
            (255, 255, 255),
            1,
        )
        tiles.append(tile)
    while len(tiles) % 8:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[i : i + 8]) for i in range(0, len(tiles), 8)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    print(f"montage of {min(n, len(picks))} images -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "sector")
    ap.add_argument(
        "--montage",
        type=Path,
        default=None,
        help="write a montage of fibrosis images with the sector outline",
    )
    ap.add_argument("--n-montage", type=int, default=40)
    ap.add_argument("--skip-fibrosis", action="store_true")
    ap.add_argument("--skip-lesions", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_lesions:
        lesion_ious(args.data, args.out)
    if not args.skip_fibrosis:
        fibrosis(args.data, args.montage, args.n_montage)


if __name__ == "__main__":
    main()
