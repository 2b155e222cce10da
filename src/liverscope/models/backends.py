"""The two ways a model scores a batch: PyTorch (:class:`TorchBackend`) and ONNX Runtime
(:class:`OnnxBackend`). Both take a float32 batch normalised for the run, ``NxHxWx3`` or, with
``channels_first=True``, ``Nx3xHxW``, and return float32 logits, or logits and pooled features from one
forward pass (the out-of-distribution score's input). :attr:`channels_first` says which layout a backend
takes without a copy (PyTorch's channels-last memory is ``NxHxWx3``; ONNX Runtime wants ``Nx3xHxW``), so
that a caller can build its batches that way.

:class:`~liverscope.inference.predict.Predictor` picks one per run; they are here, beside the models, because
they know a model and a device and nothing of files, runs or preprocessing.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from liverscope.errors import LiverscopeError
from liverscope.utils import (
    default_model_threads,
    import_optional,
    resolve_device,
    softmax,
    strict_fp32,
    torch_threads,
)

PRECISIONS = ("auto", "fp32", "bf16")
#: Largest change of any class probability that bf16 may cause on the check batch before the torch
#: backend falls back to fp32 (the predicted class must not change either).
BF16_TOLERANCE = 0.02
#: With ``threads=None`` on a CPU, the thread count that lost is timed again once the winner has run
#: this many times as long as one pass of the loser takes: re-checking costs at most 1/RECHECK of the time.
RECHECK = 20


class TorchBackend:
    """PyTorch inference: channels-last, ``inference_mode``, fp32, or bf16 autocast when asked.

    Args:
        model: a :class:`~liverscope.models.LiverNet` (or any ``NCHW -> logits`` module).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        precision: ``fp32`` (true fp32, TF32 off on a GPU: :func:`~liverscope.utils.strict_fp32`), ``auto``
            (the same: fp32 on every CPU and GPU, so that a run gives the same answers on every machine)
            or ``bf16`` (autocast, checked against fp32 on the first batch; fast on CPUs with native bf16,
            :func:`~liverscope.utils.cpu_has_native_bf16`, and on GPUs, emulated and slow elsewhere).
            bf16 is never chosen for you: on a real EfficientNet-Lite0 fibrosis run it changed the
            predicted stage of 12% of the images (docs/benchmarks.md, "bf16 against fp32").
        channels_last: NHWC memory layout, which oneDNN/cuDNN convolutions run faster on.
        tolerance: largest probability change bf16 may cause on the first batch (see :data:`BF16_TOLERANCE`).
        threads: intra-op threads on CPU; ``None`` (default): chosen by measurement, see below; ``0``
            leaves PyTorch's setting.

    After the first batch, :attr:`precision` says what is used and :attr:`bf16_check` what the check found.
    Every batch is scored in that one precision, the first included: an image's logits do not depend
    on whether it came first.

    Threads on a CPU, by default: every core and :func:`default_model_threads` (half of them) are each
    timed on a forward pass after the first (which allocates, on the fewer threads), the faster per
    image is kept (:attr:`threads`) and the other timed again now and then (:data:`RECHECK`). Every core
    is fastest on a quiet machine; on one where anything else runs (decode threads, another job) an
    OpenMP team waits at each barrier for the thread that lost its core, and a 2-core CPU then runs
    EfficientNet-B0 several times faster on one thread than on two (docs/benchmarks.md).
    :attr:`thread_timings` holds the seconds per image of each.
    """

    name = "torch"
    channels_first = False  # channels-last memory is NxHxWx3: no copy

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        tolerance: float = BF16_TOLERANCE,
        threads: int | None = None,
    ):
        if precision not in PRECISIONS:
            raise LiverscopeError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.precision = "fp32" if precision == "auto" else precision
        self.tolerance = tolerance
        self.bf16_check: dict | None = None
        self._checked = self.precision == "fp32"
        self.thread_choices = (
            [int(threads)]
            if threads is not None
            else sorted({os.cpu_count() or 1, default_model_threads()}, reverse=True)
        )
        if self.device != "cpu":
            self.thread_choices = [0]
        self.threads = self.thread_choices[0]
        self.thread_timings: dict[int, float] = {}  # threads -> seconds per image (running mean)
        self._passes = 0
        self._since_check = 0.0  # seconds the winner has run since the loser was last timed

    @property
    def device_kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def _pick_threads(self, n_images: int) -> int:
        """The thread count for the next forward pass (see the class notes)."""
        self._passes += 1
        if len(self.thread_choices) == 1:
            return self.threads
        if self._passes == 1:  # allocates: not timed, and cheap on a busy machine
            return self.thread_choices[-1]
        untried = [c for c in self.thread_choices if c not in self.thread_timings]
        if untried:
            return untried[0]
        other = next(c for c in self.thread_choices if c != self.threads)
        if (
            self._since_check >= RECHECK * self.thread_timings[other] * n_images
        ):  # has the machine's load changed?
            self._since_check = 0.0
            return other
        return self.threads

    def _forward(self, x: torch.Tensor, bf16: bool, features: bool = False):
        threads = self._pick_threads(len(x))
        t0 = time.perf_counter()
        with (
            torch_threads(threads),
            torch.inference_mode(),
            torch.autocast(self.device_kind, dtype=torch.bfloat16, enabled=bf16),
            strict_fp32("cpu" if bf16 else self.device),
        ):
            if features:
                logits, pooled = self.model.forward_with_features(x)
                out = logits.float().cpu().numpy(), pooled.float().cpu().numpy()
            else:
                out = self.model(x).float().cpu().numpy()
        if len(self.thread_choices) > 1 and self._passes > 1 and self._checked:
            seconds = time.perf_counter() - t0
            old = self.thread_timings.get(threads)
            self.thread_timings[threads] = (
                seconds / max(1, len(x)) if old is None else (old + seconds / max(1, len(x))) / 2
            )
            if threads == self.threads:
                self._since_check += seconds
            self.threads = min(self.thread_timings, key=self.thread_timings.get)
        return out

    def _input(self, batch: np.ndarray, channels_first: bool = False) -> torch.Tensor:
        # NHWC numpy → NCHW view whose memory is already channels-last: no copy on CPU
        x = torch.from_numpy(batch) if channels_first else torch.from_numpy(batch).permute(0, 3, 1, 2)
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )

    def __call__(self, batch: np.ndarray, channels_first: bool = False) -> np.ndarray:
        x = self._input(batch, channels_first)
        if not self._checked:
            return self._check_bf16(x)
        return self._forward(x, self.precision == "bf16")

    def logits_and_features(
        self, batch: np.ndarray, channels_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features (the out-of-distribution score's input) of one batch, one forward pass."""
        x = self._input(batch, channels_first)
        if not self._checked:
            self._check_bf16(x)  # decides the precision on this first batch
        return self._forward(x, self.precision == "bf16", features=True)

    def _check_bf16(self, x: torch.Tensor) -> np.ndarray:
        """Score the first batch in fp32 and bf16; keep bf16 only if no probability moves more than the
        tolerance, and return the logits of the precision kept."""
        ref = self._forward(x, False)
        low = self._forward(x, True)
        p_ref, p_low = softmax(ref), softmax(low)
        diff = float(np.abs(p_ref - p_low).max())
        same = bool((p_ref.argmax(1) == p_low.argmax(1)).all())
        ok = diff <= self.tolerance and same
        self.bf16_check = {
            "max_abs_prob_diff": diff,
            "same_predictions": same,
            "tolerance": self.tolerance,
            "kept": ok,
        }
        if not ok:
            warnings.warn(
                f"bf16 changes predictions beyond tolerance (max probability change {diff:.4f} > {self.tolerance}, "
                f"same classes: {same}); using fp32",
                RuntimeWarning,
                stacklevel=3,
            )
            self.precision = "fp32"
        self._checked = True
        return low if ok else ref


