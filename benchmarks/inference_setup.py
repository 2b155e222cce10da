"""The pieces that benchmarks/inference.py times: the image subsets, one run directory per
preprocessing setting (shared random-init weights, one ONNX export, one int8 export), the naive loops,
liverscope end to end, decode + preprocess alone, and the bare ONNX Runtime session.

Each timed call is warmed up first (model allocations, kernel selection, a process pool's spawn), so
the figures are steady-state images/s; model loading is reported apart.
"""

from __future__ import annotations

import csv
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from liverscope import rundir
from liverscope.config import IMAGENET_MEAN, IMAGENET_STD
from liverscope.data.datasets import Sample
from liverscope.data.io import read_image
from liverscope.data.preprocess import Preprocessing, load_model_input, normalise, preprocess_array
from liverscope.data.stream import process_pool as spawn_pool
from liverscope.inference.export import export_onnx
from liverscope.inference.predict import OnnxBackend, Predictor, write_results
from liverscope.inference.quantize import export_int8
from liverscope.models import build_model
from liverscope.rundir import save_model
from liverscope.utils import atomic_write_json, read_json, softmax

REPO = Path(__file__).resolve().parents[1]
LABELS = ["F0", "F1", "F2", "F3", "F4"]

#: The three settings of issue 14, item 1: ``Preprocessing`` fields beyond the size.
SETTINGS = {
    "off": {"denoise": False},
    "default": {"denoise": True},  # grey NLM at model resolution, windows 7/21, whole image
    "full": {"denoise": True, "denoise_at": "full"},  # the study's order
}
#: The faster NLM options of item 4, and the setting each is compared with (grey levels, probabilities).
FAST = {
    "search 15": ({"denoise": True, "nlm_search": 15}, "default"),
    "search 11": ({"denoise": True, "nlm_search": 11}, "default"),
    "search 7": ({"denoise": True, "nlm_search": 7}, "default"),
    "sector box": ({"denoise": True, "denoise_region": "sector"}, "default"),
    "search 11 + sector box": ({"denoise": True, "nlm_search": 11, "denoise_region": "sector"}, "default"),
    "search 7 + sector box": ({"denoise": True, "nlm_search": 7, "denoise_region": "sector"}, "default"),
    "full res, sector box": ({"denoise": True, "denoise_at": "full", "denoise_region": "sector"}, "full"),
    "full res, search 11 + sector box": (
        {"denoise": True, "denoise_at": "full", "nlm_search": 11, "denoise_region": "sector"},
        "full",
    ),
}
SETTING_NAMES = {
    "off": "off",
    "default": "liverscope default: grey NLM at model res",
    "full": "grey NLM at full res (study's order)",
}


# --------------------------------------------------------------------------------------------------
# images and runs
# --------------------------------------------------------------------------------------------------


