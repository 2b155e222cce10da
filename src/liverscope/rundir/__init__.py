"""THE run-directory contract: every file a run holds is named here, and written and read here or by the
one function this table names.

A run directory (``runs/NAME/``) is the unit of output; everything downstream (evaluate, explain,
segment, predict, the app, export) takes one. What it holds (``docs/architecture.md`` has the table of
who writes and who reads each file):

================================  ===============================================================
``config.yaml``                   the resolved recipe (:func:`write_config` / :func:`read_config`)
``model.safetensors``             weights only, never pickled (:func:`save_model` / :func:`load_model`)
``model.json``                    architecture, labels, preprocessing, temperature, provenance, the
                                  training data (``training_data``); a cv
                                  run lists its fold models under ``ensemble``; ``onnx`` describes
                                  the export (:func:`read_model_meta`, :func:`update_model_meta`)
``split.csv``                     path, label, split, [fold,] group, source, sha256 per image
``skipped.csv``                   files left out, with the reason
``predictions_val.csv``,          path, label, pred, source, group, prob_*, logit_* per image
``predictions_test.csv``,
``oof_predictions.csv``
``metrics.json``                  figures; other steps merge their own key (:func:`merge_metrics`)
``history.csv``                   one row per epoch (made from the CSV logger's ``logs/csv/``)
``logs/``                         Lightning's loggers (``csv/version_N/metrics.csv``, one per session)
``cv_folds.csv``, ``folds/foldI/``   a cv run's fold table and fold runs
``audit.json``, ``audit.html``    the data audit (named and written by :mod:`liverscope.data.audit_report`)
``cam_gallery/``                  PNG tiles, ``captions.json`` and ``flagged.json`` for the report
``segmenter.safetensors/.json``   the U-Net of ``segment train`` (target lesion; target T: ``segmenter-T.*``)
``ood.safetensors``               class means and shared precision of the pooled training features
                                  (the out-of-distribution score); method and threshold in ``model.json``
``model.onnx``                    the verified ONNX export (outputs ``logits`` and ``features``)
``eval/NAME/``                    ``liverscope evaluate RUN DATA`` output (itself run-shaped)
``report.html``, ``curves.png``,  the report and its figures (:mod:`liverscope.evaluate.figures`)
``confusion_matrix.png``, ...
``explain/``                      ``liverscope explain``'s default output (``cams.csv``, ``cams_summary.json``)
================================  ===============================================================
"""

# ruff: noqa: F405  (the run-file names come from .names by the star import below)
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from liverscope import __version__
from liverscope.config import RunConfig, config_from_dict
from liverscope.data.datasets import Sample
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.models import model_from_arch
from liverscope.rundir.names import *  # noqa: F403  every name of a run directory (names.__all__): rundir.CURVES_PNG, ...
from liverscope.utils import (
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_png,
    atomic_write_text,
    file_sha256,
    read_csv_rows,
    read_json,
    softmax,
)

# --------------------------------------------------------------------------------------------------
# the directory and its configuration
# --------------------------------------------------------------------------------------------------


def last_checkpoint(run_dir: str | Path) -> Path:
    """Lightning's ``checkpoints/last.ckpt`` of a run (what ``--resume`` continues from)."""
    return Path(run_dir) / CHECKPOINTS / LAST_CKPT


def is_trained(run_dir: str | Path) -> bool:
    """Whether a run finished: its weights and metrics are written."""
    return (Path(run_dir) / METRICS).exists() and (Path(run_dir) / MODEL_WEIGHTS).exists()


def start_run(cfg: RunConfig, resume: bool = False, write: bool = True) -> Path:
    """Create (or reopen, with ``resume``) ``cfg.run_dir`` and write its ``config.yaml`` (``write=False``:
    the checks alone, on the processes of a distributed run that do not write).

    Raises:
        LiverscopeError: the run exists and ``resume`` is off, or there is nothing to resume.
    """
    run_dir = cfg.run_dir
    last = last_checkpoint(run_dir)
    if (run_dir / MODEL_META).exists() and last.exists() and not resume:
        raise LiverscopeError(
            f"{run_dir} already holds a trained run; choose another --name, or --resume to continue it"
        )
    if resume and not last.exists():
        raise LiverscopeError(
            f"{run_dir}: nothing to resume (no {CHECKPOINTS}/{LAST_CKPT}); start without --resume"
        )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg)
    return run_dir


