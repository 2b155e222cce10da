"""Prediction on new images: load a run, score files and folders fast, write CSV/JSON; ONNX export.

``Predictor`` is the Python entry point (``liverscope.load_run`` returns one)::

    import liverscope
    p = liverscope.load_run("runs/demo")           # ONNX Runtime when runs/demo/model.onnx is current
    p.predict("scan.dcm")                          # or bytes, a PIL image, an array, a tensor, a list
    for result in p.predict_paths(["scan1.png", "folder/"]):
        print(result.path, result.label, result.probs)

:meth:`Predictor.predict` always applies the run's own preprocessing (the inputs it takes are
described in :mod:`liverscope.data.inputs`); :meth:`Predictor.predict_arrays`, the low-level entry
point, takes only images already preprocessed for the run and refuses anything else. A ``cv`` run is
one predictor too (:class:`EnsemblePredictor`: the mean of its fold models' logits).

How it is fast on an ordinary CPU:

* decoding and preprocessing run in a thread pool (PIL's decoders, OpenCV's resize/NLM and the
  normalisation table release the GIL; ``pool="process"``: processes). With the torch backend on a CPU
  the pool and the model take turns (``schedule="alternate"``, :mod:`liverscope.data.stream`): the naive
  loop's own use of the machine plus batching, so not slower than it, where running both at once makes
  PyTorch's OpenMP team wait at its barriers for a core that a decode thread holds. ONNX Runtime's
  threads do not stall so: its decoding runs ahead of the model (``"overlap"``, as on a GPU). Workers
  hand over the model's own layout (``Nx3xHxW`` for ONNX Runtime): the main thread only stacks a batch;
* only a bounded window of images is in flight, and results are yielded batch by batch, so memory stays
  flat on a folder of any size; :func:`write_results` writes rows as they come into a temporary file
  that replaces the output at the end;
* two backends (:mod:`liverscope.models.backends`): ONNX Runtime (default when the run has a current ``model.onnx``, see
  :func:`export_onnx`) and PyTorch (channels-last; fp32 unless ``precision="bf16"`` asks for bf16
  autocast, checked against fp32 on the first batch and abandoned when predictions move more than
  ``BF16_TOLERANCE``; every result says its ``precision``);
* batch sizes per backend and device (:data:`DEFAULT_BATCH_SIZE`), measured in ``benchmarks/inference.py``;
* the torch backend times every core against half of them as it goes and keeps the faster: every
  core on a quiet machine, half on a busy one, where 2 OpenMP threads run EfficientNet-B0 several
  times slower than 1 on a 2-core CPU (:class:`TorchBackend`).

Bad files are not fatal: each is reported (``Result.error``) and the rest finish.

Every result of a run that holds an out-of-distribution detector (``model.json["ood"]``, fitted after
training) carries ``ood_score`` and the flag ``ood`` (score above the threshold fitted on the run's own
validation images): the image is unlike the training data and its prediction should not be relied on.
Both backends get the logits and the pooled features from one forward pass.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from liverscope import rundir
from liverscope.config import CHOICES
from liverscope.data.inputs import check_model_input, input_name, load_input, split_batch
from liverscope.data.io import decode_image
from liverscope.data.preprocess import Preprocessing, normalise, preprocess_array
from liverscope.data.stream import process_pool
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.evaluate.ood import ensemble_margin, ood_scores
from liverscope.inference.results import Result, csv_header, result_row, results_csv, write_results
from liverscope.inference.streaming import FileStreaming
from liverscope.models.backends import BF16_TOLERANCE, PRECISIONS, FlipAverage, OnnxBackend, TorchBackend
from liverscope.speed.serving import choose_backend
from liverscope.utils import resolve_device, softmax

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
#: How decoding and the model share the machine in :meth:`Predictor.predict_paths`: ``alternate``
#: (decode a window of files with every core, then score it with every core), ``overlap`` (decode ahead
#: while the model scores), ``auto`` (alternate for the torch backend on a CPU, else overlap).
SCHEDULES = ("auto", "alternate", "overlap")
#: Decode/preprocess workers: threads, or processes (spawned, one OpenCV thread each).
POOLS = ("thread", "process")
#: Test-time augmentation: none, or ``flip`` (:class:`~liverscope.models.backends.FlipAverage`).
TTA = CHOICES["predict.tta"]
#: Images per forward pass when none is given: ``(backend, device kind) -> size``. Measured at 224 px
#: on a 2-core AVX-512 CPU (``benchmarks/inference.py``): ONNX Runtime is fastest at batch 1-2
#: (EfficientNet-B0: 62 images/s at 2, 51 at 8, 43 at 16: larger batches spill the caches), PyTorch at
#: 4 (39 vs 36 at 8, 28 at 16); GPUs want big batches.
DEFAULT_BATCH_SIZE = {("torch", "cpu"): 4, ("onnx", "cpu"): 2, ("torch", "cuda"): 64, ("onnx", "cuda"): 64}


# --------------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------------


class Predictor(FileStreaming):
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
        threads: torch backend: intra-op threads on CPU (default: every core or half of them, whichever
            runs faster, measured as it goes: :class:`TorchBackend`); ONNX backend: ONNX Runtime
            intra-op threads (default: the CPU count).
        schedule: ``auto``, ``alternate`` or ``overlap`` (see :data:`SCHEDULES`).
        pool: :meth:`predict_paths`' decode workers, ``thread`` or ``process`` (see :data:`POOLS`): a
            process pool is spawned on first use, kept for later calls and shut down by :meth:`close`;
            the calling script needs the ``if __name__ == "__main__":`` guard that spawned processes require.
        bf16_tolerance: see :data:`BF16_TOLERANCE`.
        ood: the run's out-of-distribution detector (:func:`liverscope.rundir.load_ood`); ``None``: results
            carry no OOD score.
        tta: ``none`` or ``flip`` (the mean of the logits of each image and its mirror:
            :class:`~liverscope.models.backends.FlipAverage`; twice the model time).
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
        schedule: str = "auto",
        pool: str = "thread",
        tta: str = "none",
    ):
        if tta not in TTA:
            raise LiverscopeError(f"tta '{tta}': expected one of {', '.join(TTA)}")
        if schedule not in SCHEDULES:
            raise LiverscopeError(f"schedule '{schedule}': expected one of {', '.join(SCHEDULES)}")
        if pool not in POOLS:
            raise LiverscopeError(f"pool '{pool}': expected one of {', '.join(POOLS)}")
        self._attach_run(meta, calibrated, model, ood)
        if backend == "onnx":
            if onnx_path is None:
                raise LiverscopeError("the ONNX backend needs onnx_path (use Predictor.from_run)")
            engine: TorchBackend | OnnxBackend | FlipAverage = OnnxBackend(onnx_path, device, threads)
        elif backend == "torch":
            if model is None:
                raise LiverscopeError("the torch backend needs a model")
            # threads=None: the backend times every core against half of them and keeps the faster.
            # A fixed half whenever the run denoised made it slower than a plain eager loop on a quiet
            # machine; every core, fixed, makes it several times slower on a busy one (docs/benchmarks.md)
            engine = TorchBackend(model, device, precision, tolerance=bf16_tolerance, threads=threads)
        else:
            raise LiverscopeError(f"backend '{backend}': expected torch or onnx")
        if tta == "flip":
            engine = FlipAverage(engine)
        self._attach_engine(engine, backend, tta, schedule, pool, batch_size, workers)

    # The one constructor path: every attribute of a predictor is set by these two methods, which both
    # Predictor and EnsemblePredictor (its first member's engine and settings) call, so that no attribute
    # can go missing for a fold ensemble.
    def _attach_run(
        self, meta: dict, calibrated: bool, model: torch.nn.Module | None, ood: dict | None
    ) -> None:
        """What the run says: ``model.json`` (labels, preprocessing, temperature), the torch model, the OOD detector."""
        self.meta = meta
        self.ood = ood
        self.labels: list[str] = list(meta["labels"])
        self.pp = Preprocessing.from_dict(meta["preprocessing"])
        self.temperature = rundir.temperature(meta) if calibrated else 1.0
        self._model = model
        self.run_dir: Path | None = None
        self.backend_choice: dict | None = None  # set by from_run when backend='auto' measured the candidates

    def _attach_engine(
        self,
        engine,
        backend: str,
        tta: str,
        schedule: str,
        pool: str,
        batch_size: int | None,
        workers: int | None,
    ) -> None:
        """How it scores: the engine (flip-averaged already for ``tta="flip"``) and the serving settings."""
        self.engine = engine
        self.tta = tta
        if (
            schedule == "auto"
        ):  # ONNX Runtime's threads (not spinning) share cores with decoding without stalling
            schedule = "alternate" if backend == "torch" and engine.device_kind == "cpu" else "overlap"
        self.schedule = schedule
        self.pool = pool
        self._processes: ProcessPoolExecutor | None = None
        self.backend = backend
        self.device = getattr(engine, "device", engine.device_kind)
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE[(backend, engine.device_kind)])
        if self.batch_size < 1:
            raise LiverscopeError(f"batch size must be at least 1, got {self.batch_size}")
        self.workers = max(1, int(workers or os.cpu_count() or 1))

    @classmethod
    def from_run(
        cls, run_dir: str | Path, backend: str = "auto", int8: bool = False, **kwargs
    ) -> "Predictor":
        """Load a run directory; a ``cv`` run gives an :class:`EnsemblePredictor` of its fold models.

        Args:
            run_dir: a trained run.
            backend: ``auto``, ``torch`` or ``onnx``. ``auto``: with a current ``model.onnx``, the fastest of
                torch fp32/bf16 and ONNX fp32/int8 on this machine that keeps the fp32 labels, measured on a
                few of the run's images (:func:`~liverscope.speed.serving.choose_backend`; kept in
                :attr:`backend_choice` and logged) unless a torch ``precision`` is given; else torch.
            int8: score with the statically quantised ``model.int8.onnx`` (``liverscope export --int8``;
                ONNX Runtime only). Its agreement with fp32 is in ``model.json["onnx_int8"]``.
            **kwargs: the other arguments of :class:`Predictor`.
        """
        run_dir = Path(run_dir)
        if backend not in BACKENDS:
            raise LiverscopeError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
        members = rundir.members(run_dir)
        if members != [run_dir]:
            calibrated = kwargs.pop("calibrated", True)
            return EnsemblePredictor(
                [cls.from_run(m, backend, int8, calibrated=False, **kwargs) for m in members],
                rundir.read_model_meta(run_dir),
                calibrated,
                run_dir,
            )
        onnx_path, state = rundir.onnx_state(run_dir)
        if int8:
            if backend == "torch":
                raise LiverscopeError("int8 runs on ONNX Runtime: use --backend onnx (or auto) with --int8")
            onnx_path, state = rundir.onnx_int8_state(run_dir)
            if state != "current":
                raise LiverscopeError(
                    f"{run_dir}: no current {rundir.ONNX_INT8} ({state}) — run `liverscope export {run_dir} --int8` first"
                )
            backend = "onnx"
        choice = None
        if backend == "auto":
            backend = "torch"
            if state == "current" and kwargs.get("precision", "auto") == "auto":
                device = kwargs.get("device", "auto")
                choice = choose_backend(run_dir, device, _candidate_batches(kwargs.get("batch_size"), device))
                logger.info(choice["reason"])
                backend, int8 = choice["backend"], choice["precision"] == "int8"
                kwargs = {**kwargs, "precision": "bf16"} if choice["precision"] == "bf16" else kwargs
                onnx_path = rundir.onnx_int8_state(run_dir)[0] if int8 else onnx_path
            elif state == "stale":
                warnings.warn(
                    f"{onnx_path} is older than the run's weights or than this liverscope's export (logits and features); using torch (re-export with `liverscope export {run_dir}`)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if backend == "onnx":
            if state == "missing":
                raise LiverscopeError(
                    f"{run_dir}: no {rundir.ONNX} — run `liverscope export {run_dir}` first, or use --backend torch"
                )
            if state == "stale":
                raise LiverscopeError(
                    f"{onnx_path} does not match the run's current weights — run `liverscope export {run_dir}` again"
                )
            meta = rundir.read_model_meta(run_dir)
            p = cls(
                None, meta, backend="onnx", onnx_path=onnx_path, ood=rundir.load_ood(run_dir, meta), **kwargs
            )
            if int8:
                p.engine.precision = "int8"
        else:
            model, meta = rundir.load_model(run_dir)
            p = cls(model, meta, backend="torch", ood=rundir.load_ood(run_dir, meta), **kwargs)
        p.run_dir, p.backend_choice = run_dir, choice
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
        """What the model computes in: ``fp32`` (``auto`` too), ``bf16`` (torch, asked for and kept by the first-batch check) or ``int8``."""
        return self.engine.precision

    def describe(self) -> str:
        """One line: backend, device, precision, batch size, threads, schedule."""
        threads = getattr(self.engine, "threads", None) or getattr(self.engine, "intra_threads", None)
        model_threads = f", {threads} model thread(s)" if threads else ""
        choices = getattr(self.engine, "thread_choices", [])
        if len(choices) > 1:
            model_threads = (
                f", {' or '.join(map(str, choices))} model threads, the faster kept (now {threads})"
            )
        return (
            f"backend {self.backend} ({self.engine.device_kind}, {self.precision}), batch {self.batch_size}{model_threads}, "
            f"{self.workers} decode {self.pool}(s), {self.schedule}"
            + (", flip-averaged" if self.tta == "flip" else "")
            + (", chosen by measurement" if self.backend_choice else "")
        )

    def close(self) -> None:
        """Shut down the decode processes (``pool="process"``); a later call spawns them again."""
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)
            self._processes = None

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._processes is None:
            self._processes = process_pool(self.workers)
            weakref.finalize(self, self._processes.shutdown, wait=False, cancel_futures=True)
        return self._processes

    # ---------------------------------------------------------------- any input, the run's preprocessing
    def load(self, x, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode and preprocess one input: a file (or its name and ``data``, its bytes), or anything
        :meth:`predict` takes. Returns ``(decoded image, uint8 size x size x 3 model input)``: the one
        path that ``predict``, ``explain`` and the app read an image by (the decoded image is what
        ``explain`` draws its overlay on)."""
        img = decode_image(data, x) if data is not None else load_input(x)
        return img, preprocess_array(img, self.pp)

    def prepare(self, x, data: bytes | None = None) -> np.ndarray:
        """The model input of one input (:meth:`load`): uint8 ``size x size x 3``."""
        return self.load(x, data)[1]

    def predict(self, x, names: str | Sequence[str] | None = None) -> Result | list[Result]:
        """Score images with the run's own preprocessing (sector crop, denoising, resize, normalisation).

        Args:
            x: a path to an image or DICOM file, ``bytes`` of one, a PIL image, a NumPy array (``HxW`` grey,
                ``HxWx3`` RGB, ``HxWx4`` RGBA; uint8, 16-bit or float; any size), a torch tensor (``HxW`` or
                ``CxHxW``, torchvision's convention), or a list of these (also a 4-D array ``NxHxWxC`` or
                tensor ``NxCxHxW``). Conversions: :mod:`liverscope.data.inputs`.
            names: what each result's ``path`` says (default: the path for files, ``image<i>`` otherwise).

        Returns:
            One :class:`Result` for one input, a list for a list (in order). An unreadable input raises
            (:class:`~liverscope.errors.ImageReadError`); :meth:`predict_paths` lists bad files and goes on.
        """
        items, single = split_batch(x)
        names = (
            [names]
            if isinstance(names, str)
            else list(names or [input_name(it, i) for i, it in enumerate(items)])
        )
        if len(names) != len(items):
            raise LiverscopeError(f"{len(names)} name(s) for {len(items)} input(s)")

        def one(i: int) -> np.ndarray:
            return preprocess_array(load_input(items[i], names[i]), self.pp)

        if len(items) > 1:
            with ThreadPoolExecutor(
                min(self.workers, len(items)), thread_name_prefix="liverscope-decode"
            ) as pool:
                images = list(pool.map(one, range(len(items))))
        else:
            images = [one(i) for i in range(len(items))]
        results = self.predict_arrays(images, names)
        return results[0] if single else results

    def _batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Checked model inputs (see :meth:`predict_arrays`) → normalised float32 ``NxHxWx3``."""
        checked = check_model_input(images, self.pp.size, self.pp.mean, self.pp.std)
        return np.stack([normalise(im, self.pp) if im.dtype == np.uint8 else im for im in checked])

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Logits of preprocessed images (as :meth:`predict_arrays` takes them), in batches of :attr:`batch_size`."""
        out = [
            self._infer(self._batch(images[i : i + self.batch_size]))[0]
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    @property
    def ood_threshold(self) -> float | None:
        """The run's out-of-distribution threshold (``None`` without a detector)."""
        return float(self.ood["threshold"]) if self.ood else None

    def _infer(self, batch: np.ndarray, channels_first: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits of a normalised batch (``NxHxWx3``, or ``Nx3xHxW`` with ``channels_first``), and its
        out-of-distribution scores (``None`` without a detector)."""
        if not self.ood:
            return self.engine(batch, channels_first), None
        if self.ood.get("method") == "energy":  # scored on the plain logits, as the detector was fitted
            if isinstance(self.engine, FlipAverage):
                logits, plain = self.engine.averaged_and_plain(batch, channels_first)
            else:
                logits = plain = self.engine(batch, channels_first)
            return logits, ood_scores("energy", plain, None, self.ood)
        logits, features = self.engine.logits_and_features(batch, channels_first)
        return logits, ood_scores(self.ood["method"], logits, features, self.ood)

    def _results(
        self,
        paths: Sequence[str],
        logits: np.ndarray,
        scores: np.ndarray | None,
        counts: Sequence[int] | None = None,
    ) -> list[Result]:
        """Results from logits; with ``counts``, consecutive rows are the frames of one file: its
        probabilities are the mean of the frames' probabilities (logits: the mean logits), its
        out-of-distribution score the median frame score (flagged when most frames are)."""
        probs = softmax(logits, self.temperature)
        counts = [1] * len(paths) if counts is None else list(counts)
        ends = np.cumsum(counts)
        out = []
        for p, n, end in zip(paths, counts, ends):
            rows = slice(int(end) - n, int(end))
            pr, lg = probs[rows].mean(0), logits[rows].mean(0)
            s = None if scores is None else float(np.median(np.asarray(scores)[rows]))
            out.append(
                Result(
                    p,
                    self.labels[int(np.argmax(pr))],
                    {c: float(v) for c, v in zip(self.labels, pr)},
                    [float(v) for v in lg],
                    ood_score=s,
                    ood=None if s is None else bool(s > self.ood_threshold),
                    frames=n,
                    precision=self.precision,
                )
            )
        return out

    def predict_arrays(
        self, images: Sequence[np.ndarray], names: Sequence[str] | None = None
    ) -> list[Result]:
        """The low-level entry point: results for images already preprocessed for this run, each
        ``size x size x 3`` and either uint8 (:meth:`prepare`) or float32 normalised with the run's
        mean/std (:func:`~liverscope.data.preprocess.normalise`). Anything else, a raw frame above all,
        raises :class:`~liverscope.errors.LiverscopeError` pointing to :meth:`predict`."""
        names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
        out: list[Result] = []
        for i in range(0, len(images), self.batch_size):
            out += self._results(
                names[i : i + self.batch_size], *self._infer(self._batch(images[i : i + self.batch_size]))
            )
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


class EnsemblePredictor(Predictor):
    """A ``cv`` run's fold models as one predictor: the mean of their logits (as ``liverscope cv`` scores
    its hold-out test) at the run's one temperature. Its out-of-distribution score is the median over
    the models of (score - the model's threshold), flagged above 0 (as ``liverscope evaluate``).

    Made by :meth:`Predictor.from_run` (and :func:`load_run`) for a run whose ``model.json`` lists an
    ``ensemble``; :attr:`members` are the fold models' predictors. There is no single :attr:`model`.
    Built through :class:`Predictor`'s own constructor path (``_attach_run``, ``_attach_engine``) with
    the first member's engine and settings; the scoring is delegated to the members (:meth:`_infer`).
    """

    def __init__(
        self,
        members: Sequence[Predictor],
        meta: dict,
        calibrated: bool = True,
        run_dir: str | Path | None = None,
    ):
        first = members[0]
        self.members = list(members)
        self._attach_run(meta, calibrated, None, None)
        if any(m.labels != self.labels or m.pp != self.pp for m in members):
            raise LiverscopeError(
                f"{run_dir}: the fold models' labels or preprocessing differ from the run's {rundir.MODEL_META}"
            )
        self._attach_engine(
            first.engine,
            first.backend,
            first.tta,
            first.schedule,
            first.pool,
            first.batch_size,
            first.workers,
        )
        self.run_dir, self.backend_choice = None if run_dir is None else Path(run_dir), first.backend_choice
        oods = [m.ood for m in members]
        self.ood = (
            None
            if not all(oods)
            else {
                "method": oods[0]["method"],
                "threshold": 0.0,
                "quantile": oods[0].get("quantile", 0.95),
                "ensemble": "median over the fold models of (score - the model's threshold); flagged above 0",
                "member_thresholds": [m.ood_threshold for m in members],
            }
        )

    @property
    def model(self) -> torch.nn.Module:
        raise LiverscopeError(
            f"{self.run_dir} is a fold ensemble of {len(self.members)} models, not one: use .members[i].model"
        )

    @property
    def precision(self) -> str:
        """The fold models' precision; ``bf16+fp32`` when their first-batch checks settled differently."""
        return "+".join(sorted({m.precision for m in self.members}))

    def describe(self) -> str:
        return f"fold ensemble of {len(self.members)} models; " + super().describe()

    def _infer(self, batch: np.ndarray, channels_first: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        outs = [m._infer(batch, channels_first) for m in self.members]
        logits = np.mean(np.stack([lg for lg, _ in outs]), axis=0)
        if self.ood is None:
            return logits, None
        return logits, ensemble_margin(np.stack([s for _, s in outs]), self.ood["member_thresholds"])


def _candidate_batches(batch_size: int | None, device: str) -> dict[str, int]:
    """Images per pass of each candidate backend for :func:`~liverscope.speed.serving.choose_backend`:
    ``batch_size`` when given, else the backend's default on the device (:data:`DEFAULT_BATCH_SIZE`)."""
    kind = "cuda" if resolve_device(device).startswith("cuda") else "cpu"
    return {
        f"{b}-{p}": int(batch_size or DEFAULT_BATCH_SIZE[(b, kind)])
        for b in ("torch", "onnx")
        for p in ("fp32", "bf16", "int8")
    }


def load_run(path: str | Path, **kwargs) -> Predictor:
    """Open a run directory (``liverscope train``'s, or a ``cv`` run's fold ensemble) for prediction.

    Args:
        path: the run directory (``runs/NAME``).
        **kwargs: :meth:`Predictor.from_run`'s (``backend``, ``device``, ``batch_size``, ``calibrated`` ...).

    Returns:
        Its :class:`Predictor` (an :class:`EnsemblePredictor` for a ``cv`` run), which carries the run's
        metadata too: ``labels``, ``pp`` (preprocessing), ``meta`` (``model.json``), ``run_dir``, ``model``.
    """
    path = Path(path)
    if not (path / rundir.MODEL_META).is_file():
        what = (
            "does not exist"
            if not path.exists()
            else "is a file"
            if path.is_file()
            else f"has no {rundir.MODEL_META}"
        )
        hint = (
            f" (its run directory is {path.parent}?)"
            if path.is_file() and (path.parent / rundir.MODEL_META).is_file()
            else ""
        )
        raise LiverscopeError(
            f"{path}: not a liverscope run directory: it {what}{hint}; a run is the folder that `liverscope train` "
            f"or `liverscope cv` writes (runs/NAME, holding {rundir.MODEL_META})"
        )
    return Predictor.from_run(path, **kwargs)


__all__ = [
    "Predictor",
    "EnsemblePredictor",
    "load_run",
    "Result",
    "TorchBackend",
    "OnnxBackend",
    "write_results",
    "results_csv",
    "csv_header",
    "result_row",
    "DEFAULT_BATCH_SIZE",
    "BF16_TOLERANCE",
    "BACKENDS",
    "PRECISIONS",
    "SCHEDULES",
    "POOLS",
    "TTA",
    "FlipAverage",
]
