"""Reports a clinic can file: the one-page PDF of an exam (read back with pypdf) and its DICOM objects
(a Secondary Capture per overlay and a Comprehensive SR, read back with pydicom): what they say, what
they reference, and that they carry no identifier the input did not carry."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from liverscope.evaluate.notices import DECISION_SUPPORT
from synthetic_study import ACCESSION, BIRTH_DATE, INSTITUTION, PATIENT_ID, PATIENT_NAME, write_study

pytest.importorskip("fpdf")
pytest.importorskip("highdicom")
pypdf = pytest.importorskip("pypdf")
pydicom = pytest.importorskip("pydicom")

from liverscope.reports.build import score_exam  # noqa: E402
from liverscope.reports.dicom import write_dicom  # noqa: E402
from liverscope.reports.pdf import MAX_PICTURES, write_pdf  # noqa: E402

#: What a report must never print or write for an input that did not carry it (and a PDF never).
SECRETS = ["DOE", "JANE", PATIENT_ID, BIRTH_DATE, ACCESSION, INSTITUTION, "HOUSE"]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _pdf_text(path: Path) -> tuple[int, str]:
    reader = pypdf.PdfReader(str(path))
    return len(reader.pages), _flat(" ".join(p.extract_text() for p in reader.pages))


@pytest.fixture(scope="module")
def predictor(trained_run):
    from liverscope.inference.predict import Predictor

    return Predictor.from_run(trained_run, backend="torch")


@pytest.fixture(scope="module")
def study(phantom_dir, tmp_path_factory):
    """Three phantom images of one stage as a DICOM study of DOE^JANE."""
    files = sorted((phantom_dir / "F3").glob("*.png"))[:3]
    return write_study(
        tmp_path_factory.mktemp("study"), [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    )


@pytest.fixture(scope="module")
def dicom_report(predictor, study):
    paths, _ = study
    report, skipped = score_exam(
        predictor, "st-0123456789abcdef", [(p.name, p.read_bytes()) for p in paths], [str(p) for p in paths]
    )
    assert skipped == []
    return report


@pytest.fixture(scope="module")
def png_report(predictor, phantom_dir):
    files = sorted((phantom_dir / "F1").glob("*.png"))[:2]
    report, _ = score_exam(
        predictor, "exam-0042", [(f.name, f.read_bytes()) for f in files], [str(f) for f in files]
    )
    return report, files


# --------------------------------------------------------------------------------------------------
# the PDF
# --------------------------------------------------------------------------------------------------


def test_pdf_is_one_page_with_the_key_the_stage_the_notice_and_no_patient_name(dicom_report, tmp_path):
    out = write_pdf(dicom_report, tmp_path / "exam.pdf")
    pages, text = _pdf_text(out)
    assert pages == 1
    assert "st-0123456789abcdef" in text
    assert dicom_report.answer.label and f"Exam result: {dicom_report.answer.label}" in text
    assert _flat(DECISION_SUPPORT) in text
    assert (
        "Model card" in text and "synthetic phantoms" in text
    )  # the card names the training data, said plainly
    assert "held-out test images, n =" in text
    raw = out.read_bytes()
    for secret in SECRETS:  # neither in the text nor anywhere in the file (metadata included)
        assert secret.lower() not in text.lower() and secret.encode() not in raw
    assert len(pypdf.PdfReader(str(out)).pages[0].images) == len(dicom_report.images)  # every overlay drawn


def test_pdf_of_many_images_and_a_flagged_exam_stays_one_page(dicom_report, tmp_path):
    flagged = [
        replace(im, index=i + 1, ood=True, ood_score=99.0) for i, im in enumerate(dicom_report.images * 5)
    ]
    answer = replace(
        dicom_report.answer,
        label=None,
        probabilities={},
        endpoints=None,
        n_images=len(flagged),
        n_used=0,
        n_flagged=len(flagged),
        n_agree=0,
        spread=None,
    )
    report = replace(
        dicom_report, images=flagged, answer=answer, review="corrected to F2 by dr-a on 2026-12-01"
    )
    pages, text = _pdf_text(write_pdf(report, tmp_path / "many.pdf"))
    assert pages == 1
    assert "Exam result: not assessable" in text and "15 flagged images left out" in text
    assert f"{len(flagged) - MAX_PICTURES} more image(s) not drawn" in text
    assert "Review: corrected to F2" in text


# --------------------------------------------------------------------------------------------------
# DICOM: Secondary Captures and the Structured Report
# --------------------------------------------------------------------------------------------------


def _content_texts(ds) -> list[str]:
    out = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _content_texts(item)
    return out


def _referenced(ds) -> set[str]:
    return {
        inst.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }


def test_dicom_outputs_join_the_source_study_and_reference_its_instances(dicom_report, study, tmp_path):
    paths, study_uid = study
    got = write_dicom(dicom_report, tmp_path / "dcm")
    sources = [pydicom.dcmread(p) for p in paths]
    sr = pydicom.dcmread(got.sr)
    scs = [pydicom.dcmread(p) for p in got.captures]
    assert len(scs) == len(paths)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert {sc.SOPClassUID for sc in scs} == {"1.2.840.10008.5.1.4.1.1.7"}  # Secondary Capture
    for ds in [sr, *scs]:  # the same study and patient as the input, which carried them
        assert (
            ds.StudyInstanceUID == study_uid
            and ds.PatientID == PATIENT_ID
            and str(ds.PatientName) == PATIENT_NAME
        )
        assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert _referenced(sr) == {s.SOPInstanceUID for s in sources} | {sc.SOPInstanceUID for sc in scs}
    image_refs = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in sr.ContentSequence
        if group.ValueType == "CONTAINER"
        for item in group.ContentSequence
        if item.ValueType == "IMAGE"
    }
    assert image_refs == {s.SOPInstanceUID for s in sources} | {sc.SOPInstanceUID for sc in scs}
    texts = _content_texts(sr)
    assert f"Exam result: {dicom_report.answer.label}" in texts and DECISION_SUPPORT in texts
    probs = {
        str(i.ConceptNameCodeSequence[0].CodeMeaning): float(i.MeasuredValueSequence[0].NumericValue)
        for i in sr.ContentSequence
        if i.ValueType == "NUM"
    }
    for c, p in dicom_report.answer.probabilities.items():
        assert probs[f"Probability of {c}"] == pytest.approx(p, abs=1e-6)
    overlay = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(dicom_report.images[0].overlay_png, np.uint8), cv2.IMREAD_COLOR),
        cv2.COLOR_BGR2RGB,
    )
    np.testing.assert_array_equal(scs[0].pixel_array, overlay)  # the report's overlay, pixel for pixel
    for ds in [sr, *scs]:  # what the input carried but a report has no need of stays out
        assert "InstitutionName" not in ds


def test_dicom_outputs_of_png_input_carry_no_identifier(png_report, tmp_path):
    report, files = png_report
    got = write_dicom(report, tmp_path / "dcm")
    again = write_dicom(report, tmp_path / "again")
    assert got.referenced == [] and got.study_instance_uid == again.study_instance_uid  # one exam, one study
    for path in [got.sr, *got.captures]:
        ds = pydicom.dcmread(path)
        assert ds.PatientID == "exam-0042"  # the pseudonymous exam key, nothing else
        assert str(ds.get("PatientName", "")) == "" and str(ds.get("PatientBirthDate", "")) == ""
        assert str(ds.get("AccessionNumber", "")) == "" and str(ds.get("ReferringPhysicianName", "")) == ""
        assert ds.StudyInstanceUID == got.study_instance_uid
        raw = path.read_bytes()
        for f in files:  # no file name either (one may carry a patient's name)
            assert f.name.encode() not in raw and f.stem.encode() not in raw


# --------------------------------------------------------------------------------------------------
# liverscope records report KEY --pdf FILE --dicom DIR (a stored exam)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_exam(predictor, study, tmp_path_factory):
    """The DICOM study's images analysed and recorded in a fresh SQLite store under one exam key."""
    pytest.importorskip("sqlalchemy")
    from liverscope.records import ExamKey, open_store
    from liverscope.records.runinfo import image_input, run_info

    paths, _ = study
    db = tmp_path_factory.mktemp("records") / "records.sqlite"
    with open_store(db) as store:
        for path, r in zip(paths, predictor.predict_paths(paths)):
            store.record(ExamKey("st-00000000000000aa", "study"), image_input(path), r, run_info(predictor))
    return db


