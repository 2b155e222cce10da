"""The app's PDF download: the uploads as one exam, its one-page report with a pseudonymous key."""

from __future__ import annotations

import re

import pytest

from liverscope.evaluate.notices import DECISION_SUPPORT
from liverscope.ui import app as appmod
from liverscope.ui import app_reports
from synthetic_study import PATIENT_ID, PATIENT_NAME, write_study

pypdf = pytest.importorskip("pypdf")
pytest.importorskip("fpdf")


def _text(data: bytes) -> tuple[int, str]:
    import io

    reader = pypdf.PdfReader(io.BytesIO(data))
    return len(reader.pages), re.sub(r"\s+", " ", " ".join(p.extract_text() for p in reader.pages))


def test_the_pdf_of_dicom_uploads_is_keyed_by_the_study_hash_and_names_no_one(
    trained_run, phantom_dir, tmp_path
):
    import cv2
    import pydicom

    from liverscope.data.io import pseudonym
    from liverscope.inference.predict import Predictor

    files = sorted((phantom_dir / "F0").glob("*.png"))[:2]
    paths, _ = write_study(tmp_path, [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])
    uploads = [(f"{PATIENT_NAME}_{i}.dcm", p.read_bytes()) for i, p in enumerate(paths)] + [
        ("broken.png", b"not an image")
    ]
    p = Predictor.from_run(trained_run, backend="torch")
    analyses = [appmod.analyse_upload(p, name, data, 2**24) for name, data in uploads]
    key = app_reports.default_key(uploads)
    assert key == pseudonym(pydicom.dcmread(paths[0]), "StudyInstanceUID")
    pages, text = _text(app_reports.exam_pdf(analyses, uploads, p.labels, trained_run, key))
    assert pages == 1 and key in text and re.sub(r"\s+", " ", DECISION_SUPPORT) in text
    assert "2 image(s)" in text  # the unreadable upload is left out
    assert [a.ok for a in analyses] == [True, True, False] and "Exam result: " in text
    for secret in ("DOE", "JANE", PATIENT_ID):
        assert secret not in text


def test_the_page_offers_the_pdf(trained_run, phantom_dir, monkeypatch):
    from test_app import start

    at = start(trained_run, monkeypatch)
    data = [f.read_bytes() for f in sorted((phantom_dir / "F4").glob("*.png"))[:2]]
    at.file_uploader[0].set_value([("a.png", data[0], "image/png"), ("b.png", data[1], "image/png")])
    at.run()
    assert not at.exception
    assert [t.label for t in at.text_input] == [app_reports.KEY_FIELD]
    key = at.text_input[0].value
    assert key.startswith("upload-")
    (ident, pdf) = at.session_state["exam_pdf"]
    assert ident[0] == key and pdf.startswith(b"%PDF")
    pages, text = _text(pdf)
    assert pages == 1 and key in text and "2 image(s)" in text
    at.text_input[0].set_value("exam-7").run()  # a typed key: the PDF is drawn again with it
    assert (
        at.session_state["exam_pdf"][0][0] == "exam-7"
        and "exam-7" in _text(at.session_state["exam_pdf"][1])[1]
    )
