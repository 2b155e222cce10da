"""DICOM objects of an exam's report, for a PACS (``liverscope records report KEY --dicom DIR``,
``liverscope pacs``), made with highdicom:

* a **Secondary Capture** of each image's overlay (heatmap and outlines, RGB), one series;
* a **Comprehensive SR** of the result, one series: the exam's answer (stage, every class probability,
  the endpoints, how the images were pooled and how many agree), then one group per image (its class,
  probabilities, endpoints, out-of-distribution score and flag, a reference to its overlay and, when the
  image was DICOM, to the source instance), the model card (algorithm name and version, model id,
  training data, held-out figures) and the decision-support notice.

**Identifiers.** When an image was DICOM, the new objects join its study: patient and study attributes
are copied from the source header (highdicom's ``from_ref_dataset`` and the SR's evidence), which the
input carried, and the SR lists the source instances as evidence. When no image was DICOM (PNG, JPEG),
nothing about the patient is known and nothing is invented: PatientName is empty, PatientID is the
exam's pseudonymous key, and the Study Instance UID is derived from that key (the same exam's reports
share one study). No file name is written.

Codes: DCM and LOINC where one fits; the class probabilities and liverscope's own items use the private
coding scheme :data:`SCHEME` (a ``99`` designator, as PS3.16 reserves for private schemes).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverscope import __version__
from liverscope.data.io import sniff_format
from liverscope.errors import LiverscopeError
from liverscope.reports.content import ExamReport, ReportImage
from liverscope.utils import atomic_path, import_optional

#: The private coding scheme of liverscope's own concepts.
SCHEME = "99LVSCOPE"
MANUFACTURER = "liverscope"
SC_SERIES_NUMBER, SR_SERIES_NUMBER = 9101, 9102


@dataclass(frozen=True)
class DicomOutputs:
    """What :func:`write_dicom` wrote: the SR, the Secondary Captures, and the source instances referenced."""

    sr: Path
    captures: list[Path]
    referenced: list[str]  # SOP Instance UIDs of the DICOM inputs the SR cites
    study_instance_uid: str


def _hd():
    return import_optional("highdicom", "reports", "DICOM reports")


def source_header(im: ReportImage):
    """The DICOM header (no pixels) of an image that was DICOM, else ``None`` (PNG, JPEG, gone)."""
    import pydicom

    data = im.data
    if data is None and im.source:
        try:
            with open(im.source, "rb") as fh:
                data = fh.read(132)
                if sniff_format(data) != "dicom":
                    return None
                fh.seek(0)
                return pydicom.dcmread(fh, stop_before_pixels=True)
        except OSError:
            return None
    if data is None or sniff_format(data) != "dicom":
        return None
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _concept(value: str, meaning: str, scheme: str = SCHEME):
    hd = _hd()
    return hd.sr.CodedConcept(value=value[:16], scheme_designator=scheme, meaning=meaning[:64])


def _ascii(text: str) -> str:
    return text.replace("≥", ">=").encode("ascii", "replace").decode()


def _overlay_pixels(im: ReportImage) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(im.overlay_png, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))


def _capture(hd, im: ReportImage, ref, series_uid: str, number: int, report: ExamReport, study_uid: str):
    """The Secondary Capture of one overlay, in the source's study when there is one."""
    common = dict(
        pixel_array=_overlay_pixels(im),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        series_description="liverscope overlay (Grad-CAM, outlines)",
    )
    if ref is not None:
        sc = hd.sc.SCImage.from_ref_dataset(ref, **common)
    else:
        sc = hd.sc.SCImage(study_instance_uid=study_uid, patient_id=report.key, patient_name=None, **common)
    # highdicom asks an orientation of every image in the patient's frame; the standard lets it be empty
    # (Type 2C) when unknown, which it is for an overlay on a cropped ultrasound sector: none is claimed.
    sc.PatientOrientation = None
    # what the images show is the liver (liverscope's one subject), an unpaired organ: no Laterality (Type 2C)
    sc.BodyPartExamined = "LIVER"
    sc.ImageComments = _ascii(f"{im.name}: {'not assessable (flagged)' if im.ood else im.label}")
    return sc


def _num(hd, value: str, meaning: str, number: float, rel: str = "CONTAINS"):
    unit = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    return hd.sr.NumContentItem(
        name=_concept(value, meaning), value=float(number), unit=unit, relationship_type=rel
    )


def _text(hd, concept, value: str, rel: str = "CONTAINS"):
    return hd.sr.TextContentItem(name=concept, value=_ascii(value), relationship_type=rel)


def _probability_items(hd, probs: dict[str, float], endpoints: dict[str, float] | None) -> list:
    items = [_num(hd, f"P-{c}", f"Probability of {c}", p) for c, p in probs.items()]
    items += [
        _num(hd, f"P-{_ascii(k)}", f"Probability of {_ascii(k)}", p) for k, p in (endpoints or {}).items()
    ]
    return items


