"""Evaluate a trained run (single model or fold ensemble) on a labelled folder or manifest.

Writes ``RUN_DIR/eval/<name>/``: ``predictions.csv``, ``metrics.json`` (with per-source metrics when the
data has more than one acquisition source), ``confusion_matrix.png``, ``audit.json`` and ``report.html``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverscope.errors import LiverscopeError
from liverscope.utils import atomic_write_json, read_json


def run_members(run_dir: Path) -> list[Path]:
    """The run directories whose models make a run's prediction (the folds of a ``cv`` run, or itself)."""
    meta_path = Path(run_dir) / "model.json"
    if not meta_path.exists():
        raise LiverscopeError(f"{run_dir}: no model.json — not a trained liverscope run directory")
    meta = read_json(meta_path)
    members = [Path(run_dir) / m for m in meta.get("ensemble") or []]
    return members or [Path(run_dir)]


def ensemble_predict_logits(run_dir: Path, paths: list[Path], device: str = "auto") -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Logits of a run (mean over ensemble members) for files; returns ``(logits, ok_paths, skipped)``."""
    from liverscope.predict import Predictor
    from liverscope.train import ensemble_logits

    all_logits, ok, skipped = [], None, []
    for member in run_members(run_dir):
        pred = Predictor.from_run(member, device=device, calibrated=False)
        results = list(pred.predict_paths(paths))
        if ok is None:
            skipped = [(r.path, r.error) for r in results if r.error]
            ok = [r.path for r in results if not r.error]
        all_logits.append(np.array([r.logits for r in results if not r.error]))
    return ensemble_logits(all_logits), ok or [], skipped


def evaluate_on_data(run_dir: str | Path, data: str | Path, name: str | None = None, device: str = "auto") -> Path:
    """Score a run on labelled data and write ``RUN_DIR/eval/<name>/``.

    Args:
        run_dir: trained run (``train`` or ``cv``).
        data: class-per-folder tree or CSV manifest; its labels must be among the run's labels.
        name: output sub-folder (default: the data folder's name).
        device: inference device.

    Returns:
        The output folder.
    """
    from liverscope.data.audit import audit_dataset, write_audit
    from liverscope.data.datasets import load_samples
    from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
    from liverscope.evaluate.report import plot_confusion_matrix, write_report
    from liverscope.predict import softmax
    from liverscope.train import write_predictions_csv

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "model.json")
    labels = list(meta["labels"])
    samples, classes = load_samples(data)
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise LiverscopeError(f"{data}: labels {unknown} are not among the model's labels {labels}")
    out = run_dir / "eval" / (name or Path(data).stem)
    out.mkdir(parents=True, exist_ok=True)
    audit = audit_dataset(samples)
    write_audit(audit, out)
    source_of = {r["path"]: r.get("source") for r in audit["files"]}
    logits, ok, skipped = ensemble_predict_logits(run_dir, [s.path for s in samples], device)
    by_path = {str(s.path): s for s in samples}
    kept = [by_path[p] for p in ok]
    for s in kept:
        s.source = s.source or source_of.get(str(s.path))
    index = {c: i for i, c in enumerate(labels)}
    y = np.array([index[s.label] for s in kept])
    temperature = float(meta.get("temperature") or 1.0)
    probs = softmax(logits, temperature)
    metrics: dict = {"data": str(data), "n_skipped": len(skipped), "skipped": skipped, "class_names": labels}
    metrics["test"] = compute_metrics(y, probs, labels, ci=True)
    sources = [s.source or "unknown" for s in kept]
    if len(set(sources)) > 1:
        metrics["test_by_source"] = metrics_by_group(y, probs, sources, labels)
    write_predictions_csv(out / "predictions_test.csv", kept, logits, labels, temperature)
    plot_confusion_matrix(np.asarray(metrics["test"]["confusion_matrix"]), labels, out / "confusion_matrix.png")
    atomic_write_json(out / "metrics.json", metrics)
    for f in ("model.json", "config.yaml"):
        if (run_dir / f).exists():
            (out / f).write_bytes((run_dir / f).read_bytes())
    write_report(out)
    return out