def write_config(run_dir: str | Path, cfg: RunConfig) -> Path:
    """``config.yaml``: the resolved recipe, so a run can be repeated from its own directory."""
    return atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise LiverscopeError(f"{run_dir}: no {CONFIG} — is this a liverscope run directory?")
    return config_from_dict(yaml.safe_load(path.read_text()) or {})


def fold_dir(run_dir: str | Path, i: int) -> Path:
    """``folds/foldI`` of a cv run."""
    return Path(run_dir) / FOLDS / f"fold{i}"


def eval_dir(run_dir: str | Path, name: str) -> Path:
    """``eval/NAME`` of a run: where ``liverscope evaluate RUN DATA`` writes."""
    return Path(run_dir) / EVAL / name


# --------------------------------------------------------------------------------------------------
# the model: weights + metadata
# --------------------------------------------------------------------------------------------------


def save_weights(path: str | Path, module) -> Path:
    """A module's tensors as safetensors (never pickled), atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return Path(path)


def load_weights(path: str | Path) -> dict:
    """The tensors of a safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path))


def save_model(
    run_dir: str | Path, model, class_names: Sequence[str], pp: Preprocessing, extra: dict | None = None
) -> None:
    """``model.safetensors`` (weights only, never pickled) + ``model.json`` (everything to rebuild it)."""
    run_dir = Path(run_dir)
    save_weights(run_dir / MODEL_WEIGHTS, model)
    meta = {
        "architecture": model.arch,
        "labels": list(class_names),
        "preprocessing": pp.to_dict(),
        "weights_source": model.weights_source,
        "temperature": None,
        "liverscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta.update(extra or {})
    atomic_write_json(run_dir / MODEL_META, meta)


def require_model(run_dir: str | Path) -> Path:
    """The ``model.json`` of a trained run, or a clear error naming the folder."""
    path = Path(run_dir) / MODEL_META
    if not path.exists():
        raise LiverscopeError(
            f"{run_dir}: no {MODEL_META} — train first (liverscope train) or check the run directory"
        )
    return path


def read_model_meta(run_dir: str | Path) -> dict:
    """``model.json`` of a run (labels, preprocessing, temperature, architecture …)."""
    return read_json(require_model(run_dir))


def update_model_meta(run_dir: str | Path, **fields) -> dict:
    """Read ``model.json``, set ``fields``, write it back atomically (keeps whatever else is there)."""
    meta = read_model_meta(run_dir)
    meta.update(fields)
    atomic_write_json(Path(run_dir) / MODEL_META, meta)
    return meta


def write_model_meta(run_dir: str | Path, meta: dict) -> Path:
    """A whole ``model.json`` (a cv run's, which has no weights of its own)."""
    return atomic_write_json(Path(run_dir) / MODEL_META, meta)


def load_model(run_dir: str | Path):
    """Model (eval mode, CPU) and metadata of a run directory."""
    run_dir = Path(run_dir)
    weights_path = run_dir / MODEL_WEIGHTS
    if not (run_dir / MODEL_META).exists() or not weights_path.exists():
        raise LiverscopeError(
            f"{run_dir}: no {MODEL_META}/{MODEL_WEIGHTS} — train first (liverscope train) or check the run directory"
        )
    meta = read_model_meta(run_dir)
    model = model_from_arch(meta["architecture"])
    model.load_state_dict(load_weights(weights_path))
    return model.eval(), meta


def read_preprocessing(run_dir: str | Path) -> Preprocessing:
    """The preprocessing recorded in a run's ``model.json``."""
    return Preprocessing.from_dict(read_model_meta(run_dir)["preprocessing"])


def temperature(meta: dict) -> float:
    """The stored temperature of a run's ``model.json`` (1.0 when none was fitted)."""
    return float(meta.get("temperature") or 1.0)


def members(run_dir: str | Path, ensemble: Sequence[str | Path] | None = None) -> list[Path]:
    """The run directories whose models make a run's prediction: ``ensemble`` when given, the fold
    models of a ``cv`` run (``model.json`` lists them under ``ensemble``), else the run itself."""
    run_dir = Path(run_dir)
    if ensemble:
        return [Path(e) for e in ensemble]
    meta = read_model_meta(run_dir)
    if meta.get("ensemble") and not (run_dir / MODEL_WEIGHTS).exists():
        return [run_dir / e for e in meta["ensemble"]]
    return [run_dir]


def weights_sha256(run_dir: str | Path) -> str | None:
    """SHA-256 of ``model.safetensors`` (the model's identity), ``None`` when there is none."""
    path = Path(run_dir) / MODEL_WEIGHTS
    return file_sha256(path) if path.exists() else None


def onnx_state(run_dir: str | Path) -> tuple[Path, str]:
    """Where a run's ONNX export is and whether it can be used.

    Returns:
        ``(path, state)`` with state ``missing``, ``current`` (exported from the present weights) or
        ``stale`` (the weights changed after the export, it was not made by ``liverscope export``, or it
        predates the ``features`` output that the out-of-distribution score needs).
    """
    run_dir = Path(run_dir)
    path = run_dir / ONNX
    if not path.exists():
        return path, "missing"
    try:
        info = read_json(run_dir / MODEL_META).get("onnx") or {}
    except (OSError, ValueError):
        return path, "stale"
    weights = run_dir / MODEL_WEIGHTS
    if (
        not info
        or not weights.exists()
        or info.get("weights_sha256") != file_sha256(weights)
        or info.get("onnx_sha256") != file_sha256(path)
    ):
        return path, "stale"
    if "features" not in (info.get("outputs") or []):
        return path, "stale"
    return path, "current"


def onnx_int8_state(run_dir: str | Path) -> tuple[Path, str]:
    """Where a run's int8 export (``liverscope export --int8``) is and whether it can be used: ``missing``,
    ``current`` (quantised from the present, current ``model.onnx``) or ``stale``."""
    run_dir = Path(run_dir)
    path = run_dir / ONNX_INT8
    if not path.exists():
        return path, "missing"
    fp32, state = onnx_state(run_dir)
    try:
        info = read_json(run_dir / MODEL_META).get("onnx_int8") or {}
    except (OSError, ValueError):
        return path, "stale"
    if (
        state != "current"
        or info.get("fp32_onnx_sha256") != file_sha256(fp32)
        or info.get("onnx_sha256") != file_sha256(path)
    ):
        return path, "stale"
    return path, "current"


def save_ood(run_dir: str | Path, stats: dict[str, np.ndarray], info: dict) -> Path:
    """``ood.safetensors`` (the arrays of the out-of-distribution score, e.g. class ``means`` and the
    shared ``precision``) and ``model.json["ood"]`` = ``info`` (method, thresholds, quantile, shares)."""
    from safetensors.numpy import save_file

    run_dir = Path(run_dir)
    path = run_dir / OOD_STATS
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in stats.items()}, str(tmp))
    update_model_meta(run_dir, ood=dict(info, file=OOD_STATS, weights_sha256=weights_sha256(run_dir)))
    return path