class OnnxBackend:
    """ONNX Runtime inference of an exported run (``model.onnx``, dynamic batch).

    Args:
        path: the ``.onnx`` file.
        device: ``auto``, ``cpu`` or ``cuda`` (CUDA execution provider when onnxruntime-gpu has it).
        threads: intra-op threads (default: the CPU count).
        spinning: let the intra-op threads spin-wait between the operators of one run (ONNX Runtime's
            own default) and stop them when the run returns. ``False`` (default): they never spin, so
            they burn no core that decode threads or other jobs need; on a busy 2-core machine spinning
            halved the bare session's speed (``benchmarks/inference.py`` measures both).
    """

    name = "onnx"
    channels_first = True  # the graph's input is Nx3xHxW

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, spinning: bool = False
    ):
        ort = import_optional("onnxruntime", "onnx", "the ONNX backend")

        self.path = Path(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_threads = int(threads or os.cpu_count() or 1)
        so.intra_op_num_threads = self.intra_threads
        self.spinning = bool(spinning)
        if self.spinning:
            # spin inside a run (no wake-up latency between operators), never after it: the decode
            # threads get the cores back as soon as the batch is scored
            so.add_session_config_entry("session.force_spinning_stop", "1")
        else:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        available = ort.get_available_providers()
        if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise LiverscopeError(
                f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu, or use --backend torch)"
            )
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if want_cuda and "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"]
        )
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:
            raise LiverscopeError(
                f"{self.path}: cannot load the ONNX model ({type(exc).__name__}: {exc}); re-export it with `liverscope export`"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.device_kind = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.precision = "fp32"

    def _run(self, batch: np.ndarray, channels_first: bool = False) -> list[np.ndarray]:
        x = np.ascontiguousarray(batch if channels_first else batch.transpose(0, 3, 1, 2))
        return self.session.run(None, {self.input_name: x})

    def __call__(self, batch: np.ndarray, channels_first: bool = False) -> np.ndarray:
        return self._run(batch, channels_first)[0].astype(np.float32, copy=False)

    def logits_and_features(
        self, batch: np.ndarray, channels_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled features of one batch (an export by ``liverscope export`` has both outputs)."""
        out = self._run(batch, channels_first)
        if len(out) < 2:
            raise LiverscopeError(
                f"{self.path} has no 'features' output (exported by an older liverscope): run `liverscope export` again"
            )
        return out[0].astype(np.float32, copy=False), out[1].astype(np.float32, copy=False)


class FlipAverage:
    """Flip test-time augmentation around either backend: the mean of its logits on the batch and on
    the batch mirrored left-right (a liver image mirrored is still a liver image, and the training
    presets all flip). Out-of-distribution features come from the batch as it is, the images the
    detector was fitted on. Costs a second forward pass; measured out of fold in docs/benchmarks.md
    (``benchmarks/tta.py``: +0.006 to +0.008 balanced accuracy, +0.006 macro AUC).

    Every other attribute (``device``, ``precision``, ``threads`` …) is the wrapped backend's.
    """

    def __init__(self, engine):
        object.__setattr__(self, "inner", engine)

    def __getattr__(self, name):
        if name == "inner":  # not set yet (a copy or unpickling in progress): no endless lookup
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def _mirror_logits(self, batch: np.ndarray, channels_first: bool) -> np.ndarray:
        """The wrapped backend's logits of the batch mirrored left-right (width is the last axis of
        ``Nx3xHxW``, the third of ``NxHxWx3``)."""
        mirrored = np.ascontiguousarray(batch[..., ::-1] if channels_first else batch[:, :, ::-1])
        return self.inner(mirrored, channels_first)

    def __call__(self, batch: np.ndarray, channels_first: bool = False) -> np.ndarray:
        return self.averaged_and_plain(batch, channels_first)[0]

    def averaged_and_plain(
        self, batch: np.ndarray, channels_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The flip-averaged logits and the logits of the batch as it is (the energy score's input)."""
        plain = self.inner(batch, channels_first)
        return (plain + self._mirror_logits(batch, channels_first)) / 2, plain

    def logits_and_features(
        self, batch: np.ndarray, channels_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.inner.logits_and_features(batch, channels_first)
        return (logits + self._mirror_logits(batch, channels_first)) / 2, features


__all__ = ["PRECISIONS", "BF16_TOLERANCE", "TorchBackend", "OnnxBackend", "FlipAverage"]
