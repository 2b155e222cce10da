"""Small shared helpers: atomic writes (text, JSON, CSV, PNG, NPY), file hashing, softmax, logits and
pooled features in one pass, device choice, the package logger and progress bars. The lowest layer: imports nothing of liverscope but :mod:`.errors`."""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from liverscope.errors import LiverscopeError

#: The package logger: every message of liverscope goes through it (the CLI sets its level: ``-q``
#: warnings only, ``-v`` debug). A library user configures it like any other ``logging`` logger.
logger = logging.getLogger("liverscope")

_PROGRESS = {"enabled": True}


def log(msg: str) -> None:
    """An INFO message of the ``liverscope`` logger (stderr through the CLI's handler)."""
    logger.info(msg)


class _StderrHandler(logging.StreamHandler):
    """A handler that always writes to the current ``sys.stderr`` (test runners and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Show liverscope's messages on stderr as ``[liverscope] message`` (the CLI calls this; scripts and
    notebooks may too). A library does not configure logging by itself: without this call, Python's
    defaults apply (warnings only). Calling it again changes the level, never adds a second handler."""
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(
        logging.Formatter(
            "[liverscope] %(message)s" if level > logging.DEBUG else "[liverscope %(name)s] %(message)s"
        )
    )
    logger.setLevel(level)
    logger.propagate = False


def import_optional(module: str, extra: str, purpose: str):
    """Import a module of an optional extra, or fail with the ``pip install`` line that brings it.

    Example: ``ort = import_optional("onnxruntime", "onnx", "the ONNX backend")``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LiverscopeError(
            f"{purpose} needs the Python package '{module}', which is not installed: "
            f"pip install 'liverscope[{extra}]'"
        ) from None


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for this process (the CLI's ``-q/--quiet`` turns them off)."""
    _PROGRESS["enabled"] = bool(enabled)


def progress_enabled() -> bool:
    """Whether progress bars may be drawn (off after ``set_progress(False)``, the CLI's ``-q``); the
    training loops ask it too, for Lightning's own bar."""
    return _PROGRESS["enabled"]


def progress(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Iterate over ``items`` with a progress bar on stderr (rich, which Typer already brings).

    No bar when output is not a terminal (logs, CI, a pipe), when switched off with
    :func:`set_progress`, or for fewer than two items: then it is a plain loop.
    """
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not _PROGRESS["enabled"] or not sys.stderr.isatty() or (total is not None and total < 2):
        yield from items
        return
    from rich.console import Console  # rich is imported only when a bar is drawn: keeps imports light
    from rich.progress import Progress

    with Progress(console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash half-way leaves the old file (or nothing) rather than a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(
        tmp_path, 0o666 & ~_umask()
    )  # mkstemp makes 0600 files; outputs should be readable like any other
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV (header + rows) atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line, as dicts."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def atomic_write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 grey (``HxW``) or RGB (``HxWx3``) image as PNG, atomically; a boolean mask is
    written as 0/255."""
    import cv2

    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise LiverscopeError(f"{path}: cannot encode a {arr.dtype} array of shape {arr.shape} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def atomic_write_npy(path: str | Path, arr: np.ndarray) -> Path:
    """Write an array as ``.npy`` (no pickling), atomically."""
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``logits / temperature`` (float64)."""
    if not temperature > 0:
        raise LiverscopeError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _json_default(obj: Any):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf floats by ``None`` so the JSON is standard (other tools reject ``NaN``)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def default_model_threads() -> int:
    """Threads for a torch model while decode threads run beside it: half the cores, at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` PyTorch intra-op threads, then restore the previous number."""
    if not n:
        yield
        return
    import torch

    prev = torch.get_num_threads()
    if prev != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if prev != n:
            torch.set_num_threads(prev)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32."""
    import torch

    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # older torch: no capability query, assume no
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


@contextmanager
def strict_fp32(device: str) -> Iterator[None]:
    """Run a block in true fp32 on a CUDA device: cuDNN convolutions (and matmuls) without TF32, which
    PyTorch allows for convolutions by default and which keeps only 10 mantissa bits on Ampere and later
    GPUs. On a CPU nothing changes (its fp32 is fp32). The previous settings come back afterwards."""
    if not str(device).startswith("cuda"):
        yield
        return
    import torch

    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LiverscopeError(f"--device {device}: no CUDA GPU is visible (use --device cpu or auto)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LiverscopeError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return device
