"""``predict --record`` / ``--by`` and ``liverscope records list|show|review|export`` end to end with the
phantom run: what is recorded equals what predict wrote, exams are grouped as asked, DICOM identifiers
never reach the database, reviews feed a manifest that train/cv read as it is."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip(
    "sqlalchemy", reason="the records extra is not installed: pip install 'liverscope[records]'"
)

from liverscope.data.datasets import make_phantom, read_manifest
from liverscope.records import open_store
from liverscope.ui.cli import app
from test_dicom import write_dicom  # tests/ is on sys.path (no package)

runner = CliRunner()


@pytest.fixture
def exam_folders(phantom_dir, tmp_path) -> Path:
    """Two exams as folders (3 and 2 images) and an unreadable file in the first."""
    root = tmp_path / "exams"
    picks = {
        "exam-A": ["F1/F1_0000.png", "F1/F1_0001.png", "F2/F2_0000.png"],
        "exam-B": ["F4/F4_0000.png", "F4/F4_0001.png"],
    }
    for exam, files in picks.items():
        (root / exam).mkdir(parents=True)
        for f in files:
            shutil.copy(phantom_dir / f, root / exam / Path(f).name)
    (root / "exam-A" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def _predict(run, inputs, out, *extra):
    res = runner.invoke(
        app,
        [
            "predict",
            str(run),
            *map(str, inputs),
            "--out",
            str(out),
            "--backend",
            "torch",
            "--device",
            "cpu",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return res.output


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_predict_record_by_folder_records_what_it_wrote(trained_run, exam_folders, tmp_path):
    db = tmp_path / "r.sqlite"
    out = _predict(
        trained_run, [exam_folders], tmp_path / "p.csv", "--record", "--db", str(db), "--by", "folder"
    )
    assert "exam exam-A:" in out and "exam exam-B:" in out and "skipped 1 file" in out
    written = {Path(r["file"]).name: r for r in _rows(tmp_path / "p.csv") if not r["error"]}
    with open_store(db) as store:
        assert store.count()["analyses"] == 5
        a, b = store.get_exam("exam-A"), store.get_exam("exam-B")
    assert (a.key_source, len(a.images), len(b.images)) == ("folder", 3, 2)
    for im in a.images + b.images:
        row, x = written[im.name], im.latest
        assert x.label == row["prediction"] and im.path == str(
            exam_folders / im.path.split("/")[-2] / im.name
        )
        assert all(abs(x.probabilities[c] - float(row[f"prob_{c}"])) < 1e-6 for c in x.labels)
        assert (
            x.backend == "torch"
            and x.precision == row["precision"]
            and x.model_id.startswith("phantom-run:")
            and len(x.run_fingerprint) == 64
        )
    exams = {r["exam"]: r for r in _rows(tmp_path / "p_exams.csv")}
    assert exams["exam-A"]["prediction"] == a.answer.label and int(exams["exam-A"]["images"]) == 3
    # a second batch over the same files adds analyses, not images
    _predict(
        trained_run,
        [exam_folders / "exam-B"],
        tmp_path / "p2.csv",
        "--record",
        "--db",
        str(db),
        "--by",
        "folder",
    )
    with open_store(db) as store:
        assert store.count() == {"exams": 2, "images": 5, "analyses": 7, "reviews": 0}


def test_by_group_reads_the_manifest_and_by_alone_records_nothing(
    trained_run, phantom_dir, tmp_path, monkeypatch
):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,group,source\n"
        + "".join(
            f"{phantom_dir}/F0/F0_000{i}.png,F0,{'g1' if i < 2 else 'g2'},scanner-x\n" for i in range(3)
        )
    )
    monkeypatch.setenv("LIVERSCOPE_DB", str(tmp_path / "default.sqlite"))
    out = _predict(trained_run, [manifest], tmp_path / "p.csv", "--by", "group")
    assert "exam g1:" in out and "exam g2:" in out
    assert not (tmp_path / "default.sqlite").exists()  # --by without --record keeps nothing
    _predict(trained_run, [manifest], tmp_path / "p.csv", "--by", "group", "--record")
    with open_store(tmp_path / "default.sqlite") as store:
        g1 = store.get_exam("g1")
    assert (
        len(g1.images) == 2 and {im.source for im in g1.images} == {"scanner-x"} and g1.key_source == "group"
    )


def test_by_study_keys_dicom_exams_by_hash_and_stores_no_identifier(trained_run, tmp_path):
    data = tmp_path / "dicom"
    data.mkdir()
    secrets = ["MRN-5521-77", "Doe^Jane", "1.2.826.0.1.3680043.8.498.5521"]
    for i in range(2):
        write_dicom(
            data / f"img{i}.dcm",
            make_phantom(2, 2, size=64, seed=i)[0],
            patient_id=secrets[0],
            name=secrets[1],
            study_uid=secrets[2],
        )
    shutil.copy(_png(tmp_path), data / "other.png")
    db = tmp_path / "r.sqlite"
    out = _predict(trained_run, [data], tmp_path / "p.csv", "--record", "--db", str(db), "--by", "study")
    with open_store(db) as store:
        exams = store.find_exams()
    study = next(e for e in exams if e.key_source == "study")
    assert study.key.startswith("st-") and study.patient.startswith("pt-") and len(study.images) == 2
    assert study.images[0].frames == 1 and f"exam {study.key}:" in out
    assert any(
        e.key_source == "file" and e.key.startswith("img-") for e in exams
    )  # a PNG is an exam of its own
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("r.sqlite*"))
    assert not any(s.encode() in raw for s in secrets), "a DICOM identifier reached the database"


def _png(tmp_path: Path) -> Path:
    from PIL import Image

    p = tmp_path / "one.png"
    Image.fromarray(make_phantom(0, 2, size=64, seed=9)[0]).save(p)
    return p


def test_records_commands_review_and_export_a_manifest_train_reads(trained_run, exam_folders, tmp_path):
    db = str(tmp_path / "r.sqlite")
    _predict(trained_run, [exam_folders], tmp_path / "p.csv", "--record", "--db", db, "--by", "folder")
    listed = runner.invoke(app, ["records", "list", "--db", db])
    assert listed.exit_code == 0 and "exam-A" in listed.output and "exam-B" in listed.output, listed.output
    shown = runner.invoke(app, ["records", "show", "exam-A", "--db", db])
    assert shown.exit_code == 0 and "F1_0000.png" in shown.output and "answer:" in shown.output, shown.output
    assert (
        runner.invoke(
            app, ["records", "review", "exam-A", "--label", "F3", "--note", "biopsy F3", "--db", db]
        ).exit_code
        == 0
    )
    assert runner.invoke(app, ["records", "review", "exam-B", "--agree", "--db", db]).exit_code == 0
    bad = runner.invoke(app, ["records", "review", "exam-B", "--label", "F9", "--db", db])
    assert bad.exit_code == 1 and "not one of the model's labels" in bad.output
    missing = runner.invoke(app, ["records", "show", "exam-Z", "--db", db])
    assert missing.exit_code == 1 and "no exam 'exam-Z'" in missing.output
    shown = runner.invoke(app, ["records", "show", "exam-A", "--db", db])
    assert "correct F3" in shown.output and "biopsy F3" in shown.output
    assert "exam-A" in runner.invoke(app, ["records", "list", "--db", db, "--disagreement"]).output
    out = tmp_path / "reviewed.csv"
    res = runner.invoke(app, ["records", "export", "--out", str(out), "--db", db])
    assert res.exit_code == 0 and "exported 5 image(s) of 2 reviewed exam(s)" in res.output, res.output
    samples, classes = read_manifest(out)
    with open_store(db) as store:
        b_label = store.get_exam("exam-B").answer.label
    by_exam = {s.path.parent.name: (s.label, s.group) for s in samples}
    assert by_exam["exam-A"] == ("F3", "exam-A") and by_exam["exam-B"] == (b_label, "exam-B")
    assert len(samples) == 5 and all(s.path.is_file() for s in samples)


def test_usage_errors_come_before_any_work(tmp_path):
    res = runner.invoke(
        app, ["predict", str(tmp_path / "no-run"), str(tmp_path), "--db", str(tmp_path / "r.sqlite")]
    )
    assert res.exit_code == 2 and "--db names where --record writes" in res.output
    res = runner.invoke(
        app, ["records", "review", "k", "--agree", "--label", "F1", "--db", str(tmp_path / "r.sqlite")]
    )
    assert res.exit_code == 2 and "either --agree" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "no-run"), str(tmp_path), "--by", "bogus"])
    assert res.exit_code == 2
    assert not (tmp_path / "r.sqlite").exists()  # nothing was opened
