"""What an analysis records of the model that made it and of the file it read.

* :func:`run_info`: the run's name and architecture, a fingerprint of everything that decides its
  answers (:func:`run_fingerprint`), liverscope's version, the backend, test-time augmentation and
  temperature of a :class:`~liverscope.inference.predict.Predictor`;
* :func:`image_input`: a file's SHA-256, size and frame count (DICOM header), read once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from liverscope import __version__, rundir
from liverscope.data.io import dicom_header
from liverscope.errors import LiverscopeError
from liverscope.records.store import ImageInput, RunInfo

CHUNK = 1 << 20


def run_fingerprint(run_dir: str | Path) -> str:
    """SHA-256 of what decides a run's answers: labels, preprocessing, temperature, architecture, the
    OOD threshold and the weights of every model (a cv run: each fold's). The same run gives the same
    fingerprint on every machine; exporting it to ONNX or re-reading it does not change it."""
    meta = rundir.read_model_meta(run_dir)
    weights = [rundir.weights_sha256(m) for m in rundir.members(run_dir)]
    decisive = {k: meta.get(k) for k in ("labels", "preprocessing", "temperature", "architecture")}
    decisive["ood_threshold"] = (meta.get("ood") or {}).get("threshold")
    decisive["weights"] = weights
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()


def model_id(run_dir: str | Path, meta: dict) -> str:
    """``RUN_NAME:ARCHITECTURE`` (a cv run: ``RUN_NAME:ensemble of N``)."""
    arch = meta.get("architecture")
    name = arch.get("name") if isinstance(arch, dict) else arch
    if meta.get("ensemble"):
        name = f"ensemble of {len(meta['ensemble'])}"
    return f"{Path(run_dir).name}:{name or 'unknown'}"


def run_info(predictor) -> RunInfo:
    """The :class:`RunInfo` of a Predictor loaded from a run directory (``Predictor.from_run``)."""
    run_dir = getattr(predictor, "run_dir", None)
    if run_dir is None:
        raise LiverscopeError("recording needs a predictor loaded from a run directory (liverscope.load_run)")
    return RunInfo(
        model_id(run_dir, predictor.meta),
        run_fingerprint(run_dir),
        __version__,
        predictor.backend,
        predictor.tta,
        float(predictor.temperature),
        str(Path(run_dir).resolve()),
    )


def file_digest(path: str | Path) -> tuple[str, int]:
    """SHA-256 and size of a file's bytes."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def image_input(path: str | Path, origin: str = "predict", source: str | None = None) -> ImageInput:
    """The :class:`ImageInput` of a file (its path kept as given, made absolute)."""
    p = Path(path)
    digest, size = file_digest(p)
    header = dicom_header(p)
    return ImageInput(p.name, digest, size, str(p.resolve()), origin, source, header.frames if header else 1)


def bytes_input(name: str, data: bytes, origin: str = "app", frames: int = 1) -> ImageInput:
    """The :class:`ImageInput` of an upload (no file behind it)."""
    return ImageInput(
        Path(name).name or "upload", hashlib.sha256(data).hexdigest(), len(data), None, origin, None, frames
    )


__all__ = ["run_fingerprint", "model_id", "run_info", "file_digest", "image_input", "bytes_input"]
