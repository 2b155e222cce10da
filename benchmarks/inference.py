"""Benchmark: end-to-end prediction speed on a folder, and single-image predict + Grad-CAM latency (issue 5).

Measured in one run, on real images of ``../shared/data/liver-fibrosis`` (a class-stratified subset,
both acquisition sources), for each model at 224 px with random-init weights (speed does not depend
on the weights):

(a) naive baseline — what the studies describe, one image at a time: OpenCV decode, BGR→RGB, colour
    non-local-means at full resolution, resize, ImageNet normalisation, eager fp32 PyTorch, a CSV row;
(b) liverscope, torch backend — ``Predictor(backend="torch").predict_paths`` → ``write_results``;
(c) liverscope, ONNX backend — the same with ONNX Runtime;
(d) bare ONNX Runtime session on a ready-made batch: the model-only ceiling;

with the denoising of each: the study's (colour NLM, full resolution), liverscope's default (NLM on
the grey image at model resolution), liverscope with NLM at full resolution (the study's order), and
off. End-to-end = decode → preprocess → model → CSV written (model loading excluded, reported apart).
Then the latency of one uploaded image through predict + Grad-CAM (what the app does) for
``efficientnet_b0``.

    python benchmarks/inference.py [--data ../shared/data/liver-fibrosis] [--n 64] [--models efficientnet_b0 resnet50_cbam]

The machine is shared: compare the ratios measured within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from liverscope.data.io import iter_image_files
from liverscope.config import IMAGENET_MEAN, IMAGENET_STD
from liverscope.data.preprocess import Preprocessing, normalise_batch
from liverscope.explain import cam_overlay
from liverscope.export import export_onnx
from liverscope.models import build_model
from liverscope.predict import DEFAULT_BATCH_SIZE, OnnxBackend, Predictor, write_results
from liverscope.rundir import load_model, save_model
from liverscope.utils import atomic_write_json, read_json, softmax, torch_threads

REPO = Path(__file__).resolve().parents[1]
LABELS = ["F0", "F1", "F2", "F3", "F4"]


# --------------------------------------------------------------------------------------------------
# set-up
# --------------------------------------------------------------------------------------------------


def pick_subset(data: Path, n: int, out: Path) -> list[Path]:
    """A folder of symlinks to ``n`` files spread evenly over every class folder (data is not copied)."""
    classes = sorted(d for d in data.iterdir() if d.is_dir())
    per = max(1, n // len(classes))
    picked = []
    for c in classes:
        files = sorted(p for p in c.iterdir() if p.is_file())
        step = max(1, len(files) // per)
        for p in files[::step][:per]:
            link = out / c.name / p.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p.resolve())
            picked.append(link)
    return picked


def make_runs(model_name: str, size: int, root: Path) -> dict[str, Path]:
    """One run directory per preprocessing variant, sharing random-init weights and one ONNX export."""

    torch.manual_seed(0)
    model = build_model(model_name, len(LABELS))
    variants = {
        "liverscope NLM @ model res": Preprocessing(size=size, denoise=True, denoise_at="model"),
        "liverscope NLM @ full res": Preprocessing(size=size, denoise=True, denoise_at="full"),
        "off": Preprocessing(size=size, denoise=False),
    }
    runs = {}
    first = None
    for name, pp in variants.items():
        run = root / f"{model_name}-{name.replace(' ', '_').replace('@', 'at')}"
        save_model(run, model, LABELS, pp)
        if first is None:
            t0 = time.perf_counter()
            info = export_onnx(run)
            print(f"  exported {model_name} to ONNX in {time.perf_counter() - t0:.1f}s (max |logit diff| {info['max_abs_logit_diff']:.1e})", flush=True)
            first = run
        else:
            shutil.copy(first / "model.onnx", run / "model.onnx")
            meta = read_json(run / "model.json")
            meta["onnx"] = read_json(first / "model.json")["onnx"]
            atomic_write_json(run / "model.json", meta)
        runs[name] = run
    return runs


# --------------------------------------------------------------------------------------------------
# (a) the naive baseline
# --------------------------------------------------------------------------------------------------


def naive_predict(model: torch.nn.Module, files: list[Path], out: Path, size: int, denoise: bool) -> float:
    """The studies' pipeline, one image at a time; returns seconds for all files (CSV written)."""
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    model = model.eval()
    t0 = time.perf_counter()
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "prediction", *[f"prob_{c}" for c in LABELS]])
        for f in files:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                w.writerow([str(f), "unreadable"])
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if denoise:
                rgb = cv2.fastNlMeansDenoisingColored(rgb, None, 10, 10, 7, 21)
            rgb = cv2.resize(rgb, (size, size))
            x = (rgb.astype(np.float32) / 255.0 - mean) / std
            t = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0).contiguous()
            with torch.no_grad():
                logits = model(t).numpy()
            p = softmax(logits)[0]
            w.writerow([str(f), LABELS[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# (b), (c): liverscope; (d) the bare session
# --------------------------------------------------------------------------------------------------


def liverscope_predict(run: Path, folder: Path, out: Path, backend: str, batch_size: int | None = None) -> tuple[float, float, Predictor]:
    """Returns (load seconds, predict seconds, predictor)."""
    t0 = time.perf_counter()
    p = Predictor.from_run(run, backend=backend, batch_size=batch_size)
    t1 = time.perf_counter()
    summary = write_results(p.predict_paths([folder]), p.labels, out)
    t2 = time.perf_counter()
    assert not summary["skipped"], summary["skipped"][:3]
    return t1 - t0, t2 - t1, p


def preprocess_only(run: Path, folder: Path, workers: int | None = None) -> float:
    """Seconds to decode + preprocess every file with the predictor's thread pool and no model."""
    from concurrent.futures import ThreadPoolExecutor

    p = Predictor.from_run(run, backend="onnx", workers=workers)
    files = list(iter_image_files([folder]))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(p.workers) as pool:
        for _ in pool.map(p._load, files):
            pass
    return time.perf_counter() - t0


def bare_session_ips(onnx_path: Path, size: int, batch: int, n_images: int) -> float:
    """Images/s of an ONNX Runtime session (same options as the backend) on a ready-made batch."""
    eng = OnnxBackend(onnx_path, "cpu")
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    feed = {eng.input_name: x}
    eng.session.run(None, feed)
    t0 = time.perf_counter()
    done = 0
    while done < n_images:
        eng.session.run(None, feed)
        done += batch
    return done / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# single image: predict + Grad-CAM
# --------------------------------------------------------------------------------------------------


def full_backward_cam(model, img, pp, k):
    """Grad-CAM as pytorch-grad-cam does it by default: backward through the whole network."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.from_numpy(normalise_batch([img], pp)).permute(0, 3, 1, 2).contiguous()
    with GradCAM(model=model, target_layers=[model.cam_layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
    return show_cam_on_image(img.astype(np.float32) / 255.0, heat, use_rgb=True)


def latency(run: Path, files: list[Path], backend: str, repeats: int, cam_fn=None) -> dict:
    """Median ms per uploaded image for decode+preprocess+predict, Grad-CAM, and both (as the app does)."""
    cam_fn = cam_fn or cam_overlay
    p = Predictor.from_run(run, backend=backend, batch_size=1)
    model = p.model.eval()
    data = [f.read_bytes() for f in files[:repeats]]
    # warm-up (first calls allocate, JIT-select kernels)
    for d in data[:3]:
        r, img = p.predict_bytes("x", d)
        cam_fn(model, img, p.pp, p.labels.index(r.label))
    pred_ms, cam_ms, total_ms = [], [], []
    for d in data:
        t0 = time.perf_counter()
        r, img = p.predict_bytes("x", d)
        t1 = time.perf_counter()
        cam_fn(model, img, p.pp, p.labels.index(r.label))
        t2 = time.perf_counter()
        pred_ms.append(1e3 * (t1 - t0))
        cam_ms.append(1e3 * (t2 - t1))
        total_ms.append(1e3 * (t2 - t0))
    return {"predict_ms": statistics.median(pred_ms), "gradcam_ms": statistics.median(cam_ms), "total_ms": statistics.median(total_ms),
            "total_p90_ms": float(np.percentile(total_ms, 90)), "n": len(data)}


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "liver-fibrosis")
    ap.add_argument("--n", type=int, default=64, help="images in the subset (spread over the classes)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--models", nargs="+", default=["efficientnet_b0", "resnet50_cbam"])
    ap.add_argument("--latency-repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found: this benchmark needs the real data (see ../shared/data/README.md)")

    tmp = Path(tempfile.mkdtemp(prefix="liverscope-bench-"))
    try:
        folder = tmp / "images"
        files = pick_subset(args.data, args.n, folder)
        for f in files:  # page cache warm for every contender alike
            f.read_bytes()
        sizes = {}
        for f in files:
            im = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            sizes[f"{im.shape[1]}x{im.shape[0]}"] = sizes.get(f"{im.shape[1]}x{im.shape[0]}", 0) + 1
        print(f"{len(files)} images from {args.data} ({', '.join(f'{k}: {v}' for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])})")
        print(f"load average before: {os.getloadavg()[0]:.1f}; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}, "
              f"torch threads {torch.get_num_threads()}, OpenCV threads {cv2.getNumThreads()}", flush=True)
        report: dict = {"n_images": len(files), "size": args.size, "cpu_count": os.cpu_count(), "models": {}}
        for model_name in args.models:
            print(f"\n== {model_name} @ {args.size}px", flush=True)
            runs = make_runs(model_name, args.size, tmp / "runs")
            res: dict = {}
            model, _ = load_model(runs["off"])
            naive_model = model  # eager, fp32, contiguous NCHW: as in the studies' scripts
            study_key = "study NLM colour @ full res"
            for denoise, key, threads in ((True, study_key, None), (False, "off", None), (True, study_key, 1), (False, "off", 1)):
                name = "naive" if threads is None else f"naive, torch {threads} thread"
                with torch_threads(threads):  # None: PyTorch's default (all cores), as the studies ran it
                    naive_predict(naive_model, files[:2], tmp / "warm.csv", args.size, denoise)  # warm-up
                    s = naive_predict(naive_model, files, tmp / "naive.csv", args.size, denoise)
                res[(name, key)] = len(files) / s
                print(f"  (a) {name}, denoise {key:28s} {len(files) / s:7.1f} images/s", flush=True)
            for key, run in runs.items():
                for backend in ("torch", "onnx"):
                    load_s, s, p = liverscope_predict(run, folder, tmp / f"{backend}.csv", backend)
                    res[(backend, key)] = len(files) / s
                    print(f"  ({'b' if backend == 'torch' else 'c'}) liverscope {backend:5s} ({p.precision}, batch {p.batch_size}), denoise {key:28s} "
                          f"{len(files) / s:7.1f} images/s  (model load {load_s:.1f}s)", flush=True)
                s = preprocess_only(run, folder)
                res[("preprocess only", key)] = len(files) / s
                print(f"      decode+preprocess only ({Predictor.from_run(run, backend='onnx').workers} threads), denoise {key:28s} {len(files) / s:7.1f} images/s", flush=True)
            bs = DEFAULT_BATCH_SIZE[("onnx", "cpu")]
            for b in sorted({1, bs}):
                res[("bare onnxruntime", f"batch {b}")] = bare_session_ips(runs["off"] / "model.onnx", args.size, b, max(32, len(files) // 2))
                print(f"  (d) bare ONNX Runtime session, batch {b:2d}                   {res[('bare onnxruntime', f'batch {b}')]:7.1f} images/s", flush=True)
            ceiling = max(v for (k, _), v in res.items() if k == "bare onnxruntime")
            res[("ceiling", "best bare batch")] = ceiling
            study = res[("naive", study_key)]
            study1 = res[("naive, torch 1 thread", study_key)]
            summary = {
                "onnx_default_vs_naive_study": res[("onnx", "liverscope NLM @ model res")] / study,
                "onnx_default_vs_naive_study_1thread": res[("onnx", "liverscope NLM @ model res")] / study1,
                "onnx_fullres_nlm_vs_naive_study_1thread": res[("onnx", "liverscope NLM @ full res")] / study1,
                "torch_default_vs_naive_study_1thread": res[("torch", "liverscope NLM @ model res")] / study1,
                "onnx_off_vs_naive_off_1thread": res[("onnx", "off")] / res[("naive, torch 1 thread", "off")],
                "onnx_off_vs_ceiling": res[("onnx", "off")] / ceiling,
                "torch_off_vs_ceiling": res[("torch", "off")] / ceiling,
            }
            print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()), flush=True)
            entry = {"images_per_s": {f"{a} | {b}": round(v, 2) for (a, b), v in res.items()}, "ratios": {k: round(v, 3) for k, v in summary.items()}}
            if model_name == "efficientnet_b0":
                for backend, cam_name, cam_fn in (("onnx", "app", None), ("torch", "app", None), ("onnx", "full-backward", full_backward_cam)):
                    lat = latency(runs["liverscope NLM @ model res"], files, backend, args.latency_repeats, cam_fn)
                    entry[f"latency_{backend}_{cam_name}_cam"] = {k: round(v, 1) for k, v in lat.items()}
                    print(f"  single image, {backend} predict + {cam_name} Grad-CAM (NLM @ model res): median {lat['total_ms']:.0f} ms "
                          f"(predict {lat['predict_ms']:.0f} ms, Grad-CAM {lat['gradcam_ms']:.0f} ms, p90 {lat['total_p90_ms']:.0f} ms, n={lat['n']})", flush=True)
            report["models"][model_name] = entry
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        report["load_average_after"] = os.getloadavg()[0]
        if args.json:
            atomic_write_json(args.json, report)
        print("\n" + json.dumps(report, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from liverscope.utils import configure_logging

    configure_logging()  # the library's progress messages on stderr, as the CLI shows them
    main()