def _container(hd, name, items: list, rel: str | None = None):
    node = hd.sr.ContainerContentItem(name=name, relationship_type=rel)
    node.ContentSequence = hd.sr.ContentSequence(items)
    return node


def _image_group(hd, im: ReportImage, sc, ref) -> object:
    items = [
        _text(hd, _concept("CLASS", "Image class"), im.label or ""),
        *_probability_items(hd, im.probabilities, im.endpoints),
    ]
    if im.ood_score is not None:
        items.append(_num(hd, "OOD-SCORE", "Out-of-distribution score", im.ood_score))
    items.append(
        _text(
            hd, _concept("OOD-FLAG", "Unlike the training images"), "yes: not assessable" if im.ood else "no"
        )
    )
    if sc is not None:
        items.append(
            hd.sr.ImageContentItem(
                name=hd.sr.CodedConcept("121200", "DCM", "Illustration of ROI"),
                referenced_sop_class_uid=sc.SOPClassUID,
                referenced_sop_instance_uid=sc.SOPInstanceUID,
                relationship_type="CONTAINS",
            )
        )
    elif im.overlay_note:
        items.append(_text(hd, _concept("NO-OVERLAY", "Why no overlay"), im.overlay_note))
    if ref is not None:
        items.append(
            hd.sr.ImageContentItem(
                name=hd.sr.CodedConcept("121112", "DCM", "Source of Measurement"),
                referenced_sop_class_uid=ref.SOPClassUID,
                referenced_sop_instance_uid=ref.SOPInstanceUID,
                relationship_type="CONTAINS",
            )
        )
    return _container(hd, hd.sr.CodedConcept("125007", "DCM", "Measurement Group"), items, "CONTAINS")


def _content(hd, report: ExamReport, groups: list):
    a, card = report.answer, report.card
    result = "not assessable: every image is unlike the training images" if a.label is None else a.label
    items = [
        _text(hd, hd.sr.CodedConcept("121106", "DCM", "Comment"), report.notice),
        _text(hd, hd.sr.CodedConcept("121071", "DCM", "Finding"), f"Exam result: {result}"),
        *_probability_items(hd, a.probabilities, a.endpoints),
        _text(
            hd, _concept("POOLING", "How the images were pooled"), f"{a.agreement()}. Pooled by {a.method}."
        ),
        _text(hd, hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"), f"liverscope {card.architecture}"),
        _text(
            hd,
            hd.sr.CodedConcept("111003", "DCM", "Algorithm Version"),
            f"{__version__} (model id {card.model_id}, run {card.run})",
        ),
        _text(
            hd,
            _concept("TRAINED-ON", "Training data"),
            card.trained_on + "".join(" " + n for n in card.notices),
        ),
        _text(
            hd,
            _concept("FIGURES", "Held-out figures"),
            f"{card.figures_source}: " + ("; ".join(card.figures) or "none"),
        ),
    ]
    if report.review:
        items.append(_text(hd, _concept("REVIEW", "Clinician review"), report.review))
    return _container(hd, hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"), items + groups)


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:64] or "exam"


def _save(ds, path: Path) -> Path:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def write_dicom(report: ExamReport, out_dir: str | Path) -> DicomOutputs:
    """Write the exam's Secondary Captures (one per image with an overlay) and its SR into ``out_dir``
    (``KEY-sc-N.dcm``, ``KEY-sr.dcm``); see the module docstring for what they carry."""
    hd = _hd()
    import pydicom

    out_dir = Path(out_dir)
    refs = [source_header(im) for im in report.images]
    first = next((r for r in refs if r is not None), None)
    study_uid = (
        first.StudyInstanceUID
        if first is not None
        else pydicom.uid.generate_uid(entropy_srcs=["liverscope exam", report.key])
    )
    if not any(im.overlay_png for im in report.images):
        raise LiverscopeError(
            f"exam {report.key}: no image has an overlay to capture: the images' files are gone (the app keeps no uploads) "
            "or the run that made the analyses is not at hand (give --run RUN_DIR)"
        )
    sc_series, stem = hd.UID(), _file_stem(report.key)
    captures, groups, evidence = [], [], []
    for im, ref in zip(report.images, refs):
        sc = None
        if im.overlay_png:
            sc = _capture(hd, im, ref, sc_series, len(captures) + 1, report, study_uid)
            captures.append(_save(sc, out_dir / f"{stem}-sc-{len(captures) + 1}.dcm"))
            evidence.append(sc)
        groups.append(_image_group(hd, im, sc, ref))
    evidence += [
        r for r in refs if r is not None
    ]  # a Secondary Capture first: the SR copies patient and study from evidence[0]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=_content(hd, report, groups),
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="liverscope result",
    )
    referenced = [r.SOPInstanceUID for r in refs if r is not None]
    return DicomOutputs(_save(sr, out_dir / f"{stem}-sr.dcm"), captures, referenced, str(study_uid))


__all__ = ["DicomOutputs", "SCHEME", "source_header", "write_dicom"]