def load_ood(run_dir: str | Path, meta: dict | None = None) -> dict | None:
    """The out-of-distribution detector of a run: ``model.json["ood"]`` with the arrays of
    ``ood.safetensors`` added (``means``, ``precision``, ...), or ``None`` for a run without one (trained
    before liverscope scored OOD).

    Raises:
        LiverscopeError: ``model.json`` records a detector whose statistics file is missing or damaged.
    """
    from safetensors.numpy import load_file

    run_dir = Path(run_dir)
    info = (meta if meta is not None else read_model_meta(run_dir)).get("ood")
    if not info:
        return None
    path = run_dir / info.get("file", OOD_STATS)
    try:
        arrays = load_file(str(path))
    except Exception as exc:
        raise LiverscopeError(
            f"{path}: cannot read the out-of-distribution statistics that {MODEL_META} records ({type(exc).__name__}); "
            f'copy the whole run directory, or delete the "ood" entry of {run_dir / MODEL_META} to predict without the flag'
        ) from None
    return dict(info, **arrays)


# --------------------------------------------------------------------------------------------------
# splits, skipped files, predictions
# --------------------------------------------------------------------------------------------------


def write_split(
    path: str | Path, samples: Sequence[Sample], assignment: Sequence[str], folds: Sequence[int] | None = None
) -> Path:
    """``split.csv``: one row per image with its split (and fold, for a cv run)."""
    header = ["path", "label", "split", *(["fold"] if folds is not None else []), "group", "source", "sha256"]
    rows = []
    for i, (s, a) in enumerate(zip(samples, assignment)):
        fold = [int(folds[i])] if folds is not None else []
        rows.append([str(s.path), s.label, a, *fold, s.group or "", s.source or "", s.sha256 or ""])
    return atomic_write_csv(path, header, rows)


