"""Prediction on new images: load a run, score files and folders fast, write CSV/JSON; ONNX export.

``Predictor`` is the Python entry point::

    from liverscope.predict import Predictor
    p = Predictor.from_run("runs/demo")            # ONNX Runtime when runs/demo/model.onnx is current
    for result in p.predict_paths(["scan1.png", "folder/"]):
        print(result.path, result.label, result.probs)

How it is fast on an ordinary CPU:

* decoding and preprocessing run in a thread pool while the model scores the previous batch (PIL's
  decoders, OpenCV's resize/NLM and NumPy's arithmetic release the GIL, so threads overlap for real and
  nothing is pickled between processes);
* only a bounded window of images is in flight, and results are yielded batch by batch, so memory stays
  flat on a folder of any size; :func:`write_results` writes rows as they come into a temporary file
  that replaces the output at the end;
* two backends: ONNX Runtime (default when the run has a current ``model.onnx``, see
  :func:`export_onnx`) and PyTorch (channels-last; bf16 autocast on CPUs with native bf16, checked
  against fp32 on the first batch and abandoned when predictions move more than ``BF16_TOLERANCE``);
* batch sizes per backend and device (:data:`DEFAULT_BATCH_SIZE`), measured in ``benchmarks/inference.py``;
* the torch backend computes with half the cores (:func:`default_model_threads`) so that the decode
  threads never make PyTorch's OpenMP team wait at its barriers: on a 2-core CPU that is busy with
  anything else, 2 OpenMP threads run EfficientNet-B0 4x slower than 1 (``benchmarks/inference.py``).

Bad files are not fatal: each is reported (``Result.error``) and the rest finish.

Every result of a run that holds an out-of-distribution detector (``model.json["ood"]``, fitted after
training) carries ``ood_score`` and the flag ``ood`` (score above the threshold fitted on the run's own
validation images): the image is unlike the training data and its prediction should not be relied on.
Both backends get the logits and the pooled features from one forward pass.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from liverscope import rundir
from liverscope.data.io import decode_image, iter_image_files, read_bytes
from liverscope.data.preprocess import Preprocessing, normalise, normalise_batch, preprocess_array
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.evaluate.ood import ood_scores
from liverscope.labels import endpoint_column, endpoint_keys, endpoint_probabilities
from liverscope.utils import atomic_path, cpu_has_native_bf16, default_model_threads, resolve_device, softmax, torch_threads

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16")
#: Images per forward pass when none is given: ``(backend, device kind) -> size``. Measured at 224 px
#: on a 2-core AVX-512 CPU (``benchmarks/inference.py``): ONNX Runtime is fastest at batch 1-2
#: (EfficientNet-B0: 62 images/s at 2, 51 at 8, 43 at 16: larger batches spill the caches), PyTorch at
#: 4 (39 vs 36 at 8, 28 at 16); GPUs want big batches.
DEFAULT_BATCH_SIZE = {("torch", "cpu"): 4, ("onnx", "cpu"): 2, ("torch", "cuda"): 64, ("onnx", "cuda"): 64}
#: Largest change of any class probability that bf16 may cause on the check batch before the torch
#: backend falls back to fp32 (the predicted class must not change either).
BF16_TOLERANCE = 0.02


@dataclass
class Result:
    """Prediction for one file (``error`` set and ``label`` ``None`` when the file was skipped).

    ``ood_score`` is the out-of-distribution score (higher = more unlike the training images) and ``ood``
    whether it is above the run's threshold; both ``None`` for a run without a detector.
    """

    path: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    logits: list[float] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None
    ood: bool | None = None

    @property
    def confidence(self) -> float | None:
        return max(self.probs.values()) if self.probs else None

    @property
    def endpoints(self) -> dict[str, float] | None:
        """Fibrosis endpoints (≥F2, ≥F3, F4) when the labels are METAVIR stages, else ``None``."""
        return endpoint_probabilities(self.probs) if self.probs else None


# --------------------------------------------------------------------------------------------------
# Backends: float32 NxHxWx3 normalised batch in, float32 logits out
# --------------------------------------------------------------------------------------------------


class TorchBackend:
    """PyTorch inference: channels-last, ``inference_mode``, bf16 autocast where the hardware has it.

    Args:
        model: a :class:`~liverscope.models.registry.LiverNet` (or any ``NCHW -> logits`` module).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``auto`` (bf16 on CPUs with native bf16 and on bf16-capable GPUs, else fp32), ``fp32``
            or ``bf16`` (emulated where not native: slow, for checks).
        channels_last: NHWC memory layout, which oneDNN/cuDNN convolutions run faster on.
        tolerance: largest probability change bf16 may cause on the first batch (see :data:`BF16_TOLERANCE`).
        threads: intra-op threads on CPU (default :func:`default_model_threads`; ``0`` leaves PyTorch's setting).

    After the first batch, :attr:`precision` says what is used and :attr:`bf16_check` what the check found.
    """

    name = "torch"

    def __init__(
        self, model: torch.nn.Module, device: str = "auto", precision: str = "auto", channels_last: bool = True,
        tolerance: float = BF16_TOLERANCE, threads: int | None = None,
    ):
        if precision not in PRECISIONS:
            raise LiverscopeError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if precision == "auto":
            native = torch.cuda.is_bf16_supported() if self.device.startswith("cuda") else cpu_has_native_bf16()
            precision = "bf16" if native else "fp32"
        self.precision = precision
        self.tolerance = tolerance
        self.bf16_check: dict | None = None
        self._checked = precision == "fp32"
        self.threads = (default_model_threads() if threads is None else int(threads)) if self.device == "cpu" else 0

    @property
    def device_kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def _forward(self, x: torch.Tensor, bf16: bool, features: bool = False):
        with torch_threads(self.threads), torch.inference_mode(), torch.autocast(self.device_kind, dtype=torch.bfloat16, enabled=bf16):
            if features:
                logits, pooled = self.model.forward_with_features(x)
                return logits.float().cpu().numpy(), pooled.float().cpu().numpy()
            return self.model(x).float().cpu().numpy()

    def _input(self, batch: np.ndarray) -> torch.Tensor:
        # NHWC numpy → NCHW view whose memory is already channels-last: no copy on CPU
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = self._input(batch)
        if not self._checked:
            return self._check_bf16(x)
        return self._forward(x, self.precision == "bf16")

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features (the out-of-distribution score's input) of one batch, one forward pass."""
        x = self._input(batch)
        if not self._checked:
            self._check_bf16(x)  # decides the precision on this first batch
        return self._forward(x, self.precision == "bf16", features=True)

    def _check_bf16(self, x: torch.Tensor) -> np.ndarray:
        """Score the first batch in fp32 and bf16; keep bf16 only if no probability moves more than the tolerance."""
        ref = self._forward(x, False)
        low = self._forward(x, True)
        p_ref, p_low = softmax(ref), softmax(low)
        diff = float(np.abs(p_ref - p_low).max())
        same = bool((p_ref.argmax(1) == p_low.argmax(1)).all())
        ok = diff <= self.tolerance and same
        self.bf16_check = {"max_abs_prob_diff": diff, "same_predictions": same, "tolerance": self.tolerance, "kept": ok}
        if not ok:
            warnings.warn(
                f"bf16 changes predictions beyond tolerance (max probability change {diff:.4f} > {self.tolerance}, "
                f"same classes: {same}); using fp32", RuntimeWarning, stacklevel=3,
            )
            self.precision = "fp32"
        self._checked = True
        return ref


class OnnxBackend:
    """ONNX Runtime inference of an exported run (``model.onnx``, dynamic batch).

    Args:
        path: the ``.onnx`` file.
        device: ``auto``, ``cpu`` or ``cuda`` (CUDA execution provider when onnxruntime-gpu has it).
        threads: intra-op threads (default: the CPU count; with spinning off, ORT shares cores with the
            decode threads without slowing down, unlike an OpenMP team).
    """

    name = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_threads = int(threads or os.cpu_count() or 1)
        so.intra_op_num_threads = self.intra_threads
        # ORT's workers spin-wait between runs by default, burning the cores that the decode threads
        # need while the next batch is being prepared
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        available = ort.get_available_providers()
        if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise LiverscopeError(f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu, or use --backend torch)")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:
            raise LiverscopeError(f"{self.path}: cannot load the ONNX model ({type(exc).__name__}: {exc}); re-export it with `liverscope export`") from None
        self.input_name = self.session.get_inputs()[0].name
        self.device_kind = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.precision = "fp32"

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return self.session.run(None, {self.input_name: x})

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)[0].astype(np.float32, copy=False)

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features of one batch (an export by ``liverscope export`` has both outputs)."""
        out = self._run(batch)
        if len(out) < 2:
            raise LiverscopeError(f"{self.path} has no 'features' output (exported by an older liverscope): run `liverscope export` again")
        return out[0].astype(np.float32, copy=False), out[1].astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------------


class Predictor:
    """Scores images with a trained run.

    Args:
        model: a :class:`~liverscope.models.registry.LiverNet` (``None`` with ``backend="onnx"``).
        meta: the run's ``model.json`` content (labels, preprocessing, temperature).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass (default: :data:`DEFAULT_BATCH_SIZE` for the backend).
        calibrated: apply the temperature stored with the model (when there is one).
        backend: ``torch`` or ``onnx`` (``auto`` is resolved by :meth:`from_run`).
        onnx_path: the ``.onnx`` file for the ONNX backend.
        precision: torch backend: ``auto``, ``fp32`` or ``bf16`` (see :class:`TorchBackend`).
        workers: decode/preprocess threads (default: the CPU count).
        threads: torch backend: intra-op threads on CPU (default :func:`default_model_threads`); ONNX
            backend: ONNX Runtime intra-op threads (default: the CPU count).
        bf16_tolerance: see :data:`BF16_TOLERANCE`.
        ood: the run's out-of-distribution detector (:func:`liverscope.rundir.load_ood`); ``None``: results
            carry no OOD score.
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        meta: dict,
        device: str = "auto",
        batch_size: int | None = None,
        calibrated: bool = True,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        precision: str = "auto",
        workers: int | None = None,
        bf16_tolerance: float = BF16_TOLERANCE,
        threads: int | None = None,
        ood: dict | None = None,
    ):
        self.meta = meta
        self.ood = ood
        self.labels: list[str] = list(meta["labels"])
        self.pp = Preprocessing.from_dict(meta["preprocessing"])
        self.temperature = rundir.temperature(meta) if calibrated else 1.0
        self._model = model
        if backend == "onnx":
            if onnx_path is None:
                raise LiverscopeError("the ONNX backend needs onnx_path (use Predictor.from_run)")
            self.engine: TorchBackend | OnnxBackend = OnnxBackend(onnx_path, device, threads)
        elif backend == "torch":
            if model is None:
                raise LiverscopeError("the torch backend needs a model")
            self.engine = TorchBackend(model, device, precision, tolerance=bf16_tolerance, threads=threads)
        else:
            raise LiverscopeError(f"backend '{backend}': expected torch or onnx")
        self.backend = backend
        self.device = getattr(self.engine, "device", self.engine.device_kind)
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE[(backend, self.engine.device_kind)])
        if self.batch_size < 1:
            raise LiverscopeError(f"batch size must be at least 1, got {self.batch_size}")
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self.run_dir: Path | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, backend: str = "auto", **kwargs) -> "Predictor":
        """Load a run directory.

        Args:
            run_dir: a trained run.
            backend: ``auto`` (ONNX Runtime when ``model.onnx`` is current, else torch), ``torch`` or ``onnx``.
            **kwargs: the other arguments of :class:`Predictor`.
        """
        run_dir = Path(run_dir)
        if backend not in BACKENDS:
            raise LiverscopeError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
        onnx_path, state = rundir.onnx_state(run_dir)
        if backend == "auto":
            backend = "torch"
            if state == "current":
                try:
                    import onnxruntime  # noqa: F401

                    backend = "onnx"
                except ImportError:
                    log.warning("onnxruntime is not installed; using the torch backend")
            elif state == "stale":
                warnings.warn(f"{onnx_path} is older than the run's weights or than this liverscope's export (logits and features); using torch (re-export with `liverscope export {run_dir}`)", RuntimeWarning, stacklevel=2)
        rundir.require_model(run_dir)
        if backend == "onnx":
            if state == "missing":
                raise LiverscopeError(f"{run_dir}: no model.onnx — run `liverscope export {run_dir}` first, or use --backend torch")
            if state == "stale":
                raise LiverscopeError(f"{onnx_path} does not match the run's current weights — run `liverscope export {run_dir}` again")
            meta = rundir.read_model_meta(run_dir)
            p = cls(None, meta, backend="onnx", onnx_path=onnx_path, ood=rundir.load_ood(run_dir, meta), **kwargs)
        else:
            model, meta = rundir.load_model(run_dir)
            p = cls(model, meta, backend="torch", ood=rundir.load_ood(run_dir, meta), **kwargs)
        p.run_dir = run_dir
        return p

    @property
    def model(self) -> torch.nn.Module:
        """The torch model (loaded from the run on first use when the ONNX backend scores; CAMs need it)."""
        if self._model is None:
            if self.run_dir is None:
                raise LiverscopeError("no torch model: this predictor was built from an ONNX file alone")
            self._model, _ = rundir.load_model(self.run_dir)
        return self._model

    @property
    def precision(self) -> str:
        return self.engine.precision

    def describe(self) -> str:
        """One line: backend, device, precision, batch size, threads."""
        threads = getattr(self.engine, "threads", None) or getattr(self.engine, "intra_threads", None)
        model_threads = f", {threads} model thread(s)" if threads else ""
        return f"backend {self.backend} ({self.engine.device_kind}, {self.precision}), batch {self.batch_size}{model_threads}, {self.workers} decode thread(s)"

    # ---------------------------------------------------------------- single images / arrays
    def prepare(self, path: str | Path, data: bytes | None = None) -> np.ndarray:
        """Decode and preprocess one file (or its bytes) to uint8 ``size x size x 3``."""
        if data is None:
            data = read_bytes(path)
        return preprocess_array(decode_image(data, path), self.pp)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Logits of preprocessed uint8 images (``size x size x 3``), in batches of :attr:`batch_size`."""
        out = [self.engine(normalise_batch(images[i : i + self.batch_size], self.pp)) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    @property
    def ood_threshold(self) -> float | None:
        """The run's out-of-distribution threshold (``None`` without a detector)."""
        return float(self.ood["threshold"]) if self.ood else None

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits of a normalised batch, and its pooled features when the OOD score needs them."""
        if self.ood and self.ood.get("method") != "energy":
            return self.engine.logits_and_features(batch)
        return self.engine(batch), None

    def _results(self, paths: Sequence[str], logits: np.ndarray, features: np.ndarray | None = None) -> list[Result]:
        probs = softmax(logits, self.temperature)
        scores = ood_scores(self.ood["method"], logits, features, self.ood) if self.ood else [None] * len(paths)
        return [
            Result(p, self.labels[int(np.argmax(pr))], {c: float(v) for c, v in zip(self.labels, pr)}, [float(v) for v in lg],
                   ood_score=None if s is None else float(s), ood=None if s is None else bool(s > self.ood_threshold))
            for p, lg, pr, s in zip(paths, logits, probs, scores)
        ]

    def predict_arrays(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Result]:
        """Results for preprocessed uint8 images (see :meth:`prepare`)."""
        names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
        out: list[Result] = []
        for i in range(0, len(images), self.batch_size):
            out += self._results(names[i : i + self.batch_size], *self._infer(normalise_batch(images[i : i + self.batch_size], self.pp)))
        return out

    def predict_bytes(self, name: str, data: bytes) -> tuple[Result, np.ndarray | None]:
        """Decode, preprocess and score one file's bytes (an upload).

        Returns:
            ``(result, preprocessed uint8 image)``; on a bad file the result carries the error and the image is ``None``.
        """
        try:
            img = self.prepare(name, data)
        except ImageReadError as exc:
            return Result(name, error=f"{exc.reason} ({exc.fix})"), None
        return self.predict_arrays([img], [name])[0], img

    # ---------------------------------------------------------------- streaming over files
    def _load(self, path: Path) -> np.ndarray:
        """Worker: file → normalised float32 ``HxWx3`` (decode + preprocess + normalise, GIL mostly released)."""
        return normalise(self.prepare(path), self.pp)

    def predict_paths(self, paths: Iterable[str | Path], window: int | None = None) -> Iterator[Result]:
        """Stream results for files and folders in input order; unreadable files yield an error result.

        Decoding runs ``workers`` threads ahead of the model; at most ``window`` files (default: two
        batches plus one per worker) are decoded but not yet yielded, so memory does not grow with the
        number of files.

        Args:
            paths: files and folders (searched recursively, see :func:`iter_image_files`).
            window: files in flight.
        """
        window = int(window or 2 * self.batch_size + self.workers)
        files = iter_image_files(paths)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="liverscope-decode") as pool:
            pending: deque = deque()

            def submit_next() -> bool:
                path = next(files, None)
                if path is None:
                    return False
                pending.append((path, pool.submit(self._load, path)))
                return True

            while len(pending) < window and submit_next():
                pass
            batch: list[tuple[str, np.ndarray | None, str | None]] = []
            n_good = 0
            while pending:
                path, fut = pending.popleft()
                submit_next()
                try:
                    batch.append((str(path), fut.result(), None))
                    n_good += 1
                except ImageReadError as exc:
                    batch.append((str(path), None, f"{exc.reason} ({exc.fix})"))
                except Exception as exc:  # a batch job lists a file it cannot process and goes on
                    batch.append((str(path), None, f"cannot preprocess ({type(exc).__name__}: {exc})"))
                if n_good >= self.batch_size:
                    yield from self._score(batch)
                    batch, n_good = [], 0
            if batch:
                yield from self._score(batch)

    def _score(self, batch: list[tuple[str, np.ndarray | None, str | None]]) -> list[Result]:
        """Results for one batch of decoded entries, in order; failed entries become error results."""
        good = [(p, x) for p, x, _ in batch if x is not None]
        scored = iter(self._results([p for p, _ in good], *self._infer(np.stack([x for _, x in good])))) if good else iter(())
        return [next(scored) if x is not None else Result(p, error=err) for p, x, err in batch]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def result_row(r: Result, labels: Sequence[str]) -> list[str]:
    """CSV row of one result (see :func:`csv_header`)."""
    probs = [f"{r.probs[c]:.6f}" if r.probs else "" for c in labels]
    row = [r.path, r.label or "", f"{r.confidence:.6f}" if r.confidence is not None else "", *probs]
    ep = r.endpoints
    row += [f"{ep[k]:.6f}" if ep else "" for k in endpoint_keys(labels)]
    row += ["" if r.ood_score is None else f"{r.ood_score:.6g}", "" if r.ood is None else str(r.ood).lower()]
    return row + [r.error or ""]


def csv_header(labels: Sequence[str]) -> list[str]:
    """``file,prediction,confidence,prob_<label>...[,p_ge_F2,p_ge_F3,p_F4],ood_score,ood,error`` (endpoints
    for METAVIR labels; ``ood`` is ``true`` for an image unlike the training data, empty without a detector)."""
    cols = ["file", "prediction", "confidence", *[f"prob_{c}" for c in labels]]
    cols += [endpoint_column(k) for k in endpoint_keys(labels)]
    return cols + ["ood_score", "ood", "error"]


def write_results(results: Iterable[Result], labels: Sequence[str], out: str | Path, progress=None) -> dict:
    """Write results as CSV (``.csv``) or JSON (``.json``) while they stream in.

    Rows go to a temporary file beside ``out`` as each result arrives (nothing is held in memory but
    the list of skipped files); the temporary file replaces ``out`` in one step at the end, so a crash
    never leaves a truncated output.

    Args:
        results: e.g. :meth:`Predictor.predict_paths`.
        labels: class names (the probability columns).
        out: ``.csv`` or ``.json`` path.
        progress: optional callable ``progress(n_done)`` called after each row.

    Returns:
        ``{"predicted": n, "flagged": images flagged as unlike the training data, "skipped": [(path, reason), ...],
        "out": str, "seconds": float}``.
    """
    out = Path(out)
    fmt = "json" if out.suffix.lower() == ".json" else "csv"
    n_ok, n_flagged, skipped, n = 0, 0, [], 0
    t0 = time.perf_counter()
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            w = csv.writer(fh)
            w.writerow(csv_header(labels))
        else:
            fh.write("[")
        for r in results:
            if fmt == "csv":
                w.writerow(result_row(r, labels))
            else:
                item = {"file": r.path, "prediction": r.label, "confidence": r.confidence, "probabilities": r.probs,
                        "ood_score": r.ood_score, "ood": r.ood, "error": r.error}
                if r.endpoints:
                    item["endpoints"] = r.endpoints
                fh.write(("," if n else "") + "\n  " + json.dumps(item, ensure_ascii=False))
            fh.flush()  # the row is on disk now: a long job's partial output can be watched (tail -f the temp file)
            n += 1
            if r.error:
                skipped.append((r.path, r.error))
            else:
                n_ok += 1
                n_flagged += bool(r.ood)
            if progress is not None:
                progress(n)
        if fmt == "json":
            fh.write("\n]\n")
    return {"predicted": n_ok, "flagged": n_flagged, "skipped": skipped, "out": str(out), "seconds": time.perf_counter() - t0}


def results_csv(results: Iterable[Result], labels: Sequence[str]) -> str:
    """CSV text of results (same columns as :func:`write_results`), for downloads."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csv_header(labels))
    for r in results:
        w.writerow(result_row(r, labels))
    return buf.getvalue()


__all__ = [
    "Predictor", "Result", "TorchBackend", "OnnxBackend", "write_results", "results_csv", "csv_header", "result_row",
    "DEFAULT_BATCH_SIZE", "BF16_TOLERANCE",
]
