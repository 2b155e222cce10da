"""Building an :class:`~liverscope.reports.content.ExamReport`: from files scored now by a run
(:func:`score_exam`: ``liverscope pacs``, the app), or from an exam of the records store
(:func:`from_exam`: ``liverscope records report``), whose numbers are the stored ones.

The overlay of each image is the app's picture (:func:`liverscope.segment.panels.image_panels`): the
Grad-CAM heatmap of the image's class with every segmenter's outline, on the model input, a DICOM's
border blanked (the patient text ultrasound machines burn into it). The exam's answer is the records
store's rule (:func:`liverscope.records.views.exam_answer`), for scored files as for stored exams.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from liverscope.data.io import sniff_format
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.inference.results import Result
from liverscope.records.views import AnalysisRecord, ExamAnswer, ExamRecord, ImageRecord, exam_answer
from liverscope.reports.content import ExamReport, ExamSummary, ModelCard, ReportImage
from liverscope.segment.panels import image_panels

#: Said instead of an overlay when the image's file is gone or changed since it was analysed.
NO_FILE = "overlay not drawn: the image's file is no longer where it was read, or its content changed"
#: Said instead of an overlay when the run at hand is not the model that made the analysis.
OTHER_MODEL = "overlay not drawn: the run at hand is not the model that made this analysis"


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def overlay_png(predictor, name: str, data: bytes, label: str) -> bytes | None:
    """The report's picture of one image (module docstring) as PNG, or ``None`` without a heatmap."""
    img, model_input = predictor.load(name, data)
    panels = image_panels(predictor, img, model_input, label, sniff_format(data) == "dicom")
    return None if panels.combined is None else png_bytes(panels.combined)


def score_exam(
    predictor, key: str, items: Sequence[tuple[str, bytes]], sources: Sequence[str | None] | None = None
) -> tuple[ExamReport, list[tuple[str, str]]]:
    """Score an exam's images now and build its report.

    Args:
        predictor: a :class:`~liverscope.inference.predict.Predictor` loaded from a run directory.
        key: the exam's pseudonymous key.
        items: ``(name, bytes)`` of each image (the name is used in error messages only).
        sources: the file each came from (``None``: keep the bytes in the report, e.g. for DICOM references).

    Returns:
        ``(report, skipped)``: skipped lists ``(name, reason)`` of files that could not be read.
    """
    scored, skipped = [], []
    for i, (name, data) in enumerate(items):
        try:
            img, model_input = predictor.load(name, data)
        except ImageReadError as exc:
            skipped.append((name, f"{exc.reason} ({exc.fix})"))
            continue
        r = predictor.predict_arrays([model_input], [name])[0]
        panels = image_panels(predictor, img, model_input, r.label, sniff_format(data) == "dicom")
        source = sources[i] if sources is not None else None
        scored.append(
            Scored(
                r,
                hashlib.sha256(data).hexdigest(),
                panels.combined,
                source,
                None if source else data,
                "; ".join(panels.notes) or None,
            )
        )
    return report_of(key, scored, predictor.labels, predictor.run_dir), skipped


@dataclass(frozen=True)
class Scored:
    """One image scored now: its result, digest, overlay (RGB, or ``None``), and file or bytes."""

    result: Result
    sha256: str
    overlay: np.ndarray | None
    source: str | None = None
    data: bytes | None = None
    note: str | None = None


def report_of(key: str, scored: Sequence[Scored], labels: Sequence[str], run_dir: str | Path) -> ExamReport:
    """The report of images scored now (by :func:`score_exam`, or by the app), answered by the store's rule."""
    images = [
        ReportImage(
            k + 1,
            s.sha256,
            s.source,
            s.data,
            None if s.overlay is None else png_bytes(s.overlay),
            s.result.label,
            dict(s.result.probs),
            s.result.endpoints,
            s.result.ood_score,
            s.result.ood,
            s.note,
        )
        for k, s in enumerate(scored)
    ]
    answer = exam_answer([_as_record(i, s.result, labels) for i, s in enumerate(scored)])
    return ExamReport(key, images, summary(answer), ModelCard.from_run(run_dir))


