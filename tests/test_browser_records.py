"""End-to-end exam records in a real browser (headless Chromium, Playwright; skipped with a message
when either is missing): two images of one exam analysed through the page give one exam answer; the
clinician corrects it with a note; after a page reload and after a server restart the exam is found
among the past exams with its review."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "sqlalchemy", reason="the records extra is not installed: pip install 'liverscope[records]'"
)

from browser_app import serve, upload, wait_for_app  # tests/ is on sys.path (no package)
from liverscope.records import open_store
from test_browser import ARTIFACTS, _missing, browser  # noqa: F401  (browser: the fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label`` (opened again when a rerun of the
    page closed its list before the option could be clicked)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).locator("input")
    for _attempt in range(5):
        box.click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
            return
        except Exception:  # noqa: BLE001 — the list closed under a rerun: open it again
            page.keyboard.press("Escape")
            page.wait_for_timeout(1_000)
    raise AssertionError(f"option {option!r} never appeared in the selectbox {label!r}")


def _open_past_exam(page, key: str) -> str:
    """Open exam ``key`` among the past exams; the page's text once its review is drawn."""
    page.get_by_text("Past exams").click()
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Open exam").wait_for(timeout=30_000)
    _choose(page, "Open exam", key)
    page.get_by_text(f"Exam {key}:").first.wait_for(timeout=30_000)
    page.get_by_text("reviewed in the browser").first.wait_for(timeout=30_000)
    return page.inner_text("body")


def test_exam_recorded_reviewed_and_found_after_reload_and_restart(
    browser, trained_run, phantom_dir, tmp_path
):
    db = tmp_path / "browser.sqlite"
    files = [str(p) for p in sorted((phantom_dir / "F4").glob("*.png"))[:2]]
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(trained_run, tmp_path / "serve1.log", "--db", str(db)) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        try:
            wait_for_app(page, url)
            upload(page, files)
            page.get_by_text("Exam upload-").first.wait_for(timeout=120_000)
            with open_store(db) as store:
                (exam,) = store.find_exams()
            a = exam.answer
            assert len(exam.images) == 2 and all(im.origin == "app" for im in exam.images)
            text = page.inner_text("body")
            assert (
                f"Exam {exam.key}: {a.label}" in text and f"from {a.n_used} image(s)" in text
            )  # one answer for the two images

            page.get_by_text("Correct the label").click()
            _choose(page, "Right label (when correcting)", "F1")
            page.get_by_label("Note").fill("reviewed in the browser")
            page.get_by_role("button", name="Save review").click()
            page.get_by_text("Review saved: correct — F1").wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "app_exam_review.png"), full_page=True)

            page.reload()  # the uploads are gone with the page; the exam is not
            wait_for_app(page, url)
            text = _open_past_exam(page, exam.key)
            assert "correct — F1" in text and "reviewed in the browser" in text
        finally:
            page.close()
    with serve(
        trained_run, tmp_path / "serve2.log", "--db", str(db)
    ) as url:  # a new server on the same database
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        try:
            wait_for_app(page, url)
            text = _open_past_exam(page, exam.key)
            assert f"Exam {exam.key}: {a.label}" in text and "correct — F1" in text, text[-1500:]
        finally:
            page.close()
    with open_store(db) as store:
        final = store.get_exam(exam.key)
    assert final.reviewed_label == "F1" and final.review.note == "reviewed in the browser"
