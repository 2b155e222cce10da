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


def explain_paths(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    method: str = DEFAULT_METHOD,
    class_label: str | None = None,
    batch_size: int = 8,
    flip_average: bool = False,
    with_faithfulness: bool = False,
    restrict_to_sector: bool = True,
    device: str = "auto",
    layers: str | int | Sequence[str | int] | None = None,
    backend: str = "auto",
    precision: str = "auto",
    overlay_side: int | None = PREVIEW_SIDE,
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
        method: a key of :data:`~liverscope.explain.cams.CAM_METHODS`.
        class_label: explain this class for every image (default: each image's predicted class).
        batch_size: images per CAM pass (and per forward pass of the predictor).
        flip_average: average with the map of the mirrored image.
        with_faithfulness: add deletion AUC and ROAD per image (many forward passes per image).
        restrict_to_sector: see :func:`~liverscope.explain.cams.compute_cams`.
        device: ``auto``, ``cpu`` or ``cuda``.
        layers: where the maps are taken (see :func:`~liverscope.explain.cams.compute_cams`).
        backend, precision: the probabilities' :class:`~liverscope.inference.predict.Predictor` (defaults as ``liverscope predict``).
        overlay_side: longest side of the overlay (default :data:`~liverscope.explain.images.PREVIEW_SIDE`).

    Returns:
        ``{"explained": n, "skipped": [(path, reason)], "out": str, "csv": str, "method": str,
        "seconds": float, "means": {column: mean}, "backend": str, "precision": str}``.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    method = method_key(method)
    if int(batch_size) < 1:
        raise LiverscopeError(f"batch size must be at least 1, got {batch_size}")
    predictor = Predictor.from_run(
        run_dir, backend=backend, device=device, precision=precision, batch_size=int(batch_size)
    )
    if isinstance(predictor, EnsemblePredictor):
        raise LiverscopeError(
            f"{run_dir} is a fold ensemble of {len(predictor.members)} models: explain one of them (e.g. {predictor.members[0].run_dir})"
        )
    model, labels = predictor.model, predictor.labels
    resolve_layers(model, layers)  # a bad layer name fails before any file is read
    if class_label is not None and class_label not in labels:
        raise LiverscopeError(
            f"class '{class_label}' is not a label of {run_dir} (labels: {', '.join(labels)})"
        )
    model.to(resolve_device(device))
    out = Path(out_dir) if out_dir is not None else run_dir / rundir.EXPLAIN
    out.mkdir(parents=True, exist_ok=True)
    faith_cols = list(FAITHFULNESS_COLUMNS) if with_faithfulness else []
    cols = [
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
    taken, skipped, sums, n_done = (
        set(),
        [],
        {},
        0,
    )  # stems written, (file, reason), column -> values, files explained
    with atomic_path(out / rundir.CAMS_CSV) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for chunk in progress(
            _chunks(iter_image_files(paths), predictor, int(batch_size)),
            f"explaining ({method}, {int(batch_size)} images a step)",
        ):
            rows = [{"file": str(p), "error": err or ""} for p, _, _, err in chunk]
            good = [j for j, (_, _, _, err) in enumerate(chunk) if err is None]
            if good:
                inputs = [chunk[j][2] for j in good]
                results = predictor.predict_arrays(inputs)  # the probabilities predict and the app give
                targets = [labels.index(class_label or r.label) for r in results]
                b = explain_batch(
                    model,
                    inputs,
                    predictor.pp,
                    targets,
                    method,
                    restrict_to_sector,
                    int(batch_size),
                    flip_average,
                    layers=layers,
                )
                faith = (
                    faithfulness(
                        model,
                        inputs,
                        predictor.pp,
                        b.cams,
                        b.targets,
                        b.sectors,
                        b.raw,
                        batch_size=int(batch_size),
                    )
                    if with_faithfulness
                    else None
                )
                energy = b.energy_outside
                for i, j in enumerate(good):
                    p, orig, r = chunk[j][0], chunk[j][1], results[i]
                    stem = _unique_stem(p, taken)
                    files = {
                        "heatmap": out / f"{stem}_heatmap.png",
                        "overlay": out / f"{stem}_overlay.png",
                        "npy": out / f"{stem}.npy",
                    }
                    try:
                        atomic_write_png(files["heatmap"], heatmap_rgb(b.cams[i]))
                        atomic_write_png(
                            files["overlay"],
                            original_overlay(orig, b.cams[i], predictor.pp, restrict_to_sector, overlay_side),
                        )
                        atomic_write_npy(files["npy"], b.cams[i].astype(np.float32))
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
            skipped += [(row["file"], row["error"]) for row in rows if row["error"]]
            n_done += sum(not row["error"] for row in rows)
            w.writerows(rows)
            fh.flush()
    means = {k: float(np.mean(v)) for k, v in sums.items()}
    summary = {
        "explained": n_done,
        "skipped": skipped,
        "out": str(out),
        "csv": str(out / rundir.CAMS_CSV),
        "method": method,
        "class": class_label,
        "flip_average": bool(flip_average),
        "restricted_to_sector": bool(restrict_to_sector),
        "layers": layers if layers is None or isinstance(layers, (str, int)) else list(layers),
        "seconds": time.perf_counter() - t0,
        "means": means,
        "backend": predictor.backend,
        "precision": predictor.precision,
    }
    atomic_write_json(out / rundir.CAMS_SUMMARY, summary)
    return summary


__all__ = ["explain_paths"]