def _as_record(i: int, r, labels: Sequence[str]) -> ImageRecord:
    """A result scored now, in the store's shape, so that its answer is the store's rule."""
    now = datetime.now(timezone.utc)
    a = AnalysisRecord(
        i,
        i,
        "",
        None,
        "now",
        "",
        "",
        r.precision,
        "",
        1.0,
        list(labels),
        dict(r.probs),
        r.label,
        r.endpoints,
        r.ood_score,
        r.ood,
        r.frames,
        None,
        now,
    )
    return ImageRecord(i, "", 0, "", None, "report", None, r.frames, now, [a])


def summary(answer: ExamAnswer) -> ExamSummary:
    """The report's view of the store's exam answer."""
    return ExamSummary(
        answer.label,
        dict(answer.probabilities),
        answer.endpoints,
        answer.n_images,
        answer.n_used,
        answer.n_flagged,
        answer.n_agree,
        answer.spread,
        answer.method,
    )


def from_exam(exam: ExamRecord, predictor=None, fingerprint: str | None = None) -> ExamReport:
    """The report of a stored exam: each image's latest analysis by the exam's model, as stored.

    Args:
        exam: :meth:`liverscope.records.store.Store.get_exam`.
        predictor: the run that made the analyses, to draw the overlays (``None``: no overlays). An image
            whose file is gone or changed, or an analysis made by another model than ``predictor``'s
            (``fingerprint``: its run fingerprint), gets a note instead of an overlay.
        fingerprint: :func:`liverscope.records.runinfo.run_fingerprint` of the predictor's run.
    """
    used = exam.answer.run_fingerprint
    images = []
    for im in exam.images:
        a = next((x for x in reversed(im.analyses) if x.run_fingerprint == used), None)
        if a is None:
            continue
        png, note, data = None, None, None
        if predictor is not None:
            png, note = _stored_overlay(predictor, im, a, fingerprint)
        images.append(
            ReportImage(
                len(images) + 1,
                im.sha256,
                im.path,
                data,
                png,
                a.label,
                dict(a.probabilities),
                a.endpoints,
                a.ood_score,
                a.ood,
                note,
            )
        )
    review = None
    if exam.review is not None:
        r = exam.review
        review = f"{'agreed' if r.verdict == 'agree' else 'corrected to ' + r.label} by {r.reviewer or 'a reviewer'} on {r.created_at:%Y-%m-%d}"
    return ExamReport(exam.key, images, summary(exam.answer), _card(exam, predictor), review)


def _stored_overlay(
    predictor, im: ImageRecord, a: AnalysisRecord, fingerprint: str | None
) -> tuple[bytes | None, str | None]:
    if fingerprint is not None and fingerprint != a.run_fingerprint:
        return None, OTHER_MODEL
    try:
        data = Path(im.path).read_bytes() if im.path else None
    except OSError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != im.sha256:
        return None, NO_FILE
    return overlay_png(predictor, im.name, data, a.label), None


def _card(exam: ExamRecord, predictor) -> ModelCard:
    """The model card: from the run at hand, else from the run directory the analyses recorded, else
    from what the analyses themselves say of their model."""
    if predictor is not None:
        return ModelCard.from_run(predictor.run_dir)
    made = [a for im in exam.images for a in im.analyses if a.run_fingerprint == exam.answer.run_fingerprint]
    run_dir = next((Path(a.run_dir) for a in made if a.run_dir), None)
    if run_dir is not None and run_dir.is_dir():
        return ModelCard.from_run(run_dir)
    if not made:
        raise LiverscopeError(f"exam {exam.key} has no analysis to report")
    return ModelCard.from_analysis(made[-1])


__all__ = [
    "NO_FILE",
    "OTHER_MODEL",
    "Scored",
    "from_exam",
    "overlay_png",
    "png_bytes",
    "report_of",
    "score_exam",
    "summary",
]
