"""Benchmark: effect of the preprocessing cache on epoch time (issue 2).

Measures, in one run, the data-pipeline time of one training epoch on a real class-per-folder set with
the seed-1 preprocessing (EfficientNet recipe: 224 px, non-local-means denoising, ultrasound
augmentation), for:

- no cache: every epoch decodes and preprocesses every image again (what the studies' loaders do);
- liverscope, first epoch: the cold cache is filled (threads), then the epoch runs;
- liverscope, later epochs: images come from memory;
- liverscope, a new run on the same data: images come from the disk cache.

Model compute is the same in every case and is not included (it is reported separately for a
reference model, per image, so the share of the epoch spent on data is visible).

    python benchmarks/cache.py [--data ../shared/data/liver-fibrosis] [--limit N] [--denoise-at full|model]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from liverscope.data.augment import build_transform
from liverscope.data.datasets import ImageDataset, load_samples, warm_cache
from liverscope.data.preprocess import PreprocessCache, Preprocessing

REPO = Path(__file__).resolve().parents[1]


def epoch_seconds(ds: ImageDataset, batch_size: int = 32) -> float:
    t0 = time.perf_counter()
    for _ in DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-fibrosis")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    ap.add_argument(
        "--denoise-at", default="full", choices=["full", "model"], help="full = the study's order"
    )
    ap.add_argument(
        "--model", default="efficientnet_b0", help="reference model for the per-image compute figure"
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(
            f"{args.data} not found: this benchmark needs the real data (see ../shared/data/README.md)"
        )
    samples, classes = load_samples(args.data)
    if args.limit:
        samples = samples[:: max(1, len(samples) // args.limit)][: args.limit]
    pp = Preprocessing(size=224, denoise=True, denoise_at=args.denoise_at)
    aug = build_transform("ultrasound", pp, train=True)
    threads = torch.get_num_threads()
    print(f"{len(samples)} images, preprocessing {pp.to_dict()}, {threads} threads")

    # baseline: no cache, no memory: every epoch recomputes everything
    base = ImageDataset(samples, classes, PreprocessCache(pp, None), aug, in_memory=False)
    t_base = epoch_seconds(base)
    print(f"no cache            : {t_base:8.1f} s/epoch  ({len(samples) / t_base:6.1f} img/s)")

    tmp = Path(tempfile.mkdtemp(prefix="liverscope-cache-bench-"))
    try:
        cache = PreprocessCache(pp, tmp)
        t0 = time.perf_counter()
        good, skipped = warm_cache(samples, cache, workers=threads)
        t_fill = time.perf_counter() - t0
        ds = ImageDataset(good, classes, cache, aug, in_memory=True)
        t_first = t_fill + epoch_seconds(ds)
        t_later = min(epoch_seconds(ds) for _ in range(2))
        fresh = ImageDataset(good, classes, PreprocessCache(pp, tmp), aug, in_memory=True)
        t_disk = epoch_seconds(fresh)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"liverscope, epoch 1 : {t_first:8.1f} s/epoch  (cache fill {t_fill:.1f} s in {threads} threads; {len(skipped)} skipped)"
    )
    print(
        f"liverscope, epoch 2+: {t_later:8.1f} s/epoch  ({len(good) / t_later:6.1f} img/s)  → {t_base / t_later:.1f}x faster than no cache"
    )
    print(f"new run, disk cache : {t_disk:8.1f} s/epoch  → {t_base / t_disk:.1f}x faster than no cache")

    from liverscope.models import build_model

    model = build_model(args.model, len(classes))
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x, y = torch.randn(16, 3, 224, 224), torch.randint(0, len(classes), (16,))
    model.train()
    for i in range(3):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    per_img = (time.perf_counter() - t0) / 32
    print(
        f"{args.model} train step: {per_img * 1000:.0f} ms/image on this CPU → model compute {per_img * len(good):.0f} s/epoch"
    )


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()