def test_records_report_writes_the_pdf_and_the_dicom_of_a_stored_exam(stored_exam, study, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    paths, study_uid = study
    res = CliRunner().invoke(
        app,
        [
            "records",
            "report",
            "st-00000000000000aa",
            "--db",
            str(stored_exam),
            "--pdf",
            str(tmp_path / "r.pdf"),
            "--dicom",
            str(tmp_path / "dcm"),
        ],
    )
    assert res.exit_code == 0, res.output
    pages, text = _pdf_text(tmp_path / "r.pdf")
    assert pages == 1 and "st-00000000000000aa" in text and _flat(DECISION_SUPPORT) in text
    assert not any(s.lower() in text.lower() for s in SECRETS)
    sr = pydicom.dcmread(tmp_path / "dcm" / "st-00000000000000aa-sr.dcm")
    assert sr.StudyInstanceUID == study_uid
    assert {s.SOPInstanceUID for s in map(pydicom.dcmread, paths)} <= _referenced(sr)
    assert len(list((tmp_path / "dcm").glob("*-sc-*.dcm"))) == len(paths)


def test_records_report_says_what_is_missing(stored_exam, tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["records", "report", "st-00000000000000aa", "--db", str(stored_exam)])
    assert res.exit_code == 2 and "--pdf FILE, --dicom DIR, or both" in res.output
    res = runner.invoke(
        app,
        ["records", "report", "st-nosuchexam", "--db", str(stored_exam), "--pdf", str(tmp_path / "x.pdf")],
    )
    assert res.exit_code == 1 and "st-nosuchexam" in res.output and not (tmp_path / "x.pdf").exists()


def test_a_stored_image_whose_file_changed_gets_a_note_not_an_overlay(
    stored_exam, predictor, study, tmp_path
):
    from liverscope.records import open_store
    from liverscope.records.runinfo import run_fingerprint
    from liverscope.reports.build import NO_FILE, OTHER_MODEL, from_exam

    with open_store(stored_exam) as store:
        exam = store.get_exam("st-00000000000000aa")
    moved = replace(exam, images=[replace(exam.images[0], path=str(tmp_path / "gone.dcm")), *exam.images[1:]])
    report = from_exam(moved, predictor, run_fingerprint(predictor.run_dir))
    assert report.images[0].overlay_png is None and report.images[0].overlay_note == NO_FILE
    assert all(im.overlay_png for im in report.images[1:])
    other = from_exam(exam, predictor, "another-model")
    assert all(im.overlay_png is None and im.overlay_note == OTHER_MODEL for im in other.images)
    assert report.answer.label == exam.answer.label  # the stored numbers, not new ones


def test_dicom_outputs_pass_the_dicom3tools_validator(dicom_report, png_report, tmp_path):
    """dciodvfy (David Clunie's dicom3tools, Debian's dicom3tools; .ci/run installs it) finds no error in
    the SR or the Secondary Captures, for DICOM and for PNG input."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian's dicom3tools; .ci/run installs it)")
    outputs = [write_dicom(dicom_report, tmp_path / "dcm"), write_dicom(png_report[0], tmp_path / "png")]
    for path in [p for o in outputs for p in (o.sr, *o.captures)]:
        res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_a_stored_exam_whose_run_has_moved_still_gets_its_page(stored_exam, tmp_path):
    """Without the run, the numbers are the stored ones, no overlay is drawn, and the card says what the
    analyses recorded of their model (and that the run is not at hand) instead of inventing figures."""
    from liverscope.records import open_store
    from liverscope.reports.build import from_exam

    with open_store(stored_exam) as store:
        exam = store.get_exam("st-00000000000000aa")
    gone = str(tmp_path / "moved-run")
    moved = replace(
        exam,
        images=[replace(im, analyses=[replace(a, run_dir=gone) for a in im.analyses]) for im in exam.images],
    )
    report = from_exam(moved)
    assert all(im.overlay_png is None for im in report.images)
    assert report.card.labels == exam.images[0].latest.labels and report.card.figures == []
    pages, text = _pdf_text(write_pdf(report, tmp_path / "moved.pdf"))
    assert pages == 1 and "moved-run) is not at hand" in text and f"Exam result: {exam.answer.label}" in text
