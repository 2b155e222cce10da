"""Prediction on new images: load a run, score files and folders, write CSV/JSON.

``Predictor`` is the Python entry point::

    from liverscope.predict import Predictor
    p = Predictor.from_run("runs/demo")
    for result in p.predict_paths(["scan1.png", "folder/"]):
        print(result.path, result.label, result.probs)

Bad files are not fatal: each is reported (``Result.error``) and the rest finish.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from liverscope.data.io import IMAGE_SUFFIXES, decode_image, read_bytes
from liverscope.data.preprocess import Preprocessing, preprocess_array
from liverscope.data.augment import ToTensorNormalised
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.utils import atomic_path, read_json, resolve_device


@dataclass
class Result:
    """Prediction for one file (``error`` set and ``label`` ``None`` when the file was skipped)."""

    path: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    logits: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def confidence(self) -> float | None:
        return max(self.probs.values()) if self.probs else None


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named directly, and image files found recursively in folders (sorted, ``masks/`` skipped)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and not q.name.startswith(".") and "masks" not in q.relative_to(p).parts[:-1] and q.suffix.lower() in IMAGE_SUFFIXES | {".jpe"}:
                    yield q
        else:
            yield p  # a named file is always tried, so a bad one is reported rather than ignored


def infer_logits(model: torch.nn.Module, loader, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of a model over a DataLoader of ``(x, y)`` batches (eval mode, no grad)."""
    model.eval().to(device)
    logits, targets = [], []
    with torch.inference_mode():
        for x, y in loader:
            logits.append(model(x.to(device)).float().cpu())
            targets.append(torch.as_tensor(y))
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def load_run_model(run_dir: str | Path):
    """Model (eval mode, CPU) and metadata of a run directory."""
    from safetensors.torch import load_file

    from liverscope.models.registry import model_from_arch

    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    if not meta_path.exists() or not weights_path.exists():
        raise LiverscopeError(f"{run_dir}: no model.json/model.safetensors — train first (liverscope train) or check the run directory")
    meta = read_json(meta_path)
    model = model_from_arch(meta["architecture"])
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval(), meta


class Predictor:
    """Scores images with a trained run.

    Args:
        model: a :class:`~liverscope.models.registry.LiverNet`.
        meta: the run's ``model.json`` content (labels, preprocessing, temperature).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass.
        calibrated: apply the temperature stored with the model (when there is one).
    """

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "auto", batch_size: int = 16, calibrated: bool = True):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.meta = meta
        self.labels: list[str] = list(meta["labels"])
        self.pp = Preprocessing.from_dict(meta["preprocessing"])
        self.to_tensor = ToTensorNormalised(self.pp)
        self.batch_size = batch_size
        self.temperature = float(meta.get("temperature") or 1.0) if calibrated else 1.0

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs) -> "Predictor":
        model, meta = load_run_model(run_dir)
        return cls(model, meta, **kwargs)

    def prepare(self, path: str | Path, data: bytes | None = None) -> np.ndarray:
        """Decode and preprocess one file (or its bytes) to uint8 ``size x size x 3``."""
        if data is None:
            data = read_bytes(path)
        return preprocess_array(decode_image(data, path), self.pp)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Logits of preprocessed uint8 images."""
        x = torch.stack([self.to_tensor(im) for im in images]).to(self.device)
        with torch.inference_mode():
            return self.model(x).float().cpu().numpy()

    def _results(self, paths: list[str], logits: np.ndarray) -> list[Result]:
        probs = softmax(logits, self.temperature)
        out = []
        for p, lg, pr in zip(paths, logits, probs):
            out.append(Result(p, self.labels[int(np.argmax(pr))], {c: float(v) for c, v in zip(self.labels, pr)}, [float(v) for v in lg]))
        return out

    def predict_arrays(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Result]:
        names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
        return self._results(names, self.logits(images))

    def predict_paths(self, paths: Iterable[str | Path]) -> Iterator[Result]:
        """Stream results for files and folders, batch by batch; unreadable files yield an error result."""
        batch_paths: list[str] = []
        batch_imgs: list[np.ndarray] = []
        for path in iter_image_files(paths):
            try:
                img = self.prepare(path)
            except ImageReadError as exc:
                yield Result(str(path), error=f"{exc.reason} ({exc.fix})")
                continue
            batch_paths.append(str(path))
            batch_imgs.append(img)
            if len(batch_imgs) >= self.batch_size:
                yield from self._results(batch_paths, self.logits(batch_imgs))
                batch_paths, batch_imgs = [], []
        if batch_imgs:
            yield from self._results(batch_paths, self.logits(batch_imgs))


def write_results(results: Iterable[Result], labels: Sequence[str], out: str | Path) -> dict:
    """Write results as CSV (``.csv``) or JSON (``.json``) atomically; returns counts.

    CSV columns: ``file,prediction,confidence,prob_<label>...,error``.
    """
    out = Path(out)
    rows, n_ok, skipped = [], 0, []
    for r in results:
        rows.append(r)
        if r.error:
            skipped.append((r.path, r.error))
        else:
            n_ok += 1
    if out.suffix.lower() == ".json":
        payload = [
            {"file": r.path, "prediction": r.label, "confidence": r.confidence, "probabilities": r.probs, "error": r.error}
            for r in rows
        ]
        from liverscope.utils import atomic_write_json

        atomic_write_json(out, payload)
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "prediction", "confidence", *[f"prob_{c}" for c in labels], "error"])
        for r in rows:
            probs = [f"{r.probs[c]:.6f}" if r.probs else "" for c in labels]
            w.writerow([r.path, r.label or "", f"{r.confidence:.6f}" if r.confidence is not None else "", *probs, r.error or ""])
        with atomic_path(out) as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
    return {"predicted": n_ok, "skipped": skipped, "out": str(out)}


__all__ = ["Predictor", "Result", "write_results", "iter_image_files", "infer_logits", "softmax", "load_run_model"]