def read_split(path: str | Path) -> tuple[list[Sample], np.ndarray, np.ndarray | None]:
    """``(samples, split per sample, fold per sample or None)`` of a ``split.csv``."""
    rows = read_csv_rows(path)
    samples = [
        Sample(Path(r["path"]), r["label"], r["group"] or None, r["source"] or None, r["sha256"] or None)
        for r in rows
    ]
    folds = np.array([int(r["fold"]) for r in rows], dtype=int) if rows and "fold" in rows[0] else None
    return samples, np.array([r["split"] for r in rows]), folds


def write_skipped(run_dir: str | Path, skipped: Sequence[tuple[str, str]]) -> Path:
    """``skipped.csv``: the files a run left out, with the reason."""
    return atomic_write_csv(Path(run_dir) / SKIPPED, ("path", "reason"), skipped)


def write_predictions(
    path: str | Path,
    samples: Sequence[Sample],
    logits: np.ndarray,
    class_names: Sequence[str],
    temperature: float = 1.0,
    ood: tuple[np.ndarray, float] | None = None,
    precision: str | None = None,
) -> Path:
    """A predictions CSV: path, label, pred, source, group, ``prob_*`` (at ``temperature``), ``logit_*``,
    with ``ood = (scores, threshold)`` the out-of-distribution ``ood_score`` and flag ``ood``, and with
    ``precision`` (what the logits were computed in: ``fp32``, ``bf16``) a ``precision`` column."""
    probs = softmax(logits, temperature)
    header = [
        "path",
        "label",
        "pred",
        "source",
        "group",
        *[f"prob_{c}" for c in class_names],
        *[f"logit_{c}" for c in class_names],
    ]
    scores = [None] * len(samples) if ood is None else [float(v) for v in ood[0]]
    if ood is not None:
        header += ["ood_score", "ood"]
    header += ["precision"] if precision else []
    rows = (
        [
            str(s.path),
            s.label,
            class_names[int(np.argmax(pr))],
            s.source or "",
            s.group or "",
            *[f"{v:.6f}" for v in pr],
            *[f"{v:.6f}" for v in lg],
            *([] if sc is None else [f"{sc:.6g}", str(sc > ood[1]).lower()]),
            *([precision] if precision else []),
        ]
        for s, lg, pr, sc in zip(samples, logits, probs, scores)
    )
    return atomic_write_csv(path, header, rows)


@dataclass
class Predictions:
    """The content of a predictions CSV.

    Attributes:
        paths: image paths as written.
        y: true class indices.
        probs: ``(n, K)`` probabilities as written (at the run's temperature).
        logits: ``(n, K)`` logits, or ``None`` for a file without ``logit_*`` columns.
        sources: acquisition source per image (``unknown`` when none).
        class_names: the labels, in column order.
        ood: the out-of-distribution flag per image, or ``None`` for a file without an ``ood`` column.
    """

    paths: list[str]
    y: np.ndarray
    probs: np.ndarray
    logits: np.ndarray | None
    sources: list[str]
    class_names: list[str]
    ood: np.ndarray | None = None

    def samples(self) -> list[Sample]:
        """The rows as :class:`Sample` (path, label, source)."""
        return [
            Sample(Path(p), self.class_names[t], None, s) for p, t, s in zip(self.paths, self.y, self.sources)
        ]


def read_predictions(path: str | Path, class_names: Sequence[str] | None = None) -> Predictions:
    """Read a predictions CSV written by :func:`write_predictions`.

    Args:
        path: the CSV.
        class_names: the run's labels (default: the ``prob_*`` columns in order).

    Raises:
        LiverscopeError: a label that is not among ``class_names``, or a missing probability column.
    """
    rows = read_csv_rows(path)
    names = (
        list(class_names)
        if class_names
        else [c[len("prob_") :] for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    )
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise LiverscopeError(f"{path}: labels {unknown} are not among the run's labels {names}")
    missing = [f"prob_{c}" for c in names if rows and f"prob_{c}" not in rows[0]]
    if missing:
        raise LiverscopeError(f"{path}: columns {missing} missing")
    k = len(names)
    y = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"prob_{c}"]) for c in names] for r in rows], dtype=np.float64).reshape(
        len(rows), k
    )
    logits = None
    if rows and all(f"logit_{c}" in rows[0] for c in names):
        logits = np.array([[float(r[f"logit_{c}"]) for c in names] for r in rows], dtype=np.float64).reshape(
            len(rows), k
        )
    sources = [r.get("source") or "unknown" for r in rows]
    ood = np.array([r["ood"] == "true" for r in rows], dtype=bool) if rows and "ood" in rows[0] else None
    return Predictions([r["path"] for r in rows], y, probs, logits, sources, names, ood)


