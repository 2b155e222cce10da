"""What a filed report says: one exam's key, its images (each with its overlay, class probabilities,
endpoints and out-of-distribution flag), the exam's one answer, the model card and the decision-support
notice. Plain, typed, read-only dataclasses: the PDF (:mod:`.pdf`) and the DICOM objects (:mod:`.dicom`)
are drawn from an :class:`ExamReport` and nothing else, so both say the same thing.

An :class:`ExamReport` is built (:mod:`.build`) from files scored now by a run (``Predictor`` results,
``liverscope pacs``) or from an exam of the records store (``liverscope records report``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from liverscope import __version__, rundir
from liverscope.evaluate.notices import DECISION_SUPPORT, PHANTOMS, is_phantoms, trained_on
from liverscope.rundir.bundle import RunData

#: The test figures a model card states, in this order, with their names as printed.
FIGURES = (
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_auc", "macro AUC"),
    ("quadratic_kappa", "quadratic-weighted kappa"),
    ("macro_f1", "macro F1"),
    ("accuracy", "accuracy"),
)


@dataclass(frozen=True)
class ReportImage:
    """One image of the exam as the report shows it.

    Attributes:
        index: its number in the report (1, 2, ...): images are named by number and digest, never by
            file name (a file name may carry a patient's name).
        sha256: SHA-256 of the image's bytes.
        source: the file it was read from, or ``None`` (an upload, or a file no longer there).
        data: its bytes when no file holds them (an upload, a study pulled from a PACS), else ``None``.
        overlay_png: the Grad-CAM heatmap with every segmenter's outline, on the model input, as PNG
            (:func:`liverscope.segment.panels.image_panels`' ``combined``), or ``None`` (``overlay_note`` says why).
        label: the model's class for this image.
        probabilities: calibrated probability of every class, in the model's label order.
        endpoints: ≥F2 / ≥F3 / F4 for METAVIR labels, else ``None``.
        ood_score: out-of-distribution score (``None``: the run has no detector).
        ood: flagged as unlike the training images (not assessable).
    """

    index: int
    sha256: str
    source: str | None
    data: bytes | None
    overlay_png: bytes | None
    label: str | None
    probabilities: dict[str, float]
    endpoints: dict[str, float] | None
    ood_score: float | None
    ood: bool | None
    overlay_note: str | None = None

    @property
    def name(self) -> str:
        return f"image {self.index} ({self.sha256[:12]})"


@dataclass(frozen=True)
class ExamSummary:
    """The exam's one answer (:func:`liverscope.records.views.exam_answer`: mean log-probability of the
    unflagged images, renormalised); ``label`` ``None`` when every image was flagged."""

    label: str | None
    probabilities: dict[str, float]
    endpoints: dict[str, float] | None
    n_images: int
    n_used: int
    n_flagged: int
    n_agree: int
    spread: float | None
    method: str

    def agreement(self) -> str:
        """``3 of 3 images agree (spread 0.04); 1 flagged image left out``."""
        text = f"{self.n_agree} of {self.n_used} image{'s' if self.n_used != 1 else ''} agree"
        if self.spread is not None and self.n_used > 1:
            text += f" (spread of its probability {self.spread:.2f})"
        if self.n_flagged:
            text += f"; {self.n_flagged} flagged image{'s' if self.n_flagged != 1 else ''} left out"
        return text


@dataclass(frozen=True)
class ModelCard:
    """What the report says of the model: which run and weights, what it was trained on, how well it did
    on held-out data (with the number of images and 95% intervals), and the versions."""

    run: str
    architecture: str
    model_id: str
    labels: list[str]
    trained_on: str
    phantoms: bool
    figures: list[str]
    figures_source: str
    calibration: str
    trained_with: str
    reported_with: str = __version__

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "ModelCard":
        """The card of a run directory (its ``model.json``, ``metrics.json`` and recorded training data)."""
        data = RunData.load(Path(run_dir))
        meta = data.model
        arch = meta.get("architecture") or {}
        name = arch.get("name", "?") if isinstance(arch, dict) else str(arch)
        if meta.get("ensemble"):
            name = f"ensemble of {len(meta['ensemble'])} fold models ({name})"
        figures, source = honest_figures(data.metrics)
        t = meta.get("temperature")
        return cls(
            run=Path(run_dir).name,
            architecture=name,
            model_id=(rundir.weights_sha256(run_dir) or "?")[:12],
            labels=list(meta.get("labels", [])),
            trained_on=trained_on(data.training_data),
            phantoms=is_phantoms(data.training_data),
            figures=figures,
            figures_source=source,
            calibration=f"temperature {t:.2f}" if isinstance(t, (int, float)) and t != 1.0 else "none",
            trained_with=f"liverscope {meta.get('liverscope_version', '?')}, trained {str(meta.get('created', '?'))[:10]}",
        )

    @classmethod
    def from_analysis(cls, a) -> "ModelCard":
        """What a stored analysis says of its model (:class:`liverscope.records.views.AnalysisRecord`), when
        its run directory is not at hand: no training data and no figures can be read."""
        missing = f"the run directory ({a.run_dir or 'not recorded'}) is not at hand"
        return cls(
            run=Path(a.run_dir).name if a.run_dir else a.model_id,
            architecture=a.model_id,
            model_id=f"fingerprint {a.run_fingerprint[:12]}",
            labels=list(a.labels),
            trained_on=f"Trained on: not known here ({missing}).",
            phantoms=False,
            figures=[],
            figures_source=missing,
            calibration=f"temperature {a.temperature:.2f}" if a.temperature != 1.0 else "none",
            trained_with=f"analysed with liverscope {a.liverscope_version}",
        )

    @property
    def notices(self) -> list[str]:
        """The notices printed with the card: where the figures come from when they are phantoms'."""
        return [PHANTOMS] if self.phantoms else []


def honest_figures(metrics: dict) -> tuple[list[str], str]:
    """The headline figures of held-out images (a run's test split, else a cv run's out-of-fold
    predictions) as lines ``balanced accuracy 0.55 (95% CI 0.48-0.62)``, and where they come from.
    Validation figures are not offered: they chose the checkpoint and the temperature."""
    for key, where in (
        ("test", "held-out test images"),
        ("oof", "out-of-fold predictions of cross-validation"),
    ):
        m = metrics.get(key) or {}
        if isinstance(m.get("n"), int):
            ci = m.get("ci") or {}
            lines = []
            for k, name in FIGURES:
                if isinstance(m.get(k), (int, float)):
                    lo_hi = (ci.get(k) or {}).get("ci95")
                    lines.append(
                        f"{name} {m[k]:.3f}" + (f" (95% CI {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else "")
                    )
            for ep, row in (m.get("endpoints") or {}).items():
                if isinstance(row, dict) and isinstance(row.get("auc"), (int, float)):
                    ci95 = row.get("auc_ci95")
                    lines.append(
                        f"AUC {ep} {row['auc']:.3f}"
                        + (f" (95% CI {ci95[0]:.3f}-{ci95[1]:.3f})" if ci95 else "")
                    )
            return lines, f"{where}, n = {m['n']}"
    return [], "no held-out figures recorded in this run"


@dataclass(frozen=True)
class ExamReport:
    """Everything one exam's report shows (module docstring)."""

    key: str
    images: list[ReportImage]
    answer: ExamSummary
    card: ModelCard
    review: str | None = None
    notice: str = DECISION_SUPPORT
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def labels(self) -> list[str]:
        return self.card.labels or (list(self.images[0].probabilities) if self.images else [])


__all__ = ["ExamReport", "ExamSummary", "ModelCard", "ReportImage", "honest_figures", "FIGURES"]
