"""The torch backend against the naive eager loop with denoising off, by model threads and batch size
(issue 14, item 1): 60 real images at 224 px, random-init EfficientNet-B0 and ResNet-50 + CBAM, two
repeats. Uses the set-up of benchmarks/inference.py.

    python benchmarks/torch_threads.py
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch

from inference import make_runs, naive_predict, pick_subset
from liverscope.inference.predict import Predictor, write_results
from liverscope.rundir import load_model

tmp = Path(tempfile.mkdtemp())
files = pick_subset(Path("../shared/data/liver-fibrosis"), 60, tmp / "images")
for f in files:
    f.read_bytes()
for model_name in ("efficientnet_b0", "resnet50_cbam"):
    runs = make_runs(model_name, 224, tmp / "runs")
    run = runs["off"]
    model, _ = load_model(run)
    naive_predict(model, files[:2], tmp / "w.csv", 224, False)
    for rep in range(2):
        s = naive_predict(model, files, tmp / "n.csv", 224, False)
        print(
            f"{model_name} rep{rep} naive eager (torch {torch.get_num_threads()} threads): {len(files) / s:.1f} img/s",
            flush=True,
        )
        for threads in (1, 2):
            for bs in (4, 8):
                p = Predictor.from_run(run, backend="torch", threads=threads, batch_size=bs, precision="fp32")
                list(p.predict_paths(files[:4]))
                t0 = time.perf_counter()
                write_results(p.predict_paths([tmp / "images"]), p.labels, tmp / "t.csv")
                s = time.perf_counter() - t0
                print(
                    f"{model_name} rep{rep} liverscope torch threads={threads} batch={bs} workers={p.workers}: {len(files) / s:.1f} img/s",
                    flush=True,
                )
