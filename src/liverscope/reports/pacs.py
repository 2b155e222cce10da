"""The round trip with a PACS (``liverscope pacs``): pull a study from an Orthanc server, analyse its
images with a run, push the report's Secondary Captures and Structured Report back into the study.

Orthanc's REST API (https://orthanc.uclouvain.be/book/users/rest.html) through the standard library's
``urllib``: ``POST /tools/lookup`` (a Study Instance UID → Orthanc's study ID), ``GET /studies/{id}/series``,
``GET /series/{id}/instances``, ``GET /instances/{id}/file`` and ``POST /instances`` (store a DICOM file).
Only image series are analysed: structured reports, presentation states and key-object notes are left
alone, and so are the series liverscope wrote (Manufacturer ``liverscope``), so running it twice does
not analyse its own overlays. Credentials, when the server asks for them, come from
``LIVERSCOPE_ORTHANC_USER`` / ``LIVERSCOPE_ORTHANC_PASSWORD`` (never from the command line, where other
users of the machine could read them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from liverscope.data.io import pseudonym
from liverscope.errors import LiverscopeError
from liverscope.reports.build import score_exam
from liverscope.reports.content import ExamReport
from liverscope.reports.dicom import MANUFACTURER, DicomOutputs, write_dicom

#: Modalities that are not images to analyse.
NOT_IMAGES = {"SR", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT"}
ENV_URL = "LIVERSCOPE_ORTHANC_URL"
DEFAULT_URL = "http://127.0.0.1:8042"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


@dataclass
class PacsResult:
    """What one round trip did."""

    study_id: str  # Orthanc's ID of the study
    report: ExamReport
    outputs: DicomOutputs
    pushed: list[str] = field(default_factory=list)  # Orthanc IDs of the stored SR and captures
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (instance, why) not analysed


class Orthanc:
    """A tiny client of Orthanc's REST API (module docstring)."""

    def __init__(self, url: str | None = None, timeout: float = 60.0):
        self.url = (url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        self.timeout = timeout

    def _request(self, path: str, data: bytes | None = None, content_type: str = "application/json") -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        if data is not None:
            req.add_header("Content-Type", content_type)
        user, password = (
            os.environ.get("LIVERSCOPE_ORTHANC_USER"),
            os.environ.get("LIVERSCOPE_ORTHANC_PASSWORD"),
        )
        if user:
            req.add_header(
                "Authorization", "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise LiverscopeError(
                f"Orthanc at {self.url} answered {exc.code} {exc.reason} to {path} "
                "(check the study ID, and LIVERSCOPE_ORTHANC_USER/PASSWORD if the server asks for a login)"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise LiverscopeError(
                f"cannot reach Orthanc at {self.url} ({getattr(exc, 'reason', exc)}): is it running? "
                f"Give its address with --url or ${ENV_URL}"
            ) from None

    def get_json(self, path: str):
        return json.loads(self._request(path))

    def study_id(self, study: str) -> str:
        """Orthanc's ID of a study given by its ID or its Study Instance UID."""
        if _UID.match(study):
            found = [
                m["ID"]
                for m in json.loads(self._request("/tools/lookup", study.encode(), "text/plain"))
                if m.get("Type") == "Study"
            ]
            if not found:
                raise LiverscopeError(f"Orthanc at {self.url} holds no study with Study Instance UID {study}")
            return found[0]
        self.get_json(f"/studies/{study}")  # an unknown ID answers 404, said clearly
        return study

    def image_instances(self, study_id: str) -> tuple[list[str], list[tuple[str, str]]]:
        """The instances of the study's image series, and the series left out with why."""
        keep, left = [], []
        for series in self.get_json(f"/studies/{study_id}/series"):
            tags = series.get("MainDicomTags", {})
            if tags.get("Modality") in NOT_IMAGES or tags.get("Manufacturer") == MANUFACTURER:
                left.append(
                    (
                        f"series {series['ID']}",
                        f"not an image series to analyse ({tags.get('Modality')}, {tags.get('Manufacturer') or 'no manufacturer'})",
                    )
                )
                continue
            keep += [inst["ID"] for inst in self.get_json(f"/series/{series['ID']}/instances")]
        return keep, left

    def instance_file(self, instance_id: str) -> bytes:
        return self._request(f"/instances/{instance_id}/file")

    def store(self, data: bytes) -> str:
        """Store one DICOM file; Orthanc's ID of the new instance."""
        return json.loads(self._request("/instances", data, "application/dicom"))["ID"]


def study_exam_key(data: bytes) -> str:
    """The exam key of a pulled study: the salted one-way hash of its Study Instance UID (as
    ``predict --record --by study`` keys it)."""
    import io

    import pydicom

    return (
        pseudonym(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), "StudyInstanceUID")
        or "study-unknown"
    )


def round_trip(
    predictor, study: str, out_dir: str | Path, url: str | None = None, push: bool = True
) -> PacsResult:
    """Pull ``study`` (Orthanc ID or Study Instance UID), analyse its images with ``predictor``, write
    the report's DICOM objects into ``out_dir`` and, with ``push``, store them in Orthanc."""
    server = Orthanc(url)
    study_id = server.study_id(study)
    ids, skipped = server.image_instances(study_id)
    if not ids:
        raise LiverscopeError(
            f"study {study} on {server.url} has no image series to analyse"
            + "".join(f"; {w}: {why}" for w, why in skipped)
        )
    items = [(f"instance {i}", server.instance_file(i)) for i in ids]
    report, unreadable = score_exam(predictor, study_exam_key(items[0][1]), items)
    skipped += unreadable
    if not report.images:
        raise LiverscopeError(
            f"no image of study {study} could be read: " + "; ".join(f"{w}: {why}" for w, why in skipped)
        )
    outputs = write_dicom(report, out_dir)
    result = PacsResult(study_id, report, outputs, skipped=skipped)
    if push:
        result.pushed = [server.store(Path(p).read_bytes()) for p in [*outputs.captures, outputs.sr]]
    return result


__all__ = ["DEFAULT_URL", "ENV_URL", "Orthanc", "PacsResult", "study_exam_key", "round_trip"]