# --------------------------------------------------------------------------------------------------
# metrics, history, fold table
# --------------------------------------------------------------------------------------------------


def write_metrics(run_dir: str | Path, metrics: dict) -> Path:
    return atomic_write_json(Path(run_dir) / METRICS, metrics)


def read_metrics(run_dir: str | Path) -> dict:
    """``metrics.json`` of a run (``{}`` when there is none yet)."""
    path = Path(run_dir) / METRICS
    return read_json(path) if path.exists() else {}


def merge_metrics(run_dir: str | Path, key: str, value: Any) -> Path:
    """Put ``value`` under ``key`` of the run's ``metrics.json`` (read, update, atomic write)."""
    metrics = read_metrics(run_dir)
    metrics[key] = value
    return write_metrics(run_dir, metrics)


def read_history(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``history.csv`` (``[]`` when there is none)."""
    return read_csv_rows(path) if Path(path).exists() else []


def write_history(path: str | Path, columns: Sequence[str], rows: Sequence[dict]) -> Path:
    """``history.csv``, one row per epoch, rewritten atomically after every epoch."""
    return atomic_write_csv(path, columns, ([r.get(c, "") for c in columns] for r in rows))


def write_fold_table(run_dir: str | Path, rows: Sequence[dict]) -> Path:
    """``cv_folds.csv``: one row per fold (validation and test figures)."""
    columns = list(rows[0])
    return atomic_write_csv(Path(run_dir) / CV_FOLDS, columns, ([r.get(c) for c in columns] for r in rows))


def fold_scores(run_dir: str | Path, metric: str) -> list[float]:
    """The fold-wise validation ``metric`` of a cv run (for a paired comparison of two runs)."""
    path = Path(run_dir) / CV_FOLDS
    if not path.exists():
        raise LiverscopeError(f"{run_dir}: no {CV_FOLDS} — --compare needs two `liverscope cv` runs")
    rows = read_csv_rows(path)
    if rows and f"val_{metric}" not in rows[0]:
        raise LiverscopeError(f"{path}: no column val_{metric}")
    return [float(r[f"val_{metric}"]) for r in rows]


# --------------------------------------------------------------------------------------------------
# the report's CAM gallery
# --------------------------------------------------------------------------------------------------


def write_gallery(
    run_dir: str | Path, tiles: Sequence[tuple[str, np.ndarray, str]], flagged: Sequence[str] | None = None
) -> Path:
    """Replace ``cam_gallery/`` with ``tiles`` (file name, RGB image, caption), their ``captions.json``
    and ``flagged.json``: the file names of the tiles whose image is flagged as unlike the training data
    (``flagged=None``: the run has no out-of-distribution detector, and no ``flagged.json`` is written)."""
    folder = Path(run_dir) / GALLERY
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.png"), *folder.glob(GALLERY_FLAGGED)]:
        old.unlink()
    for fname, image, _ in tiles:
        atomic_write_png(folder / fname, image)
    atomic_write_json(folder / GALLERY_CAPTIONS, {fname: caption for fname, _, caption in tiles})
    if flagged is not None:
        atomic_write_json(folder / GALLERY_FLAGGED, sorted(flagged))
    return folder


def read_gallery(folder: Path) -> list[tuple[Path, str, bool | None]]:
    """``[(image path, caption, flagged)]`` of a ``cam_gallery/`` folder, sorted by file name; ``flagged``
    is ``None`` for a gallery that does not record the out-of-distribution flag (written before it did)."""
    if not folder.is_dir():
        return []
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    captions: dict = {}
    flagged: set | None = None
    try:  # a damaged caption or flag file costs the captions or the flags, not the gallery
        captions = read_json(folder / GALLERY_CAPTIONS) if (folder / GALLERY_CAPTIONS).exists() else {}
        flagged = set(read_json(folder / GALLERY_FLAGGED)) if (folder / GALLERY_FLAGGED).exists() else None
    except Exception:
        pass
    return [
        (p, captions.get(p.name) or p.stem.replace("_", " "), None if flagged is None else p.name in flagged)
        for p in images
    ]
