"""The prediction backend of an exported run chosen by measurement (issue 26, item 2).

Which of PyTorch and ONNX Runtime, fp32, bf16 or int8, scores a model fastest depends on the model
and the machine: on one AMX CPU the torch backend in bf16 scored ResNet-50 + CBAM 1.5x faster than
ONNX fp32, while ONNX fp32 was the faster for EfficientNet-B0. :func:`choose_backend` times each
candidate (:func:`candidates`) on a few of the run's own validation images (synthetic inputs when
they cannot be read), checks its labels against the torch fp32 labels of the same images, and keeps
the fastest that agrees on every one (a non-fp32 candidate must also be :data:`MIN_SPEEDUP` faster
than the fastest fp32 one: a tie goes to fp32). The timings are kept per machine and model files
(:mod:`liverscope.speed.cache`). ``Predictor.from_run(backend="auto")`` asks it for a run with a
current export; ``--backend``, ``--precision`` and ``--int8`` still choose by hand.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from liverscope import rundir
from liverscope.data.io import read_rgb
from liverscope.data.preprocess import normalise_batch, preprocess_array
from liverscope.models.backends import OnnxBackend, TorchBackend
from liverscope.speed import cache
from liverscope.speed.training import native_bf16
from liverscope.utils import resolve_device, softmax

CACHE_KIND = "predict-backend"
#: Images the candidates are timed and compared on.
CHECK_IMAGES = 16
#: Timed passes over the check images per candidate (after one warm-up batch); the fastest is kept.
PASSES = 2
#: A bf16 or int8 candidate must be at least this much faster than the fastest fp32 one.
MIN_SPEEDUP = 1.05


def split_inputs(
    run_dir: Path, part: str, limit: int | None, seed: int = 0, exclude: frozenset[str] = frozenset()
) -> tuple[np.ndarray, list[str], list[str]]:
    """Preprocessed NCHW inputs of the run's own ``part`` images (``val``, ``test``, ``train``) but those
    in ``exclude`` (paths), at most ``limit`` of them (a seeded sample), with their labels and paths;
    unreadable files are left out."""
    samples, assignment, _ = rundir.read_split(run_dir / rundir.SPLIT)
    chosen = [s for s, a in zip(samples, assignment) if a == part and str(s.path) not in exclude]
    if limit is not None and len(chosen) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(chosen), limit, replace=False))
        chosen = [chosen[i] for i in keep]
    pp = rundir.read_preprocessing(run_dir)
    images, labels, paths = [], [], []
    for s in chosen:
        try:
            images.append(preprocess_array(read_rgb(s.path), pp))
        except (OSError, ValueError):
            continue
        labels.append(s.label)
        paths.append(str(s.path))
    if not images:
        return np.zeros((0, 3, pp.size, pp.size), np.float32), [], []
    return np.ascontiguousarray(normalise_batch(images, pp).transpose(0, 3, 1, 2)), labels, paths


def check_inputs(run_dir: Path, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """``n`` normalised NCHW inputs to time and compare on, and what they are: the run's validation
    (else test, else training) images, or seeded noise when none can be read here."""
    if (run_dir / rundir.SPLIT).is_file():
        for part in ("val", "test", "train"):
            x, _, _ = split_inputs(run_dir, part, n)
            if len(x):
                return x, f"{len(x)} {part} images of the run"
    size = rundir.read_preprocessing(run_dir).size
    return np.random.default_rng(0).standard_normal(
        (n, 3, size, size), dtype=np.float32
    ), f"{n} synthetic inputs (the run's images are not readable here)"


def candidates(run_dir: Path, device: str) -> list[str]:
    """The backends to time: ``torch-fp32``; ``torch-bf16`` where bf16 is native; ``onnx-fp32`` with a
    current export and onnxruntime installed; ``onnx-int8`` when its export is current and met the
    label bar when it was written (``model.json["onnx_int8"]["meets_bar"]``)."""
    out = ["torch-fp32"] + (["torch-bf16"] if native_bf16(device) else [])
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return out
    if rundir.onnx_state(run_dir)[1] == "current":
        out.append("onnx-fp32")
        meta = rundir.read_model_meta(run_dir)
        if rundir.onnx_int8_state(run_dir)[1] == "current" and (meta.get("onnx_int8") or {}).get("meets_bar"):
            out.append("onnx-int8")
    return out


def _engine(run_dir: Path, name: str, device: str, model_loader: Callable):
    if name.startswith("torch"):
        return TorchBackend(model_loader(), device, name.split("-")[1])
    path = rundir.onnx_int8_state(run_dir)[0] if name == "onnx-int8" else rundir.onnx_state(run_dir)[0]
    return OnnxBackend(path, device)


def measure(
    run_dir: Path,
    names: list[str],
    x: np.ndarray,
    batch_sizes: dict[str, int],
    device: str = "cpu",
    model_loader: Callable | None = None,
) -> dict[str, dict]:
    """Seconds per image of each candidate over ``x`` (the fastest of :data:`PASSES` passes, the passes
    of the candidates interleaved so that a change of the machine's load hits them all), its labels'
    agreement with ``torch-fp32`` (the first name) and its largest probability difference."""
    model_loader = model_loader or (lambda: rundir.load_model(run_dir)[0])
    engines = {n: _engine(run_dir, n, device, model_loader) for n in names}
    best = {n: float("inf") for n in names}
    logits: dict[str, np.ndarray] = {}
    for n, e in engines.items():
        with warnings.catch_warnings():  # a bf16 that fails torch's own check is reported in the timings
            warnings.simplefilter("ignore", RuntimeWarning)
            e(
                x[: batch_sizes[n]], channels_first=True
            )  # warm-up: allocation, thread choice, torch's bf16 check
    for _ in range(PASSES):
        for n, e in engines.items():
            b = batch_sizes[n]
            t0 = time.perf_counter()
            logits[n] = np.concatenate([e(x[i : i + b], channels_first=True) for i in range(0, len(x), b)])
            best[n] = min(best[n], (time.perf_counter() - t0) / len(x))
    ref = softmax(logits[names[0]])
    out = {}
    for n, e in engines.items():
        p = softmax(logits[n])
        kept = e.precision == n.split("-")[1]  # torch's own bf16 check may have fallen back to fp32
        out[n] = {
            "seconds_per_image": best[n],
            "batch": batch_sizes[n],
            "label_agreement": float(np.mean(p.argmax(1) == ref.argmax(1))),
            "max_prob_diff": float(np.abs(p - ref).max()),
            "precision_kept": kept,
        }
    return out


def pick(timings: dict[str, dict]) -> str:
    """The fastest candidate that agrees with fp32 on every check image (a lower precision: only when
    :data:`MIN_SPEEDUP` faster than the fastest fp32 candidate)."""
    ok = {
        n: t["seconds_per_image"]
        for n, t in timings.items()
        if t["label_agreement"] == 1.0 and t["precision_kept"]
    }
    fp32 = min((n for n in ok if n.endswith("fp32")), key=ok.get)
    fastest = min(ok, key=ok.get)
    return fastest if fastest.endswith("fp32") or ok[fp32] >= MIN_SPEEDUP * ok[fastest] else fp32


def _describe(name: str, timings: dict[str, dict], cached: bool, inputs: str) -> str:
    def note(t: dict) -> str:
        return (
            " (fell back to fp32 on its own check)"
            if not t["precision_kept"]
            else ""
            if t["label_agreement"] == 1.0
            else " (labels differ)"
        )

    figures = ", ".join(
        f"{n} {1 / t['seconds_per_image']:.1f} img/s{note(t)}"
        for n, t in sorted(timings.items(), key=lambda kv: kv[1]["seconds_per_image"])
    )
    return f"backend chosen by measurement{' (earlier, on this machine)' if cached else f' on {inputs}'}: {name} ({figures})"


def choose_backend(
    run_dir: str | Path,
    device: str = "auto",
    batch_sizes: dict[str, int] | None = None,
    use_cache: bool = True,
    model_loader: Callable | None = None,
) -> dict:
    """The backend a run should predict with on this machine (see the module notes).

    Args:
        run_dir: a single-model run directory (one fold of a ``cv`` run).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_sizes: images per forward pass of each candidate (``torch-*`` and ``onnx-*`` names).
        use_cache: read and keep the timings in the per-machine cache.
        model_loader: returns the run's torch model (default: loaded from the run).

    Returns:
        ``{"choice": "onnx-fp32" | ..., "backend": "torch" | "onnx", "precision": "fp32" | "bf16" | "int8",
        "timings": {candidate: {...}}, "cached": bool, "inputs": str, "reason": str}``.
    """
    run_dir = Path(run_dir)
    device = resolve_device(device)
    names = candidates(run_dir, device)
    sizes = {n: int((batch_sizes or {}).get(n, 4)) for n in names}
    meta = rundir.read_model_meta(run_dir)
    key = {
        "candidates": names,
        "batch": sizes,
        "weights": rundir.weights_sha256(run_dir),
        "onnx": (meta.get("onnx") or {}).get("onnx_sha256"),
        "int8": (meta.get("onnx_int8") or {}).get("onnx_sha256") if "onnx-int8" in names else None,
        "device": device,
    }
    if len(names) == 1:  # nothing to choose between (no export, no onnxruntime, no native bf16)
        return {
            "choice": names[0],
            "backend": "torch",
            "precision": "fp32",
            "timings": {},
            "cached": False,
            "inputs": None,
            "reason": "torch fp32: the only candidate here (onnxruntime missing or no current export; bf16 not native)",
        }
    found = cache.lookup(CACHE_KIND, key, device) if use_cache else None
    timings, inputs = (found["timings"], found["inputs"]) if found else (None, None)
    if timings is None:
        x, inputs = check_inputs(run_dir)
        timings = measure(run_dir, names, x, sizes, device, model_loader)
        if use_cache:
            cache.store(CACHE_KIND, key, {"timings": timings, "inputs": inputs}, device)
    name = pick(timings)
    backend, precision = name.split("-")
    return {
        "choice": name,
        "backend": backend,
        "precision": precision,
        "timings": timings,
        "cached": found is not None,
        "inputs": inputs,
        "reason": _describe(name, timings, found is not None, inputs),
    }


__all__ = [
    "CHECK_IMAGES",
    "MIN_SPEEDUP",
    "split_inputs",
    "check_inputs",
    "candidates",
    "measure",
    "pick",
    "choose_backend",
]
