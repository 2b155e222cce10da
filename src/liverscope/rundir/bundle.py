"""What a report (and the app's model card) shows of a run directory: :class:`RunData` reads every file
of the run (names and readers from :mod:`liverscope.rundir`, the run-directory contract), tolerating
missing or damaged files: each costs its section, never the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from liverscope.data.datasets import describe_data
from liverscope.rundir import (
    AUDIT_JSON,
    CONFIG,
    CV_FOLDS,
    FOLDS,
    GALLERY,
    HISTORY,
    METRICS,
    MODEL_META,
    PREDICTIONS_TEST,
    SPLIT,
    read_gallery,
    read_predictions,
)
from liverscope.utils import read_csv_rows, read_json


@dataclass
class RunData:
    """The contents of a run directory that the report uses; missing files are ``None``/empty.

    Attributes:
        run_dir: the directory.
        metrics: ``metrics.json``.
        model: ``model.json``.
        config_text: ``config.yaml`` as text.
        audit: ``audit.json``.
        history: ``{"": rows}`` from ``history.csv``, or ``{"fold0": rows, ...}`` from the folds.
        split: rows of ``split.csv``.
        predictions: ``{"y", "probs", "logits" (or None), "sources"}`` from ``predictions_test.csv``.
        folds: rows of ``cv_folds.csv`` (or ``metrics["folds"]``).
        gallery: ``[(png path, caption, flagged)]`` of ``cam_gallery/`` (:func:`liverscope.rundir.read_gallery`).
        class_names: the labels.
        problems: files that exist but could not be read, with the reason.
        plot_dir: where the report writes its PNG plots (default: the run directory; ``evaluate
            --out`` points it elsewhere, so a read-only run can be reported on).
    """

    run_dir: Path
    metrics: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    config_text: str | None = None
    audit: dict | None = None
    history: dict[str, list[dict]] = field(default_factory=dict)
    split: list[dict] | None = None
    predictions: dict | None = None
    folds: list[dict] | None = None
    gallery: list[tuple[Path, str, bool | None]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    plot_dir: Path | None = None

    @property
    def plots(self) -> Path:
        """The folder of the report's PNG plots."""
        return self.plot_dir or self.run_dir

    @property
    def training_data(self) -> dict | None:
        """What the model was trained on (:func:`liverscope.data.datasets.describe_data`): ``model.json``'s
        ``training_data``, recorded at training; for a run trained before liverscope recorded it, the data
        path of ``config.yaml`` with the images and sources of ``split.csv``; ``None`` when neither says."""
        if self.model.get("training_data"):
            return self.model["training_data"]
        try:
            path = ((yaml.safe_load(self.config_text or "") or {}).get("data") or {}).get("path")
        except (yaml.YAMLError, AttributeError):
            path = None
        if not path:
            return None
        return describe_data(path, [r.get("source") for r in self.split] if self.split else None)

    @property
    def test(self) -> dict:
        return self.metrics.get("test") or {}

    @property
    def temperature(self) -> float | None:
        t = self.model.get("temperature") or self.metrics.get("temperature")
        return float(t) if t else None

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunData":
        run_dir = Path(run_dir)
        data = cls(run_dir)

        def attempt(name: str, fn: Callable[[Path], Any]) -> Any:
            path = run_dir / name
            if not path.exists():
                return None
            try:
                return fn(path)
            except Exception as exc:  # a damaged file costs its section, not the report
                data.problems.append(f"{name}: {type(exc).__name__}: {exc}")
                return None

        data.metrics = attempt(METRICS, read_json) or {}
        data.model = attempt(MODEL_META, read_json) or {}
        data.config_text = attempt(CONFIG, lambda p: p.read_text(encoding="utf-8"))
        data.audit = attempt(AUDIT_JSON, read_json)
        data.split = attempt(SPLIT, read_csv_rows)
        data.folds = attempt(CV_FOLDS, read_csv_rows) or data.metrics.get("folds") or None
        own = attempt(HISTORY, read_csv_rows)
        if own:
            data.history = {"": own}
        elif (run_dir / FOLDS).is_dir():
            for fold_hist in sorted((run_dir / FOLDS).glob(f"*/{HISTORY}"), key=lambda p: p.parent.name):
                rows = attempt(str(fold_hist.relative_to(run_dir)), read_csv_rows)
                if rows:
                    data.history[fold_hist.parent.name] = rows
        data.class_names = [
            str(c)
            for c in (
                data.model.get("labels")
                or data.metrics.get("class_names")
                or data.test.get("class_names")
                or []
            )
        ]
        data.predictions = attempt(PREDICTIONS_TEST, data._read_predictions)
        data.gallery = attempt(GALLERY, read_gallery) or []
        return data

    def _read_predictions(self, path: Path) -> dict | None:
        pred = read_predictions(path, self.class_names or None)
        if not pred.paths:
            return None
        if not self.class_names:
            self.class_names = pred.class_names
        return {"y": pred.y, "probs": pred.probs, "logits": pred.logits, "sources": pred.sources}


__all__ = ["RunData"]
