"""The exam-records store: open a database, record analyses, record reviews, read exams back.

The read side hands out plain dataclasses (:mod:`liverscope.records.views`) with no database session
behind them, so a report, the app or a script can use them after the store is closed::

    from liverscope.records import open_store
    with open_store("records.sqlite") as store:         # or a URL; None: $LIVERSCOPE_DB or the user's data folder
        exam = store.get_exam("st-0123456789abcdef")
        exam.answer.label, exam.answer.probabilities     # the exam's one answer
        for image in exam.images:
            image.latest.probabilities, image.latest.ood  # each image's latest analysis
        exam.review                                      # the latest review, or None

Every write is one short transaction (:func:`~liverscope.records.engine.retrying`): an analysis is
either wholly recorded or not at all, and what was committed survives a crash of the writer.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload

from liverscope.errors import LiverscopeError
from liverscope.inference.results import Result
from liverscope.records.engine import ENV_DB, database_url, make_engine, migrate, retrying, writer
from liverscope.records.models import Analysis, Exam, Image, Review
from liverscope.records.views import AnalysisRecord, ExamRecord, ImageRecord, ReviewRecord, exam_answer

VERDICTS = ("agree", "correct")
KEY_SOURCES = ("study", "folder", "group", "file", "user")


@dataclass(frozen=True)
class ExamKey:
    """Which exam an image belongs to: a pseudonymous ``key``, how it was made (:data:`KEY_SOURCES`),
    and the patient's pseudonym (``pt-``...) when a DICOM header named one."""

    key: str
    key_source: str = "user"
    patient: str | None = None


@dataclass(frozen=True)
class ImageInput:
    """The image an analysis was made of: its bytes' SHA-256 and size, its name, the file it was read
    from (``None`` for an upload), where it came from (``predict``, ``app``, ``api``), its acquisition
    source when known, and its frame count."""

    name: str
    sha256: str
    size: int
    path: str | None = None
    origin: str = "api"
    source: str | None = None
    frames: int = 1


@dataclass(frozen=True)
class RunInfo:
    """The model an analysis was made with (:func:`liverscope.records.runinfo.run_info` builds it from a Predictor)."""

    model_id: str
    run_fingerprint: str
    liverscope_version: str
    backend: str
    tta: str
    temperature: float
    run_dir: str | None = None


def check_key(key: str) -> str:
    """An exam key as typed: stripped, non-empty, at most 128 characters."""
    k = (key or "").strip()
    if not k or len(k) > 128:
        raise LiverscopeError(
            f"exam key {key!r}: give 1 to 128 characters (a pseudonymous key, never a name or a patient ID)"
        )
    return k


def _utc(t: datetime) -> datetime:
    return (
        t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    )  # SQLite keeps no time zone: the store writes UTC


