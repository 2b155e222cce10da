"""What the store hands out: plain, typed, read-only records of an exam (no database session behind
them), and the exam's one answer.

The exam's answer (:func:`exam_answer`) pools its images' calibrated probabilities:

* each image counts once, by its latest analysis with the exam's latest model (run fingerprint): an
  exam analysed again with another model is answered by that model alone, never a mix;
* images flagged as unlike the training data (OOD) are left out and counted (``n_flagged``); with
  every image flagged there is no answer (``label`` ``None``);
* the pooled probabilities are the mean of the images' log-probabilities, renormalised (the normalised
  geometric mean: the answer a model would give if the images were independent views of one liver,
  each with equal weight); probabilities are floored at 1e-6 so one image's near-zero cannot veto a
  class by itself;
* ``n_agree``: images whose own label is the exam's; ``spread``: the standard deviation over the images
  of their probability of the exam's label (0 for one image), with its range (``p_min``, ``p_max``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

import numpy as np

from liverscope.labels import endpoint_probabilities

#: floor of a probability before its logarithm is taken (see the module docstring)
PROB_FLOOR = 1e-6
METHOD = (
    "mean log-probability over the exam's unflagged images (latest analysis each, latest model), renormalised"
)


@dataclass(frozen=True)
class AnalysisRecord:
    """One analysis of one image: the model that made it and everything it answered."""

    id: int
    image_id: int
    model_id: str
    run_dir: str | None
    run_fingerprint: str
    liverscope_version: str
    backend: str
    precision: str | None
    tta: str
    temperature: float
    labels: list[str]
    probabilities: dict[str, float]  # calibrated, every class, in the model's label order
    label: str
    endpoints: dict[str, float] | None  # "≥F2", "≥F3", "F4" for METAVIR labels
    ood_score: float | None
    ood: bool | None
    frames: int
    user: str | None
    created_at: datetime


@dataclass(frozen=True)
class ImageRecord:
    """One image of an exam and its analyses (oldest first; :attr:`latest` is the newest)."""

    id: int
    sha256: str
    size: int
    name: str
    path: str | None  # the file predict read; None for an upload
    origin: str  # predict, app, api
    source: str | None  # acquisition source, when known
    frames: int
    created_at: datetime
    analyses: list[AnalysisRecord] = field(default_factory=list)

    @property
    def latest(self) -> AnalysisRecord | None:
        return self.analyses[-1] if self.analyses else None


@dataclass(frozen=True)
class ReviewRecord:
    """A clinician's verdict on an exam: ``agree`` (with the answer) or ``correct`` (another label)."""

    id: int
    verdict: str
    label: str
    answer_label: str | None
    run_fingerprint: str | None
    note: str | None
    reviewer: str | None
    created_at: datetime


@dataclass(frozen=True)
class ExamAnswer:
    """The exam's one answer (module docstring); ``label`` is ``None`` when no image could be used."""

    label: str | None
    probabilities: dict[str, float]
    endpoints: dict[str, float] | None
    n_images: int  # images with an analysis by the exam's model
    n_used: int
    n_flagged: int
    n_agree: int  # used images whose own label is the exam's
    spread: float | None  # std over used images of their probability of the exam's label
    p_min: float | None
    p_max: float | None
    model_id: str | None
    run_fingerprint: str | None
    method: str = METHOD


@dataclass(frozen=True)
class ExamRecord:
    """An exam: its pseudonymous key, images with their analyses, reviews (oldest first) and answer."""

    id: int
    key: str
    key_source: str
    patient: str | None
    created_at: datetime
    images: list[ImageRecord]
    reviews: list[ReviewRecord]
    answer: ExamAnswer

    @property
    def review(self) -> ReviewRecord | None:
        """The latest review (the one that counts), or ``None``."""
        return self.reviews[-1] if self.reviews else None

    @property
    def reviewed_label(self) -> str | None:
        return self.review.label if self.review else None

    @property
    def flagged(self) -> bool:
        return self.answer.n_flagged > 0

    @property
    def disagreement(self) -> bool:
        """The reviewer's label differs from the answer, or the images do not all agree with it."""
        if self.review is not None and self.review.label != self.answer.label:
            return True
        return self.answer.label is not None and self.answer.n_agree < self.answer.n_used

    @property
    def last_analysed(self) -> datetime | None:
        times = [a.created_at for im in self.images for a in im.analyses]
        return max(times) if times else None


def exam_answer(images: Sequence[ImageRecord]) -> ExamAnswer:
    """The exam's one answer from its images' analyses (see the module docstring)."""
    analyses = [a for im in images for a in im.analyses]
    if not analyses:
        return ExamAnswer(None, {}, None, 0, 0, 0, 0, None, None, None, None, None)
    newest = max(analyses, key=lambda a: (a.created_at, a.id))
    latest = {}
    for a in analyses:  # each image's latest analysis by the exam's latest model
        if a.run_fingerprint == newest.run_fingerprint and (
            a.image_id not in latest
            or (a.created_at, a.id) > (latest[a.image_id].created_at, latest[a.image_id].id)
        ):
            latest[a.image_id] = a
    rows = list(latest.values())
    used = [a for a in rows if not a.ood]
    labels = list(newest.labels)
    if not used:
        return ExamAnswer(
            None,
            {},
            None,
            len(rows),
            0,
            len(rows),
            0,
            None,
            None,
            None,
            newest.model_id,
            newest.run_fingerprint,
        )
    probs = np.array([[a.probabilities[c] for c in labels] for a in used], dtype=np.float64)
    pooled = pool_probabilities(probs)
    label = labels[int(np.argmax(pooled))]
    own = probs[:, labels.index(label)]
    answer = {c: float(v) for c, v in zip(labels, pooled)}
    return ExamAnswer(
        label,
        answer,
        endpoint_probabilities(answer),
        len(rows),
        len(used),
        len(rows) - len(used),
        sum(a.label == label for a in used),
        float(own.std()),
        float(own.min()),
        float(own.max()),
        newest.model_id,
        newest.run_fingerprint,
    )


def pool_probabilities(probs: np.ndarray) -> np.ndarray:
    """Rows of class probabilities (images x classes) → one distribution: the mean of the floored
    log-probabilities, renormalised (softmax of the mean log-probability)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, 1.0)).mean(axis=0)
    e = np.exp(logp - logp.max())
    return e / e.sum()


__all__ = [
    "AnalysisRecord",
    "ImageRecord",
    "ReviewRecord",
    "ExamAnswer",
    "ExamRecord",
    "exam_answer",
    "pool_probabilities",
    "METHOD",
    "PROB_FLOOR",
]