def pick_subset(data: Path, n: int, out: Path, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """A folder of symlinks to ``n`` files spread evenly over every class folder (data is not copied),
    none of the files in ``exclude`` (resolved paths)."""
    classes = sorted(d for d in data.iterdir() if d.is_dir())
    per = max(1, n // len(classes))
    picked = []
    for c in classes:
        files = sorted(p for p in c.iterdir() if p.is_file() and p.resolve() not in exclude)
        step = max(1, len(files) // per)
        for p in files[::step][:per]:
            link = out / c.name / p.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p.resolve())
            picked.append(link)
    return picked


def make_runs(
    model_name: str,
    size: int,
    root: Path,
    variants: dict[str, dict] | None = None,
    timed: list[Path] | None = None,
    calibration: list[Path] | None = None,
) -> dict[str, Path]:
    """One run directory per preprocessing variant (name → ``Preprocessing`` fields), sharing random-init
    weights and one ONNX export. With ``timed`` and ``calibration`` images each run gets a ``split.csv``
    (``test``: the timed images, ``val``: the calibration images) for :func:`add_int8`."""
    variants = variants or SETTINGS
    torch.manual_seed(0)
    model = build_model(model_name, len(LABELS))
    runs: dict[str, Path] = {}
    first = None
    for name, fields in variants.items():
        run = root / f"{model_name}-{name.replace(' ', '_').replace('+', 'and').replace(',', '')}"
        save_model(run, model, LABELS, Preprocessing(size=size, **fields))
        if timed is not None and calibration is not None:
            files = [*timed, *calibration]
            samples = [Sample(f, f.parent.name) for f in files]
            rundir.write_split(
                run / rundir.SPLIT, samples, ["test"] * len(timed) + ["val"] * len(calibration)
            )
        if first is None:
            t0 = time.perf_counter()
            info = export_onnx(run)
            print(
                f"  exported {model_name} to ONNX in {time.perf_counter() - t0:.1f}s (max |logit diff| {info['max_abs_logit_diff']:.1e})",
                flush=True,
            )
            first = run
        else:
            _copy_export(first, run, rundir.ONNX, "onnx")
        runs[name] = run
    return runs


def _copy_export(src: Path, dst: Path, file: str, key: str) -> None:
    shutil.copy(src / file, dst / file)
    meta = read_json(dst / rundir.MODEL_META)
    meta[key] = read_json(src / rundir.MODEL_META)[key]
    atomic_write_json(dst / rundir.MODEL_META, meta)


def add_int8(runs: dict[str, Path], source: str) -> dict:
    """``export_int8`` on ``runs[source]`` (calibrated on its ``val`` images, compared on its ``test``
    images), the result copied to every run; returns the export's report and its seconds."""
    t0 = time.perf_counter()
    info = export_int8(
        runs[source], calibration=10_000, force=True
    )  # reported whether or not it keeps the labels
    info["seconds"] = time.perf_counter() - t0
    for name, run in runs.items():
        if name != source:
            _copy_export(runs[source], run, rundir.ONNX_INT8, "onnx_int8")
    return info


def trained_variant(run: Path, root: Path, name: str, fields: dict) -> Path:
    """A copy of a trained run's weights and ``model.json`` whose preprocessing has ``fields`` changed."""
    dst = root / f"trained-{name.replace(' ', '_').replace('+', 'and').replace(',', '')}"
    dst.mkdir(parents=True)
    shutil.copy(run / rundir.MODEL_WEIGHTS, dst / rundir.MODEL_WEIGHTS)
    meta = read_json(run / rundir.MODEL_META)
    meta["preprocessing"] = replace(Preprocessing.from_dict(meta["preprocessing"]), **fields).to_dict()
    for key in ("onnx", "onnx_int8", "ood"):
        meta.pop(key, None)
    atomic_write_json(dst / rundir.MODEL_META, meta)
    return dst


# --------------------------------------------------------------------------------------------------
# the naive loops
# --------------------------------------------------------------------------------------------------


def naive_predict(model: torch.nn.Module, files: list[Path], out: Path, size: int, denoise: bool) -> float:
    """The studies' pipeline, one image at a time (OpenCV decode, BGR→RGB, colour NLM at full
    resolution, resize, ImageNet normalisation, eager fp32 batch 1, a CSV row); returns seconds."""
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


def naive_liverscope(
    model: torch.nn.Module, files: list[Path], out: Path, pp: Preprocessing
) -> tuple[float, dict[str, np.ndarray]]:
    """The plain loop a user would write around liverscope's preprocessing: one image at a time, eager
    fp32 NCHW at batch 1 with PyTorch's default threads, a CSV row; returns (seconds, probabilities by file)."""
    model = model.eval()
    probs = {}
    t0 = time.perf_counter()
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        for f in files:
            x = normalise(preprocess_array(read_image(f), pp), pp)
            t = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0).contiguous()
            with torch.no_grad():
                p = softmax(model(t).numpy())[0]
            probs[str(f)] = p
            w.writerow([str(f), LABELS[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    return time.perf_counter() - t0, probs


# --------------------------------------------------------------------------------------------------
# liverscope end to end, decode + preprocess alone, the bare session
# --------------------------------------------------------------------------------------------------


def liverscope_e2e(
    run: Path, folder: Path, out: Path, warm: list[Path], spinning: bool = False, **kwargs
) -> dict:
    """Time ``Predictor.from_run(run, **kwargs).predict_paths([folder])`` → ``write_results`` after a
    warm-up on ``warm`` (``spinning``: an ONNX Runtime session whose threads spin within a run, which the
    predictor does not use by default). Returns images/s, load seconds, the predictor's description and
    the probabilities by file (its symlink path)."""
    t0 = time.perf_counter()
    p = Predictor.from_run(run, **kwargs)
    if spinning:
        p.engine = OnnxBackend(p.engine.path, "cpu", p.engine.intra_threads, spinning=True)
    load_s = time.perf_counter() - t0
    try:
        list(p.predict_paths(warm))
        results: list = []

        def keep(it):
            for r in it:
                results.append(r)
                yield r

        t0 = time.perf_counter()
        summary = write_results(keep(p.predict_paths([folder])), p.labels, out)
        s = time.perf_counter() - t0
        assert not summary["skipped"], summary["skipped"][:3]
        check = getattr(p.engine, "bf16_check", None)
        return {
            "ips": summary["predicted"] / s,
            "load_s": load_s,
            "describe": p.describe(),
            "precision": p.precision,
            "bf16_check": check,
            "thread_timings": getattr(p.engine, "thread_timings", None),
            "probs": {r.path: np.array([r.probs[c] for c in p.labels]) for r in results},
        }
    finally:
        p.close()


def decode_only(
    pp: Preprocessing,
    files: list[Path],
    workers: int,
    channels_first: bool,
    pool: str,
    processes: ProcessPoolExecutor | None,
) -> float:
    """Images/s of decode + preprocess + normalise (the predictor's worker function) on ``workers``
    threads, or on the warm process pool ``processes``."""
    if pool == "process":
        assert processes is not None
        t0 = time.perf_counter()
        list(
            processes.map(
                load_model_input,
                files,
                [pp] * len(files),
                ["middle"] * len(files),
                [channels_first] * len(files),
            )
        )
        return len(files) / (time.perf_counter() - t0)
    with ThreadPoolExecutor(workers) as threads:
        list(threads.map(load_model_input, files[:workers], [pp] * workers))  # warm
        t0 = time.perf_counter()
        list(
            threads.map(
                load_model_input,
                files,
                [pp] * len(files),
                ["middle"] * len(files),
                [channels_first] * len(files),
            )
        )
        return len(files) / (time.perf_counter() - t0)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """The predictor's ``pool="process"`` pool, warm (spawned and imported)."""
    pool = spawn_pool(workers)
    list(pool.map(abs, range(4 * workers)))
    return pool


def bare_session_ips(onnx_path: Path, size: int, batch: int, n_images: int, spinning: bool) -> float:
    """Images/s of an ONNX Runtime session (the backend's options) scoring one ready-made batch in a loop."""
    eng = OnnxBackend(onnx_path, "cpu", spinning=spinning)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    feed = {eng.input_name: x}
    for _ in range(2):
        eng.session.run(None, feed)
    t0 = time.perf_counter()
    done = 0
    while done < n_images:
        eng.session.run(None, feed)
        done += batch
    return done / (time.perf_counter() - t0)


def grey_diff(files: list[Path], pp: Preprocessing, ref: Preprocessing, workers: int) -> dict:
    """Largest and mean absolute grey-level difference of ``pp``'s preprocessed images from ``ref``'s."""

    def one(f):
        img = read_image(f)
        return np.abs(
            preprocess_array(img, pp)[..., 0].astype(np.int16) - preprocess_array(img, ref)[..., 0]
        ).astype(np.float64)

    with ThreadPoolExecutor(workers) as threads:
        diffs = list(threads.map(one, files))
    return {
        "max_abs": float(max(d.max() for d in diffs)),
        "mean_abs": float(np.mean([d.mean() for d in diffs])),
        "worst_image_mean_abs": float(max(d.mean() for d in diffs)),
    }


def prob_agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """Label agreement and the largest probability difference of two predictions of the same files."""
    keys = sorted(a)
    assert keys == sorted(b), "different files"
    pa, pb = np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys])
    return {
        "label_agreement": float(np.mean(pa.argmax(1) == pb.argmax(1))),
        "max_prob_diff": float(np.abs(pa - pb).max()),
        "n": len(keys),
    }
