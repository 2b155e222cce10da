"""``liverscope explain`` on files: per image a heatmap, an overlay on the original image, the map as
``.npy``, a row of ``cams.csv``; and ``cams_summary.json``.

Each file goes through the run's :class:`~liverscope.inference.predict.Predictor`, as ``liverscope predict`` and
the app read it: its decoding and preprocessing (:meth:`~liverscope.inference.predict.Predictor.load`), its
backend and precision, its calibrated probabilities. The class a map explains by default is the class
the predictor gives, so ``explain``, ``predict`` and the app give an image the same probabilities (to
rounding, for the same backend and precision: tested) and the map explains what the user was told.
The maps themselves come from :mod:`liverscope.explain.cams` on the run's PyTorch model, in fp32.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from liverscope import rundir
from liverscope.data.io import iter_image_files
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.explain.cams import (
    DEFAULT_METHOD,
    FAITHFULNESS_COLUMNS,
    explain_batch,
    method_key,
    resolve_layers,
)
from liverscope.explain.faithfulness import faithfulness
from liverscope.explain.images import PREVIEW_SIDE, heatmap_rgb, original_overlay
from liverscope.inference.predict import EnsemblePredictor, Predictor
from liverscope.utils import (
    atomic_path,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_png,
    progress,
    resolve_device,
)


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem = path.stem or "image"
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


def _chunks(paths: Iterable[Path], predictor: Predictor, size: int):
    """Lists of ``(path, original, model input, error)``, ``size`` readable images per list."""
    chunk, good = [], 0
    for p in paths:
        try:
            orig, inp = predictor.load(p)
            chunk.append((p, orig, inp, None))
            good += 1
        except ImageReadError as exc:
            chunk.append((p, None, None, f"{exc.reason} ({exc.fix})"))
        except Exception as exc:  # a batch job lists a file it cannot process and goes on
            chunk.append((p, None, None, f"cannot preprocess ({type(exc).__name__}: {exc})"))
        if good >= size:
            yield chunk
            chunk, good = [], 0
    if chunk:
        yield chunk


@dataclass(frozen=True)
class ExplainOptions:
    """What :func:`explain_paths` draws and writes (the ``liverscope explain`` options).

    Attributes:
        method: a key of :data:`~liverscope.explain.cams.CAM_METHODS`.
        class_label: explain this class for every image (default: each image's predicted class).
        batch_size: images per CAM pass (and per forward pass of the predictor).
        flip_average: average with the map of the mirrored image.
        with_faithfulness: add deletion AUC and ROAD per image (many forward passes per image).
        restrict_to_sector: see :func:`~liverscope.explain.cams.compute_cams`.
        layers: where the maps are taken (see :func:`~liverscope.explain.cams.compute_cams`).
        overlay_side: longest side of the overlay (default :data:`~liverscope.explain.images.PREVIEW_SIDE`).
    """

    method: str = DEFAULT_METHOD
    class_label: str | None = None
    batch_size: int = 8
    flip_average: bool = False
    with_faithfulness: bool = False
    restrict_to_sector: bool = True
    layers: str | int | Sequence[str | int] | None = None
    overlay_side: int | None = PREVIEW_SIDE


def _open_predictor(
    run_dir: Path, opts: ExplainOptions, device: str, backend: str, precision: str
) -> Predictor:
    """The run's single-model predictor, its layers and class checked, its torch model on ``device``."""
    predictor = Predictor.from_run(
        run_dir, backend=backend, device=device, precision=precision, batch_size=opts.batch_size
    )
    if isinstance(predictor, EnsemblePredictor):
        raise LiverscopeError(
            f"{run_dir} is a fold ensemble of {len(predictor.members)} models: explain one of them (e.g. {predictor.members[0].run_dir})"
        )
    model, labels = predictor.model, predictor.labels
    resolve_layers(model, opts.layers)  # a bad layer name fails before any file is read
    if opts.class_label is not None and opts.class_label not in labels:
        raise LiverscopeError(
            f"class '{opts.class_label}' is not a label of {run_dir} (labels: {', '.join(labels)})"
        )
    model.to(resolve_device(device))
    return predictor


def _columns(with_faithfulness: bool) -> list[str]:
    """The columns of ``cams.csv``."""
    faith_cols = list(FAITHFULNESS_COLUMNS) if with_faithfulness else []
    return [
        "file",
        "predicted",
        "target",
        "prob_predicted",
        "prob_target",
        "energy_outside_sector",
        *faith_cols,
        "heatmap",
        "overlay",
        "npy",
        "error",
    ]


def _write_image(out: Path, stem: str, orig, cam: np.ndarray, pp, opts: ExplainOptions) -> dict[str, Path]:
    """Write one image's heatmap, overlay and ``.npy``; returns their paths by ``cams.csv`` column."""
    files = {
        "heatmap": out / f"{stem}_heatmap.png",
        "overlay": out / f"{stem}_overlay.png",
        "npy": out / f"{stem}.npy",
    }
    atomic_write_png(files["heatmap"], heatmap_rgb(cam))
    atomic_write_png(
        files["overlay"],
        original_overlay(orig, cam, pp, opts.restrict_to_sector, opts.overlay_side),
    )
    atomic_write_npy(files["npy"], cam.astype(np.float32))
    return files


def _explain_chunk(
    chunk: list, predictor: Predictor, opts: ExplainOptions, out: Path, taken: set[str], sums: dict
) -> list[dict]:
    """The ``cams.csv`` rows of one chunk: its readable images scored, explained and their files written
    (``taken``: the stems written, and ``sums``: column -> values, updated)."""
    rows = [{"file": str(p), "error": err or ""} for p, _, _, err in chunk]
    good = [j for j, (_, _, _, err) in enumerate(chunk) if err is None]
    if not good:
        return rows
    model, labels = predictor.model, predictor.labels
    inputs = [chunk[j][2] for j in good]
    results = predictor.predict_arrays(inputs)  # the probabilities predict and the app give
    targets = [labels.index(opts.class_label or r.label) for r in results]
    b = explain_batch(
        model,
        inputs,
        predictor.pp,
        targets,
        opts.method,
        opts.restrict_to_sector,
        opts.batch_size,
        opts.flip_average,
        layers=opts.layers,
    )
    faith = (
        faithfulness(
            model, inputs, predictor.pp, b.cams, b.targets, b.sectors, b.raw, batch_size=opts.batch_size
        )
        if opts.with_faithfulness
        else None
    )
    energy = b.energy_outside
    for i, j in enumerate(good):
        p, orig, r = chunk[j][0], chunk[j][1], results[i]
        stem = _unique_stem(p, taken)
        try:
            files = _write_image(out, stem, orig, b.cams[i], predictor.pp, opts)
        except Exception as exc:
            rows[j]["error"] = f"cannot write outputs ({type(exc).__name__}: {exc})"
            continue
        values = {"energy_outside_sector": float(energy[i])}
        if faith is not None:
            values.update({k: float(faith[k][i]) for k in FAITHFULNESS_COLUMNS})
        for k, v in values.items():
            sums.setdefault(k, []).append(v)
        tgt = labels[targets[i]]
        rows[j].update(
            predicted=r.label,
            target=tgt,
            prob_predicted=f"{r.probs[r.label]:.6f}",
            prob_target=f"{r.probs[tgt]:.6f}",
            **{k: f"{v:.6f}" for k, v in values.items()},
            **{k: v.name for k, v in files.items()},
        )
    return rows


def _summary(
    out: Path, opts: ExplainOptions, predictor: Predictor, n_done: int, skipped: list, sums: dict, t0: float
) -> dict:
    """``cams_summary.json``'s content (also what :func:`explain_paths` returns)."""
    layers = opts.layers
    return {
        "explained": n_done,
        "skipped": skipped,
        "out": str(out),
        "csv": str(out / rundir.CAMS_CSV),
        "method": opts.method,
        "class": opts.class_label,
        "flip_average": bool(opts.flip_average),
        "restricted_to_sector": bool(opts.restrict_to_sector),
        "layers": layers if layers is None or isinstance(layers, (str, int)) else list(layers),
        "seconds": time.perf_counter() - t0,
        "means": {k: float(np.mean(v)) for k, v in sums.items()},
        "backend": predictor.backend,
        "precision": predictor.precision,
    }


def explain_paths(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    options: ExplainOptions | None = None,
    device: str = "auto",
    backend: str = "auto",
    precision: str = "auto",
) -> dict:
    """Explain image files with a run's model and write, per image, into ``out_dir``:

    * ``<stem>_heatmap.png``: the map at model resolution as a colour image;
    * ``<stem>_overlay.png``: the map on the original image, at its original size up to ``overlay_side``
      px on the longer side (a larger scan is drawn on a preview of that size; ``None``: always the original size);
    * ``<stem>.npy``: the map, float32 ``size x size`` in [0, 1] (zero outside the sector when restricted);

    and ``cams.csv`` (one row per file, skipped files with their reason) and ``cams_summary.json``
    (with the ``backend`` and ``precision`` that gave the probabilities).

    Args:
        run_dir: a trained run (one model: a ``cv`` run's fold models are explained one at a time).
        paths: files and folders (see :func:`liverscope.data.io.iter_image_files`).
        out_dir: default ``run_dir/explain``.
        options: method, class, batch size, flip averaging, faithfulness, sector, layers and overlay size
            (:class:`ExplainOptions`; default: its defaults).
        device: ``auto``, ``cpu`` or ``cuda``.
        backend, precision: the probabilities' :class:`~liverscope.inference.predict.Predictor` (defaults as ``liverscope predict``).

    Returns:
        ``{"explained": n, "skipped": [(path, reason)], "out": str, "csv": str, "method": str,
        "seconds": float, "means": {column: mean}, "backend": str, "precision": str}``.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    opts = options if options is not None else ExplainOptions()
    method = method_key(opts.method)
    if int(opts.batch_size) < 1:
        raise LiverscopeError(f"batch size must be at least 1, got {opts.batch_size}")
    opts = replace(opts, method=method, batch_size=int(opts.batch_size))
    predictor = _open_predictor(run_dir, opts, device, backend, precision)
    out = Path(out_dir) if out_dir is not None else run_dir / rundir.EXPLAIN
    out.mkdir(parents=True, exist_ok=True)
    # stems written, (file, reason), column -> values, files explained
    taken, skipped, sums, n_done = set(), [], {}, 0
    with atomic_path(out / rundir.CAMS_CSV) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_columns(opts.with_faithfulness))
        w.writeheader()
        for chunk in progress(
            _chunks(iter_image_files(paths), predictor, opts.batch_size),
            f"explaining ({method}, {opts.batch_size} images a step)",
        ):
            rows = _explain_chunk(chunk, predictor, opts, out, taken, sums)
            skipped += [(row["file"], row["error"]) for row in rows if row["error"]]
            n_done += sum(not row["error"] for row in rows)
            w.writerows(rows)
            fh.flush()
    summary = _summary(out, opts, predictor, n_done, skipped, sums, t0)
    atomic_write_json(out / rundir.CAMS_SUMMARY, summary)
    return summary


__all__ = ["ExplainOptions", "explain_paths"]
