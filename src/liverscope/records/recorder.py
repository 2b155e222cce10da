"""``predict --record``: each analysed file recorded as it streams out of the predictor, in its exam.

Which exam a file belongs to (``--by``):

* ``study`` (default): a DICOM file's study (``st-`` + the salted one-way hash of its StudyInstanceUID,
  the DICOM reader's :func:`~liverscope.data.io.pseudonym`; its patient's ``pt-`` hash beside it); any
  other image is an exam of its own, keyed ``img-`` + 16 hex digits of its SHA-256;
* ``folder``: the name of the folder holding the file (a folder per exam, named by its key);
* ``group``: a CSV manifest's ``group`` column (the inputs are manifests ``path,label[,group][,source]``,
  the train/cv format; a row without a group is an exam of its own). Its ``source`` is recorded too.

Each file is one transaction, committed before the next result is handed on: a crash loses nothing
recorded before it. Skipped files (unreadable) are not recorded and are listed by ``predict`` as usual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from liverscope.data.datasets import read_manifest
from liverscope.data.io import dicom_header
from liverscope.errors import LiverscopeError
from liverscope.inference.results import Result
from liverscope.labels import endpoint_column, endpoint_keys
from liverscope.records.runinfo import image_input
from liverscope.records.store import ExamKey, ImageInput, RunInfo, Store
from liverscope.records.views import ExamRecord
from liverscope.utils import atomic_write_csv

BY = ("study", "folder", "group")


@dataclass(frozen=True)
class ManifestRow:
    group: str | None
    source: str | None


def prediction_inputs(paths: Sequence[str | Path], by: str) -> tuple[list[Path], dict[str, ManifestRow]]:
    """The files to predict and, for ``by="group"``, each file's manifest row (by resolved path)."""
    if by not in BY:
        raise LiverscopeError(f"--by {by}: expected one of {', '.join(BY)}")
    if by != "group":
        return [Path(p) for p in paths], {}
    files, rows = [], {}
    for p in map(Path, paths):
        if p.suffix.lower() != ".csv" or not p.is_file():
            raise LiverscopeError(
                f"{p}: --by group reads the exams from a CSV manifest (path,label[,group][,source]); give manifests, or use --by study|folder"
            )
        samples, _ = read_manifest(p)
        for s in samples:
            files.append(Path(s.path))
            rows[str(Path(s.path).resolve())] = ManifestRow(s.group, s.source)
    return files, rows


def exam_key(path: Path, image: ImageInput, by: str, rows: dict[str, ManifestRow]) -> ExamKey:
    """The exam of one file (see the module docstring)."""
    if by == "folder":
        return ExamKey(path.resolve().parent.name, "folder")
    if by == "group":
        row = rows.get(str(path.resolve()))
        if row is not None and row.group:
            return ExamKey(row.group, "group")
        return ExamKey("img-" + image.sha256[:16], "file")
    header = dicom_header(path)
    if header is not None and header.study:
        return ExamKey(header.study, "study", header.patient)
    return ExamKey("img-" + image.sha256[:16], "file", header.patient if header else None)


class Recorder:
    """Records the results that pass through :meth:`wrap` into ``store``, each in its exam.

    Attributes:
        exams: the exam keys met, in order of first appearance.
        seconds: the time each recording took (digest, header, transaction).
    """

    def __init__(
        self,
        store: Store,
        run: RunInfo,
        by: str = "study",
        rows: dict[str, ManifestRow] | None = None,
        user: str | None = None,
    ):
        self.store, self.run, self.by, self.rows, self.user = store, run, by, rows or {}, user
        self.exams: list[str] = []
        self.seconds: list[float] = []

    def record(self, r: Result) -> int:
        """Record one analysed file; returns the analysis id."""
        t0 = time.perf_counter()
        path = Path(r.path)
        row = self.rows.get(str(path.resolve()))
        image = image_input(path, "predict", row.source if row else None)
        exam = exam_key(path, image, self.by, self.rows)
        aid = self.store.record(exam, image, r, self.run, self.user)
        if exam.key not in self.exams:
            self.exams.append(exam.key)
        self.seconds.append(time.perf_counter() - t0)
        return aid

    def wrap(self, results: Iterable[Result]) -> Iterator[Result]:
        """Pass results on, each analysed one recorded (committed) first."""
        for r in results:
            if not r.error:
                self.record(r)
            yield r

    def answers(self) -> list[ExamRecord]:
        """The exams met, as the store has them now (their earlier images included)."""
        return [self.store.get_exam(k) for k in self.exams]


def exam_line(exam: ExamRecord) -> str:
    """One line: the exam's answer, how many images agreed, flagged ones, the spread."""
    a = exam.answer
    flagged = f", {a.n_flagged} flagged image(s) left out" if a.n_flagged else ""
    if a.label is None:
        return (
            f"exam {exam.key}: not assessable: all {a.n_images} image(s) flagged as unlike the training data"
        )
    return (
        f"exam {exam.key}: {a.label} (p={a.probabilities[a.label]:.3f}) from {a.n_used} image(s), {a.n_agree} agree{flagged}, "
        f"spread {a.spread:.3f}"
    )


def exams_path(out: str | Path) -> Path:
    """``predictions.csv`` → ``predictions_exams.csv`` (beside the per-image output)."""
    out = Path(out)
    return out.with_name(f"{out.stem}_exams.csv")


def write_exams(out: str | Path, exams: Sequence[ExamRecord]) -> Path:
    """The exams' answers as CSV: ``exam,key_source,prediction,prob_<label>...[,p_ge_F2...],images,used,flagged,agree,spread,files``."""
    labels = next((list(e.answer.probabilities) for e in exams if e.answer.probabilities), [])
    eps = endpoint_keys(labels)
    header = [
        "exam",
        "key_source",
        "prediction",
        *[f"prob_{c}" for c in labels],
        *map(endpoint_column, eps),
        "images",
        "used",
        "flagged",
        "agree",
        "spread",
        "files",
    ]
    rows = []
    for e in exams:
        a = e.answer
        probs = [f"{a.probabilities[c]:.6f}" if c in a.probabilities else "" for c in labels]
        ends = [f"{a.endpoints[k]:.6f}" if a.endpoints and k in a.endpoints else "" for k in eps]
        rows.append(
            [
                e.key,
                e.key_source,
                a.label or "",
                *probs,
                *ends,
                a.n_images,
                a.n_used,
                a.n_flagged,
                a.n_agree,
                "" if a.spread is None else f"{a.spread:.6f}",
                ";".join(im.name for im in e.images),
            ]
        )
    return atomic_write_csv(exams_path(out), header, rows)


__all__ = ["BY", "Recorder", "prediction_inputs", "exam_key", "exam_line", "exams_path", "write_exams"]