class Store:
    """A records database (use :func:`open_store`). Thread-safe: each call takes its own session."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._writer = writer(engine)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def record(
        self, exam: ExamKey, image: ImageInput, result: Result, run: RunInfo, user: str | None = None
    ) -> int:
        """Record one analysis (one transaction); returns its id. A result without probabilities (a
        skipped file) is refused: nothing was analysed."""
        if result.error or not result.probs:
            raise LiverscopeError(
                f"{result.path}: not analysed ({result.error or 'no probabilities'}), nothing to record"
            )
        key = check_key(exam.key)
        user = user if user is not None else _os_user()

        def work() -> int:
            with Session(self._writer) as s, s.begin():
                ex = s.scalar(select(Exam).where(Exam.key == key))
                if ex is None:
                    ex = Exam(key=key, key_source=exam.key_source, patient=exam.patient)
                    s.add(ex)
                    s.flush()
                elif exam.patient and not ex.patient:
                    ex.patient = exam.patient
                im = s.scalar(select(Image).where(Image.exam_id == ex.id, Image.sha256 == image.sha256))
                if im is None:
                    im = Image(
                        exam_id=ex.id,
                        sha256=image.sha256,
                        size=image.size,
                        name=image.name,
                        path=image.path,
                        origin=image.origin,
                        source=image.source,
                        frames=image.frames,
                    )
                    s.add(im)
                    s.flush()
                a = _analysis(result, run, im.id, ex.id, user)
                s.add(a)
                s.flush()
                return a.id

        return retrying(work, f"recording {image.name} in {self.url}")

    def review(
        self,
        key: str,
        label: str | None = None,
        agree: bool = False,
        note: str | None = None,
        reviewer: str | None = None,
    ) -> ReviewRecord:
        """Record a review of exam ``key``: ``agree=True`` (the answer is right) or ``label`` (the right
        label). Appended beside the analyses; earlier reviews stay."""
        if agree == (label is not None):
            raise LiverscopeError(
                "a review either agrees with the exam's answer (--agree) or gives the right label (--label L), not both or neither"
            )
        exam = self.get_exam(key)
        answer = exam.answer
        if agree and answer.label is None:
            raise LiverscopeError(
                f"exam {key}: has no answer to agree with (every image flagged or none analysed); give --label"
            )
        labels = _exam_labels(exam)
        if label is not None and labels and label not in labels:
            raise LiverscopeError(
                f"exam {key}: label {label!r} is not one of the model's labels ({', '.join(labels)})"
            )
        fields = dict(
            exam_id=exam.id,
            verdict="agree" if agree else "correct",
            label=answer.label if agree else label,
            answer_label=answer.label,
            run_fingerprint=answer.run_fingerprint,
            note=(note or None),
            reviewer=reviewer or _os_user(),
        )

        def work() -> ReviewRecord:
            with Session(self._writer) as s, s.begin():
                rv = Review(**fields)
                s.add(rv)
                s.flush()
                return _review_record(rv)

        return retrying(work, f"recording the review of {key} in {self.url}")

    # ------------------------------------------------------------------ reads
    def get_exam(self, key: str) -> ExamRecord:
        """The exam with this key; a :class:`LiverscopeError` naming the database when there is none."""
        key = check_key(key)
        with Session(self.engine) as s:
            ex = s.scalar(_exam_query().where(Exam.key == key))
            if ex is None:
                raise LiverscopeError(
                    f"no exam {key!r} in {self.url} (`liverscope records list` shows the keys)"
                )
            return _exam_record(ex)

    def find_exams(
        self,
        search: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        flagged: bool | None = None,
        disagreement: bool | None = None,
        reviewed: bool | None = None,
        limit: int | None = 200,
    ) -> list[ExamRecord]:
        """Exams, newest first: ``search`` in the key (or the patient pseudonym), created in ``[since,
        until)``, and those with (``True``) or without (``False``) a flagged image, a disagreement
        (:attr:`ExamRecord.disagreement`) or a review; at most ``limit`` (``None``: all)."""
        q = _exam_query().order_by(Exam.created_at.desc(), Exam.id.desc())
        if search:
            like = f"%{search.strip()}%"
            q = q.where(Exam.key.ilike(like) | Exam.patient.ilike(like))
        if since is not None:
            q = q.where(Exam.created_at >= since)
        if until is not None:
            q = q.where(Exam.created_at < until)
        out = []
        with Session(self.engine) as s:
            for ex in s.scalars(q):
                rec = _exam_record(ex)
                if (
                    (flagged is None or rec.flagged == flagged)
                    and (disagreement is None or rec.disagreement == disagreement)
                    and (reviewed is None or (rec.review is not None) == reviewed)
                ):
                    out.append(rec)
                    if limit is not None and len(out) >= limit:
                        break
        return out

    def count(self) -> dict[str, int]:
        """Rows per table: ``{"exams", "images", "analyses", "reviews"}``."""
        with Session(self.engine) as s:
            return {
                t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (Exam, Image, Analysis, Review)
            }


def open_store(db: str | Path | None = None) -> Store:
    """Open (and create or migrate) the records database ``db``: a path, a SQLAlchemy URL, or ``None``
    (``$LIVERSCOPE_DB``, else ``records.sqlite`` in the user's data folder); see :mod:`liverscope.records.engine`."""
    url = database_url(db)
    engine = make_engine(url)
    try:
        migrate(engine)
    except LiverscopeError:
        engine.dispose()
        raise
    except Exception as exc:  # a server that does not answer, a file that is no database ...
        engine.dispose()
        raise LiverscopeError(
            f"cannot open the records database {make_url(url).render_as_string(hide_password=True)}: "
            f"{getattr(exc, 'orig', exc)} (check --db, or ${ENV_DB})"
        ) from None
    return Store(engine)


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container: the record simply has none
        return None


def _analysis(r: Result, run: RunInfo, image_id: int, exam_id: int, user: str | None) -> Analysis:
    labels = list(r.probs)
    return Analysis(
        image_id=image_id,
        exam_id=exam_id,
        model_id=run.model_id,
        run_dir=run.run_dir,
        run_fingerprint=run.run_fingerprint,
        liverscope_version=run.liverscope_version,
        backend=run.backend,
        precision=r.precision,
        tta=run.tta,
        temperature=float(run.temperature),
        labels=labels,
        probabilities=[float(r.probs[c]) for c in labels],
        label=r.label,
        endpoints=r.endpoints,
        ood_score=None if r.ood_score is None else float(r.ood_score),
        ood=r.ood,
        frames=int(r.frames),
        user=user,
    )


def _exam_query():
    return select(Exam).options(
        selectinload(Exam.images).selectinload(Image.analyses), selectinload(Exam.reviews)
    )


def _analysis_record(a: Analysis) -> AnalysisRecord:
    return AnalysisRecord(
        a.id,
        a.image_id,
        a.model_id,
        a.run_dir,
        a.run_fingerprint,
        a.liverscope_version,
        a.backend,
        a.precision,
        a.tta,
        a.temperature,
        list(a.labels),
        dict(zip(a.labels, a.probabilities)),
        a.label,
        a.endpoints,
        a.ood_score,
        a.ood,
        a.frames,
        a.user,
        _utc(a.created_at),
    )


def _review_record(r: Review) -> ReviewRecord:
    return ReviewRecord(
        r.id, r.verdict, r.label, r.answer_label, r.run_fingerprint, r.note, r.reviewer, _utc(r.created_at)
    )


def _exam_record(ex: Exam) -> ExamRecord:
    images = [
        ImageRecord(
            im.id,
            im.sha256,
            im.size,
            im.name,
            im.path,
            im.origin,
            im.source,
            im.frames,
            _utc(im.created_at),
            [_analysis_record(a) for a in im.analyses],
        )
        for im in ex.images
    ]
    return ExamRecord(
        ex.id,
        ex.key,
        ex.key_source,
        ex.patient,
        _utc(ex.created_at),
        images,
        [_review_record(r) for r in ex.reviews],
        exam_answer(images),
    )


def _exam_labels(exam: ExamRecord) -> list[str]:
    fp = exam.answer.run_fingerprint
    for im in exam.images:
        for a in im.analyses:
            if a.run_fingerprint == fp:
                return a.labels
    return []


__all__ = ["Store", "open_store", "ExamKey", "ImageInput", "RunInfo", "VERDICTS", "KEY_SOURCES", "check_key"]
