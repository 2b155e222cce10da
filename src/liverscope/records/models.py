"""The exam records' tables (SQLAlchemy 2 declarative models); their schema is created and changed only
by the Alembic migrations in ``records/migrations/versions`` (run by :func:`~liverscope.records.store.open_store`).

* ``exams``: one per exam, by a pseudonymous key only: the salted one-way hash of a DICOM study
  (``st-``..., :func:`liverscope.data.io.pseudonym`), a folder or manifest group name, or a key the user
  typed; ``patient`` is the hash of the DICOM PatientID (``pt-``...) or empty. No name, no raw ID.
* ``images``: the files analysed in an exam (SHA-256 of the bytes, size, where it came from, frames).
* ``analyses``: one per image per analysis (append-only): model, liverscope version, run fingerprint,
  backend, precision, test-time augmentation, temperature, every class probability, endpoints, OOD
  score and flag, time, user.
* ``reviews``: a clinician's verdict on an exam (agree, or a corrected label, with a note), append-only
  beside the analyses, which it never changes; the latest review is the exam's reviewed label.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


#: names for every constraint and index, so later migrations (SQLite's batch mode above all) can name them
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Exam(Base):
    __tablename__ = "exams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    #: how the key was made: ``study`` (DICOM StudyInstanceUID hash), ``folder``, ``group``, ``file`` (an image alone), ``user``
    key_source: Mapped[str] = mapped_column(String(16), nullable=False)
    patient: Mapped[str | None] = mapped_column(String(64))  # pt-... hash of the DICOM PatientID, else empty
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)

    images: Mapped[list["Image"]] = relationship(back_populates="exam", order_by="Image.id")
    reviews: Mapped[list["Review"]] = relationship(back_populates="exam", order_by="Review.id")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("exam_id", "sha256", name="uq_images_exam_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exam_id: Mapped[int] = mapped_column(
        ForeignKey("exams.id", ondelete="CASCADE"), nullable=False, index=True
    )
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    size: Mapped[int] = mapped_column(Integer, nullable=False)  # bytes
    name: Mapped[str] = mapped_column(String(512), nullable=False)  # file name (an upload's name)
    path: Mapped[str | None] = mapped_column(
        Text
    )  # where the file was read (predict), else empty (an upload)
    origin: Mapped[str] = mapped_column(String(16), nullable=False)  # predict, app, api
    source: Mapped[str | None] = mapped_column(
        String(128)
    )  # acquisition source (a manifest's `source`), when known
    frames: Mapped[int] = mapped_column(
        Integer, nullable=False, default=1
    )  # frames in the file (a cine loop: many)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)

    exam: Mapped[Exam] = relationship(back_populates="images")
    analyses: Mapped[list["Analysis"]] = relationship(back_populates="image", order_by="Analysis.id")


class Analysis(Base):
    __tablename__ = "analyses"
    __table_args__ = (Index("ix_analyses_exam_created", "exam_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True
    )
    exam_id: Mapped[int] = mapped_column(ForeignKey("exams.id", ondelete="CASCADE"), nullable=False)
    model_id: Mapped[str] = mapped_column(String(256), nullable=False)  # run name and architecture
    run_dir: Mapped[str | None] = mapped_column(Text)
    run_fingerprint: Mapped[str] = mapped_column(
        String(64), nullable=False
    )  # SHA-256 of model.json + weights
    liverscope_version: Mapped[str] = mapped_column(String(32), nullable=False)
    backend: Mapped[str] = mapped_column(String(16), nullable=False)
    precision: Mapped[str | None] = mapped_column(String(16))
    tta: Mapped[str] = mapped_column(String(16), nullable=False)
    temperature: Mapped[float] = mapped_column(Float, nullable=False)
    labels: Mapped[list] = mapped_column(JSON, nullable=False)  # the model's class names, in order
    probabilities: Mapped[list] = mapped_column(
        JSON, nullable=False
    )  # calibrated, one per label, in that order
    label: Mapped[str] = mapped_column(String(64), nullable=False)
    endpoints: Mapped[dict | None] = mapped_column(JSON)  # {"≥F2": p, "≥F3": p, "F4": p} for METAVIR labels
    ood_score: Mapped[float | None] = mapped_column(Float)
    ood: Mapped[bool | None] = mapped_column(Boolean)
    frames: Mapped[int] = mapped_column(
        Integer, nullable=False, default=1
    )  # frames averaged into this result
    user: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)

    image: Mapped[Image] = relationship(back_populates="analyses")


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exam_id: Mapped[int] = mapped_column(
        ForeignKey("exams.id", ondelete="CASCADE"), nullable=False, index=True
    )
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)  # agree | correct
    label: Mapped[str] = mapped_column(String(64), nullable=False)  # the reviewed label
    answer_label: Mapped[str | None] = mapped_column(String(64))  # the exam's answer when it was reviewed
    run_fingerprint: Mapped[str | None] = mapped_column(String(64))  # the model that answered
    note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)

    exam: Mapped[Exam] = relationship(back_populates="reviews")


__all__ = ["Base", "Exam", "Image", "Analysis", "Review", "utcnow"]
