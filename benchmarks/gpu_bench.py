"""GPU throughput for ``benchmarks/gpu.sh`` (issue 26, item 5): training steps in fp32 and bf16-mixed
(:func:`liverscope.speed.training.time_training_steps`, synthetic input of the recipe's shape) and
``Predictor.predict_paths`` over real images with the torch backend in fp32 and bf16, per model.
Prints markdown table rows; exits 2 without a CUDA GPU.

    python benchmarks/gpu_bench.py --data ../shared/data/liver-fibrosis [--n 512] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from liverscope import rundir
from liverscope.data.io import iter_image_files
from liverscope.data.preprocess import Preprocessing
from liverscope.inference.predict import Predictor
from liverscope.models import build_model
from liverscope.speed.training import BF16, FP32, time_training_steps

#: (model, input size, training batch): cpu-best's network, and the 224 px recipes' networks.
MODELS = [("tf_efficientnet_lite0", 192, 32), ("tf_efficientnet_lite0", 224, 32), ("resnet50_cbam", 224, 64)]
LABELS = ["F0", "F1", "F2", "F3", "F4"]


def predict_rate(name: str, size: int, files: list[Path], precision: str, batch: int) -> float:
    """Images/s of predict_paths (decode, preprocess without denoising, model, results) on the GPU."""
    with tempfile.TemporaryDirectory() as run:
        rundir.save_model(
            run, build_model(name, len(LABELS)), LABELS, Preprocessing(size=size, denoise=False)
        )
        p = Predictor.from_run(run, backend="torch", device="cuda", precision=precision, batch_size=batch)
        list(p.predict_paths(files[:batch]))  # warm-up: cuDNN picks its kernels
        t0 = time.perf_counter()
        n = sum(1 for r in p.predict_paths(files) if r.error is None)
        return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    if a.data is None:
        ap.error("--data is required")
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    files = list(iter_image_files([a.data]))[: a.n]
    print(
        f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {len(files)} images of {a.data}\n"
    )
    print(
        "| model | size | train batch | train fp32 img/s | train bf16-mixed img/s | bf16 speed-up | predict fp32 img/s | predict bf16 img/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, size, batch in MODELS:
        torch.manual_seed(0)
        steps = time_training_steps(build_model(name, len(LABELS)), batch, size, "cuda:0", steps=10)
        rates = [predict_rate(name, size, files, p, a.batch) for p in ("fp32", "bf16")]
        print(
            f"| {name} | {size} | {batch} | {batch / steps[FP32]:.0f} | {batch / steps[BF16]:.0f} | {steps[FP32] / steps[BF16]:.2f}x | "
            f"{rates[0]:.0f} | {rates[1]:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
