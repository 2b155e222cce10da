"""How far bf16 autocast moves a trained run's answers from fp32's (issue 21): every image of the run's
split scored twice by the torch backend, in fp32 and in bf16 (the same preprocessed inputs, the same
batches), at the run's temperature.

    python benchmarks/bf16.py runs/NAME [--cache-dir .liverscope-cache] [--batch 16]

Prints the CPU's flags and a Markdown table: the largest and the 99th-percentile change of any class
probability, of the fibrosis endpoints (METAVIR labels) and of the logits, the share of images whose
predicted class changes, and the test split's figures in both precisions. bf16 is emulated (slow) on a
CPU without AVX512-BF16/AMX; the numbers are the same. Results also in RUN/bf16.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from liverscope import rundir
from liverscope.data.preprocess import PreprocessCache
from liverscope.evaluate.metrics import compute_metrics
from liverscope.inference.predict import Predictor
from liverscope.labels import endpoint_probabilities, is_metavir
from liverscope.models.backends import BF16_TOLERANCE
from liverscope.utils import atomic_write_json, cpu_has_native_bf16, softmax

KEYS = ("accuracy", "balanced_accuracy", "macro_auc", "quadratic_kappa")


def cpu_flags() -> str:
    """The CPU model and the flags that decide bf16's speed (lscpu's names)."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return f"{model}; {' '.join(keep) or 'flags unknown'}; torch capability {torch.backends.cpu.get_cpu_capability()}"


def score(run: Path, inputs: list[np.ndarray], precision: str, batch: int) -> tuple[np.ndarray, float]:
    """Logits of the inputs in one precision and seconds per image: the torch backend's forward pass
    (channels-last, ``inference_mode``, bf16 autocast) without its first-batch check, which would fall
    back to fp32 where bf16 moves a probability too far: what bf16 does is what is measured here."""
    p = Predictor.from_run(
        run, backend="torch", device="cpu", precision=precision, batch_size=batch, calibrated=False
    )
    p.engine._checked = True  # no check: every batch in the precision asked for
    p.logits(inputs[:batch])  # warm-up: allocation and thread choice
    t0 = time.perf_counter()
    logits = p.logits(inputs)
    return logits, (time.perf_counter() - t0) / max(1, len(inputs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    meta = rundir.read_model_meta(args.run)
    labels, temperature = list(meta["labels"]), rundir.temperature(meta)
    samples, split, _ = rundir.read_split(args.run / rundir.SPLIT)
    cache = PreprocessCache(rundir.read_preprocessing(args.run), args.cache_dir)
    inputs = [cache.load(s.path) for s in samples]
    y = np.array([labels.index(s.label) for s in samples])
    out = {"cpu": cpu_flags(), "native_bf16": cpu_has_native_bf16(), "n": len(inputs), "run": str(args.run)}
    (l32, s32), (l16, s16) = (
        score(args.run, inputs, "fp32", args.batch),
        score(args.run, inputs, "bf16", args.batch),
    )
    p32, p16 = softmax(l32, temperature), softmax(l16, temperature)
    dp, dl = np.abs(p16 - p32).max(1), np.abs(l16 - l32).max(1)
    out.update(
        {
            "prob_max": float(dp.max()),
            "prob_p99": float(np.quantile(dp, 0.99)),
            "prob_median": float(np.median(dp)),
            "logit_max": float(dl.max()),
            "logit_p99": float(np.quantile(dl, 0.99)),
            "changed_class": float((p16.argmax(1) != p32.argmax(1)).mean()),
            "n_changed_class": int((p16.argmax(1) != p32.argmax(1)).sum()),
            # the torch backend's first-batch check on a batch of one image (the app's): kept when this image passes
            "one_image_check_passes": float(
                ((dp <= BF16_TOLERANCE) & (p16.argmax(1) == p32.argmax(1))).mean()
            ),
            "seconds_per_image": {"fp32": s32, "bf16": s16},
        }
    )
    if is_metavir(labels):
        ep = [
            np.abs(
                np.array(list(endpoint_probabilities(dict(zip(labels, a))).values()))
                - np.array(list(endpoint_probabilities(dict(zip(labels, b))).values()))
            ).max()
            for a, b in zip(p16, p32)
        ]
        out["endpoint_max"], out["endpoint_p99"] = float(np.max(ep)), float(np.quantile(ep, 0.99))
    test = np.array([a == "test" for a in split])
    if test.any():
        out["test"] = {
            name: {k: compute_metrics(y[test], p[test], labels, ci=False).get(k) for k in KEYS}
            for name, p in (("fp32", p32), ("bf16", p16))
        }
    atomic_write_json(args.run / "bf16.json", out)
    print(f"CPU: {out['cpu']} (native bf16: {out['native_bf16']})\n")
    print(
        "| images | max Δp | 99th pct Δp | median Δp | max Δ endpoint | max Δlogit | predicted class changed | one-image check passes | s/image fp32 | s/image bf16 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {out['n']} | {out['prob_max']:.4f} | {out['prob_p99']:.4f} | {out['prob_median']:.5f} | {out.get('endpoint_max', float('nan')):.4f} | "
        f"{out['logit_max']:.4f} | {out['n_changed_class']} ({out['changed_class']:.2%}) | {out['one_image_check_passes']:.1%} | {s32:.4f} | {s16:.4f} |"
    )
    for name, figures in (out.get("test") or {}).items():
        print(
            f"test split, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if v is not None)
        )


if __name__ == "__main__":
    main()
