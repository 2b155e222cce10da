"""`liverscope pacs` against a real Orthanc (Debian's `orthanc` package): a synthetic DICOM study is
stored, pulled, analysed with a phantom run, and its Structured Report and Secondary Captures are pushed
back; the SR reads back with pydicom and Orthanc lists the new series under the same study.

The server is the one `.ci/run` starts (``LIVERSCOPE_TEST_ORTHANC``), else one this module starts from
the installed binary; without either the tests skip and say so."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from synthetic_study import PATIENT_ID, write_study

pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _post(url: str, data: bytes) -> dict:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _start_orthanc(folder: Path):
    binary = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None
    )
    if binary is None:
        pytest.skip(
            "Orthanc is not installed (Debian's orthanc package; .ci/run installs and starts it) and LIVERSCOPE_TEST_ORTHANC is not set"
        )
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    config = {
        "Name": "liverscope-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [binary, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(60):
        try:
            _get(url + "/system")
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    pytest.skip(f"Orthanc ({binary}) did not start on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    url = os.environ.get("LIVERSCOPE_TEST_ORTHANC")
    if url:
        yield url.rstrip("/")
        return
    proc, url = _start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def stored_study(orthanc, phantom_dir, tmp_path_factory):
    """A three-image synthetic study stored in Orthanc: (Orthanc study ID, Study Instance UID, source SOP Instance UIDs)."""
    files = sorted((phantom_dir / "F2").glob("*.png"))[:3]
    paths, study_uid = write_study(
        tmp_path_factory.mktemp("pacs-study"), [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    )
    stored = [_post(orthanc + "/instances", p.read_bytes()) for p in paths]
    assert len({s["ParentStudy"] for s in stored}) == 1
    return stored[0]["ParentStudy"], study_uid, {pydicom.dcmread(p).SOPInstanceUID for p in paths}


def _series(orthanc: str, study_id: str) -> list[dict]:
    return json.loads(_get(f"{orthanc}/studies/{study_id}/series"))


def test_pacs_round_trip_puts_the_report_into_the_same_study(orthanc, stored_study, trained_run, tmp_path):
    from liverscope.ui.cli import app

    study_id, study_uid, sources = stored_study
    res = CliRunner().invoke(
        app, ["pacs", str(trained_run), study_uid, "--url", orthanc, "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 0, res.output
    assert "stored 4 instance(s)" in res.output  # 3 Secondary Captures and the SR
    series = _series(orthanc, study_id)
    modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
    assert modalities == ["OT", "SR", "US"]  # the new series under the same study, beside the source
    sr_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "SR")
    sr = pydicom.dcmread(io.BytesIO(_get(f"{orthanc}/instances/{sr_series['Instances'][0]}/file")))
    assert sr.StudyInstanceUID == study_uid and sr.PatientID == PATIENT_ID
    cited = {
        inst.ReferencedSOPInstanceUID
        for st in sr.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for inst in se.ReferencedSOPSequence
    }
    assert sources <= cited
    texts = [str(i.TextValue) for i in sr.ContentSequence if "TextValue" in i]
    assert any(t.startswith("Exam result: ") for t in texts)
    sc_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "OT")
    assert len(sc_series["Instances"]) == 3


def test_pacs_leaves_its_own_series_alone_and_names_a_missing_study(
    orthanc, stored_study, trained_run, tmp_path
):
    from liverscope.ui.cli import app

    study_id, _, _ = stored_study
    runner = CliRunner()
    before = len(_series(orthanc, study_id))
    res = runner.invoke(
        app,
        ["pacs", str(trained_run), study_id, "--url", orthanc, "--out", str(tmp_path / "again"), "--no-push"],
    )
    assert res.exit_code == 0, res.output
    assert (
        "3 Secondary Capture(s)" in res.output
    )  # only the three source images analysed, not liverscope's own series
    assert len(_series(orthanc, study_id)) == before  # --no-push stores nothing
    res = runner.invoke(
        app, ["pacs", str(trained_run), "1.2.3.999999", "--url", orthanc, "--out", str(tmp_path / "none")]
    )
    assert res.exit_code == 1 and "no study with Study Instance UID 1.2.3.999999" in res.output
    res = runner.invoke(
        app, ["pacs", str(trained_run), study_id, "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 1 and "cannot reach Orthanc at http://127.0.0.1:9" in res.output
