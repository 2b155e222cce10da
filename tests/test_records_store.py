"""The exam-records store on SQLite (every run) and on PostgreSQL (where ``LIVERSCOPE_TEST_PG`` names a
server, as ``.ci/run`` does): migrations on open, analyses and reviews recorded and read back, the
exam's one answer, searches, and the errors a user meets."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

pytest.importorskip(
    "sqlalchemy", reason="the records extra is not installed: pip install 'liverscope[records]'"
)

from liverscope.errors import LiverscopeError
from liverscope.inference.results import Result
from liverscope.records import ExamKey, ImageInput, RunInfo, open_store, pool_probabilities
from liverscope.records.engine import current_revision, database_url, head_revision

PG_ENV = "LIVERSCOPE_TEST_PG"
LABELS = ["F0", "F1", "F2", "F3", "F4"]
RUN = RunInfo("phantom-run:resnet10t", "a" * 64, "0.1.0", "torch", "none", 1.3, "/runs/phantom-run")


def _pg_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A fresh database: a SQLite file, or a new schema-less database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "records.sqlite")
        return
    url = _pg_url()
    if url is None:
        pytest.skip(f"no PostgreSQL server: {PG_ENV} is not set (.ci/run starts one; see docs/records.md)")
    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(database_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    base = database_url(url).rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def result(name: str, probs, ood: bool | None = False) -> Result:
    p = dict(zip(LABELS, map(float, probs)))
    return Result(name, max(p, key=p.get), p, ood_score=2.0 if ood else 0.5, ood=ood, precision="fp32")


def image(name: str, origin: str = "predict") -> ImageInput:
    return ImageInput(name, (name.encode().hex() * 64)[:64], 1234, f"/data/{name}", origin)


def test_open_migrates_to_head_and_reopens(db):
    with open_store(db) as store:
        assert current_revision(store.engine) == head_revision()
        assert store.count() == {"exams": 0, "images": 0, "analyses": 0, "reviews": 0}
    with open_store(db) as store:  # a second open finds the schema current
        assert current_revision(store.engine) == head_revision()


def test_exam_answer_pools_unflagged_images_and_counts_the_rest(db):
    with open_store(db) as store:
        ex = ExamKey("st-0011223344556677", "study", "pt-8899aabbccddeeff")
        store.record(ex, image("a.png"), result("a.png", [0.1, 0.1, 0.6, 0.1, 0.1]), RUN)
        store.record(ex, image("b.png"), result("b.png", [0.1, 0.2, 0.3, 0.35, 0.05]), RUN)
        store.record(ex, image("c.png"), result("c.png", [0.9, 0.025, 0.025, 0.025, 0.025], ood=True), RUN)
        exam = store.get_exam(ex.key)
    a = exam.answer
    assert (a.n_images, a.n_used, a.n_flagged) == (3, 2, 1)
    expected = pool_probabilities(np.array([[0.1, 0.1, 0.6, 0.1, 0.1], [0.1, 0.2, 0.3, 0.35, 0.05]]))
    assert [a.probabilities[c] for c in LABELS] == pytest.approx(expected.tolist())
    assert a.label == "F2" and a.n_agree == 1  # b.png's own label is F3
    assert a.spread == pytest.approx(np.std([0.6, 0.3]))
    assert a.endpoints["≥F2"] == pytest.approx(sum(expected[2:]))
    assert exam.patient == "pt-8899aabbccddeeff" and exam.flagged
    img = exam.images[0]
    assert (
        img.latest.probabilities == dict(zip(LABELS, [0.1, 0.1, 0.6, 0.1, 0.1]))
        and img.latest.run_fingerprint == RUN.run_fingerprint
    )


def test_a_second_analysis_is_added_and_the_latest_model_answers(db):
    other = RunInfo("other:resnet10t", "b" * 64, "0.1.0", "onnx", "flip", 1.0)
    with open_store(db) as store:
        ex = ExamKey("exam-7", "folder")
        store.record(ex, image("a.png"), result("a.png", [0.7, 0.1, 0.1, 0.05, 0.05]), RUN)
        store.record(ex, image("a.png"), result("a.png", [0.05, 0.05, 0.1, 0.1, 0.7]), other)
        exam = store.get_exam("exam-7")
    assert (
        len(exam.images) == 1 and len(exam.images[0].analyses) == 2
    )  # the same bytes: one image, two analyses
    assert exam.answer.label == "F4" and exam.answer.run_fingerprint == "b" * 64


def test_review_is_stored_beside_the_analysis_and_never_overwrites_it(db):
    with open_store(db) as store:
        ex = ExamKey("exam-1", "folder")
        store.record(ex, image("a.png"), result("a.png", [0.1, 0.6, 0.1, 0.1, 0.1]), RUN)
        first = store.review("exam-1", agree=True, note="looks right")
        store.review("exam-1", label="F3", note="elastography says F3", reviewer="dr-x")
        exam = store.get_exam("exam-1")
        with pytest.raises(LiverscopeError, match="not one of the model's labels"):
            store.review("exam-1", label="F9")
        with pytest.raises(LiverscopeError, match="not both or neither"):
            store.review("exam-1", label="F2", agree=True)
        with pytest.raises(LiverscopeError, match="no exam 'nope'"):
            store.review("nope", agree=True)
    assert (first.verdict, first.label, first.answer_label) == ("agree", "F1", "F1")
    assert [r.label for r in exam.reviews] == ["F1", "F3"] and exam.review.reviewer == "dr-x"
    assert exam.reviewed_label == "F3" and exam.disagreement
    assert exam.images[0].latest.label == "F1"  # the analysis is as it was


def test_find_exams_by_key_flag_disagreement_and_review(db):
    with open_store(db) as store:
        store.record(ExamKey("clinic-a-1"), image("a.png"), result("a.png", [0.6, 0.1, 0.1, 0.1, 0.1]), RUN)
        store.record(
            ExamKey("clinic-a-2"), image("b.png"), result("b.png", [0.6, 0.1, 0.1, 0.1, 0.1], ood=True), RUN
        )
        store.record(ExamKey("clinic-b-1"), image("c.png"), result("c.png", [0.1, 0.1, 0.1, 0.1, 0.6]), RUN)
        store.review("clinic-b-1", label="F3")
        assert [e.key for e in store.find_exams(search="clinic-a")] == ["clinic-a-2", "clinic-a-1"]
        assert [e.key for e in store.find_exams(flagged=True)] == ["clinic-a-2"]
        assert [e.key for e in store.find_exams(disagreement=True)] == ["clinic-b-1"]
        assert [e.key for e in store.find_exams(reviewed=False, limit=1)] == ["clinic-a-2"]
        flagged = store.get_exam("clinic-a-2")
    assert flagged.answer.label is None and flagged.answer.n_flagged == 1  # every image flagged: no answer


def test_a_skipped_file_is_not_recorded_and_bad_keys_are_refused(tmp_path):
    with open_store(tmp_path / "r.sqlite") as store:
        with pytest.raises(LiverscopeError, match="not analysed"):
            store.record(ExamKey("e"), image("x.png"), Result("x.png", error="truncated"), RUN)
        with pytest.raises(LiverscopeError, match="1 to 128 characters"):
            store.record(ExamKey("  "), image("x.png"), result("x.png", [0.2] * 5), RUN)
        assert store.count()["analyses"] == 0


def test_database_urls_and_bad_locations(tmp_path, monkeypatch):
    assert database_url(tmp_path / "a.sqlite") == f"sqlite:///{tmp_path / 'a.sqlite'}"
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("LIVERSCOPE_DB", str(tmp_path / "env.sqlite"))
    assert database_url(None).endswith("env.sqlite")
    with pytest.raises(LiverscopeError, match="is a folder"):
        open_store(tmp_path)
    (tmp_path / "junk.sqlite").write_bytes(b"this is no database" * 100)
    with pytest.raises(LiverscopeError, match="cannot open the records database"):
        open_store(tmp_path / "junk.sqlite")
