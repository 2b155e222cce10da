"""Flip test-time augmentation, measured after the fact on a finished cross-validation (issue 9).

Every development image is scored again by the fold model that did not train on it, once as it is and
once mirrored left-right; the two logit vectors are averaged. The out-of-fold figures with and without
the mirror are printed side by side (one run, same models, same images), overall and per source.

    python benchmarks/tta.py runs/quality/lite0-128-e15 [--cache-dir .liverscope-cache]

Results: a Markdown table and RUN/tta.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from liverscope import rundir
from liverscope.data.preprocess import PreprocessCache, normalise_batch
from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
from liverscope.utils import atomic_write_json, softmax

KEYS = ("balanced_accuracy", "macro_auc", "quadratic_kappa")


def fold_logits(
    fold_dir: Path, cache_dir: str | None, batch: int = 32
) -> tuple[list[str], np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``(paths, labels, logits, sources, flip-averaged logits)`` of a fold model on its validation images."""
    model, meta = rundir.load_model(fold_dir)
    pp = rundir.read_preprocessing(fold_dir)
    samples, split, _ = rundir.read_split(fold_dir / rundir.SPLIT)
    val = [s for s, a in zip(samples, split) if a == "val"]
    cache = PreprocessCache(pp, cache_dir)
    names = list(meta["labels"])
    plain, flipped = [], []
    with torch.inference_mode():
        for i in range(0, len(val), batch):
            images = [cache.load(s.path) for s in val[i : i + batch]]
            x = torch.from_numpy(normalise_batch(images, pp)).permute(0, 3, 1, 2).contiguous()
            plain.append(model(x).numpy())
            flipped.append(model(torch.flip(x, dims=[3])).numpy())
    logits = np.concatenate(plain)
    return (
        [str(s.path) for s in val],
        np.array([names.index(s.label) for s in val]),
        logits,
        [s.source or "unknown" for s in val],
        (logits + np.concatenate(flipped)) / 2,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a finished `cv` run directory")
    ap.add_argument("--cache-dir", default=".liverscope-cache")
    args = ap.parse_args()
    t0 = time.perf_counter()
    meta = rundir.read_model_meta(args.run)
    names = list(meta["labels"])
    parts = [fold_logits(m, args.cache_dir) for m in rundir.members(args.run)]
    y = np.concatenate([p[1] for p in parts])
    sources = [s for p in parts for s in p[3]]
    temps = [rundir.temperature(rundir.read_model_meta(m)) for m in rundir.members(args.run)]
    out = {"run": str(args.run), "n": int(len(y))}
    for label, idx in (("as is", 2), ("flip-averaged", 4)):
        probs = np.concatenate([softmax(p[idx], t) for p, t in zip(parts, temps)])
        m = compute_metrics(y, probs, names, ci=True)
        by = metrics_by_group(y, probs, sources, names)
        out[label] = {k: m.get(k) for k in KEYS} | {
            "ci": {k: m["ci"].get(k) for k in KEYS if k in m.get("ci", {})},
            "by_source": {s: {k: g.get(k) for k in KEYS} for s, g in by["groups"].items()},
        }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(args.run / "tta.json", out)
    print(
        "| out-of-fold | balanced acc. | macro AUC | QW kappa | per source (balanced acc.) |\n| --- | --- | --- | --- | --- |"
    )
    for label in ("as is", "flip-averaged"):
        r = out[label]
        src = ", ".join(f"{s}: {g['balanced_accuracy']:.3f}" for s, g in r["by_source"].items())
        print(
            f"| {label} | {r['balanced_accuracy']:.3f} | {r['macro_auc']:.3f} | {r['quadratic_kappa']:.3f} | {src} |"
        )
    print(f"{out['seconds']} s")


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()
