"""Reviewed exams back into training: ``liverscope records export --out manifest.csv``.

Every image of every reviewed exam becomes a row ``path,label,group,source`` of the manifest format
that ``train`` and ``cv`` read as it is (:func:`liverscope.data.datasets.read_manifest`): the path of
the file that was analysed, the exam's reviewed label (its latest review: an agreement keeps the
answer, a correction gives the corrected label), the group that keeps one patient's images on one side
of every split (the patient's pseudonym, else the exam key) and the acquisition source when known.
Images that cannot be exported (an upload with no file kept, a file moved away since) are listed as
skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

from liverscope.records.store import Store
from liverscope.records.views import ExamRecord
from liverscope.utils import atomic_write_csv

HEADER = ["path", "label", "group", "source"]


def manifest_rows(exams: list[ExamRecord]) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Rows of the reviewed exams' images and the ``(image, reason)`` pairs left out."""
    rows, skipped, seen = [], [], set()
    for exam in exams:
        if exam.review is None:
            continue
        group = exam.patient or exam.key
        for im in exam.images:
            where = f"{exam.key}/{im.name}"
            if not im.path:
                skipped.append((where, "no file: an upload whose bytes were not kept"))
            elif not Path(im.path).is_file():
                skipped.append((where, f"{im.path} is no longer there"))
            elif im.path not in seen:
                seen.add(im.path)
                rows.append([im.path, exam.reviewed_label, group, im.source or ""])
    return rows, skipped


def export_manifest(store: Store, out: str | Path) -> dict:
    """Write the reviewed exams' images as a training manifest (atomically).

    Returns:
        ``{"out": str, "images": rows written, "exams": reviewed exams, "labels": {label: images}, "skipped": [(image, reason)]}``.
    """
    exams = store.find_exams(reviewed=True, limit=None)
    rows, skipped = manifest_rows(exams)
    atomic_write_csv(out, HEADER, rows)
    labels: dict[str, int] = {}
    for r in rows:
        labels[r[1]] = labels.get(r[1], 0) + 1
    return {"out": str(out), "images": len(rows), "exams": len(exams), "labels": labels, "skipped": skipped}


__all__ = ["export_manifest", "manifest_rows", "HEADER"]
