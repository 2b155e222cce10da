"""The app's exam records (AppTest, no browser): two uploads are one exam, recorded once each, with one
answer on the page; a review is saved beside the analyses; past exams are listed and searchable; with
recording off the page has none of it."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "sqlalchemy", reason="the records extra is not installed: pip install 'liverscope[records]'"
)

from liverscope.records import open_store, pool_probabilities
from liverscope.ui.app_records import HISTORY
from test_app import LABELS, app_run, png_bytes, start  # noqa: F401  (app_run: the fixture)


def _upload_two(at, phantom_dir):
    files = [sorted((phantom_dir / "F3").glob("*.png"))[i] for i in (0, 1)]
    at.file_uploader[0].set_value([(f"scan{i}.png", png_bytes(f), "image/png") for i, f in enumerate(files)])
    at.run()
    assert not at.exception, at.exception


def _text(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n" + "\n".join(c.value for c in at.caption)


def test_two_uploads_are_one_recorded_exam_with_one_answer_and_a_review(
    app_run, phantom_dir, monkeypatch, tmp_path
):
    import numpy as np

    db = tmp_path / "app.sqlite"
    at = start(app_run, monkeypatch, LIVERSCOPE_RECORD="1", LIVERSCOPE_DB=str(db))
    _upload_two(at, phantom_dir)
    key = at.session_state["exam_key"]
    with open_store(db) as store:
        exam = store.get_exam(key)
    assert (
        key.startswith("upload-")
        and len(exam.images) == 2
        and all(im.origin == "app" and im.path is None for im in exam.images)
    )
    a = exam.answer
    assert f"**Exam {key}: {a.label}** ({a.probabilities[a.label]:.1%}) from {a.n_used} image(s)" in _text(at)
    probs = np.array(
        [[im.latest.probabilities[c] for c in LABELS] for im in exam.images if not im.latest.ood]
    )
    if len(probs):
        assert [a.probabilities[c] for c in LABELS] == pytest.approx(pool_probabilities(probs).tolist())
    at.run()  # a redraw records nothing again
    with open_store(db) as store:
        assert store.count()["analyses"] == 2

    form = [r for r in at.radio if r.label == "Review"][0]
    form.set_value("Correct the label")
    [s for s in at.selectbox if s.label == "Right label (when correcting)"][0].set_value("F1")
    [t for t in at.text_input if t.label == "Note"][0].set_value("elastography: F1")
    [b for b in at.button if b.label == "Save review"][0].click()
    at.run()
    assert not at.exception, at.exception
    assert any("Review saved: correct — F1" in s.value for s in at.success)
    with open_store(db) as store:
        reviewed = store.get_exam(key)
    assert (
        reviewed.reviewed_label == "F1"
        and reviewed.review.note == "elastography: F1"
        and reviewed.review.reviewer == "app"
    )
    assert [im.latest.label for im in reviewed.images] == [
        im.latest.label for im in exam.images
    ]  # the analyses as they were


def test_past_exams_are_listed_and_searchable(app_run, phantom_dir, monkeypatch, tmp_path):
    db = tmp_path / "app.sqlite"
    at = start(app_run, monkeypatch, LIVERSCOPE_RECORD="1", LIVERSCOPE_DB=str(db))
    _upload_two(at, phantom_dir)
    key = at.session_state["exam_key"]
    fresh = start(
        app_run, monkeypatch, LIVERSCOPE_RECORD="1", LIVERSCOPE_DB=str(db)
    )  # a new session, nothing uploaded
    assert any(e.label == HISTORY for e in fresh.expander)
    table = fresh.dataframe[0].value
    assert list(table["exam"]) == [key] and int(table["images"].iloc[0]) == 2
    [t for t in fresh.text_input if t.label == "Search exam key"][0].set_value("no-such-exam")
    fresh.run()
    assert any(c.value == "No exams match." for c in fresh.caption) and not fresh.dataframe
    [t for t in fresh.text_input if t.label == "Search exam key"][0].set_value(key[:12])
    fresh.run()
    [s for s in fresh.selectbox if s.label == "Open exam"][0].set_value(key)
    fresh.run()
    assert not fresh.exception, fresh.exception
    assert f"**Exam {key}:" in _text(fresh)


def test_recording_off_keeps_nothing_and_shows_no_exam(app_run, phantom_dir, monkeypatch, tmp_path):
    db = tmp_path / "off.sqlite"
    at = start(app_run, monkeypatch, LIVERSCOPE_RECORD="0", LIVERSCOPE_DB=str(db))
    _upload_two(at, phantom_dir)
    assert not db.exists() and "**Exam " not in _text(at) and not any(e.label == HISTORY for e in at.expander)
