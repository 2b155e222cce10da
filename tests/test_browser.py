"""End-to-end: `liverscope serve` on the trained phantom run, driven by headless Chromium (Playwright).

Needs Debian's ``chromium`` (``apt-get install chromium``) and pip ``playwright``; no browser is
downloaded. Skips with a message when either is missing. A screenshot goes to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from browser_app import (  # tests/ is on sys.path
    CHROMIUM,
    CHROMIUM_ARGS,
    open_app,
    serve,
    upload,
    wait_for_app,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _missing() -> str | None:
    """Why the browser test cannot run here, or None. Checked at collection, before any fixture trains a run."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM} (apt-get install chromium) — browser test skipped"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright) — browser test skipped"
    return None


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_upload_through_the_page(browser, trained_run, phantom_dir, tmp_path):
    from liverscope.inference.predict import Predictor
    from test_app import dicom_bytes, fan_with_burned_in_text  # tests/ is on sys.path (no package)

    good = sorted((phantom_dir / "F4").glob("*.png"))[-1]
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(good.read_bytes()[:150])  # a truncated PNG
    dicom = tmp_path / "DOE_JANE_998877.dcm"
    dicom.write_bytes(dicom_bytes(fan_with_burned_in_text()))  # PatientName DOE^JANE, PatientID MRN-998877
    expected = Predictor.from_run(trained_run).predict_paths([good])
    expected = next(iter(expected))

    ARTIFACTS.mkdir(exist_ok=True)
    with serve(trained_run, tmp_path / "serve.log") as url:
        page = browser.new_page(
            viewport={"width": 1400, "height": 2400}
        )  # tall: Streamlit scrolls inside the page, so a full-page shot is the viewport
        try:
            wait_for_app(page, url)
            upload(page, [good, corrupt, dicom])
            page.get_by_text("Could not analyse broken.png").wait_for(timeout=90_000)
            page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=90_000)
            page.wait_for_timeout(1500)  # let the charts and images finish drawing for the screenshot
            page.screenshot(path=str(ARTIFACTS / "app_upload.png"), full_page=True)

            text = page.inner_text("body")
            # the good image: its panel, predicted label and every class probability
            panel_text = page.locator(".st-key-result-0").inner_text()  # the first upload's result panel
            assert good.name in panel_text
            assert "Predicted class" in panel_text
            assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == expected.label
            for c in expected.probs:
                assert f"{expected.probs[c]:.1%}" in panel_text, (c, panel_text)
            assert "≥F2 significant" in panel_text
            # the corrupt file: a clear message, and the app carried on
            assert "truncated" in text and "re-export" in text
            # the DICOM: analysed, identifiers nowhere on the page
            assert "[redacted]" in text
            for secret in ("DOE", "JANE", "998877", "19600101"):
                assert secret not in text, secret
        finally:
            page.close()


# --------------------------------------------------------------------------------------------------
# Hardening: sessions apart, the server's upload limit, XSRF
# --------------------------------------------------------------------------------------------------

LIMIT_MB = 1


@pytest.fixture(scope="module")
def hardened_url(trained_run, tmp_path_factory):
    """``liverscope serve --max-upload-mb 1``, started with environment variables that try to lift the
    limit and switch XSRF protection off: serve's flags must win."""
    attack = {"STREAMLIT_SERVER_MAX_UPLOAD_SIZE": "500", "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION": "false"}
    with serve(
        trained_run,
        tmp_path_factory.mktemp("serve") / "serve.log",
        "--max-upload-mb",
        str(LIMIT_MB),
        env=attack,
    ) as url:
        yield url


def test_two_sessions_at_once_each_see_their_own_result(
    browser, hardened_url, trained_run, phantom_dir, tmp_path
):
    """Two browser contexts (two users, two Streamlit sessions) upload different images at the same
    time: each page shows its own image's result, and its CSV download holds only its own image."""
    from playwright.sync_api import expect

    from liverscope.inference.predict import Predictor

    files = [sorted((phantom_dir / "F0").glob("*.png"))[0], sorted((phantom_dir / "F4").glob("*.png"))[-1]]
    expected = list(Predictor.from_run(trained_run).predict_paths(files))
    assert expected[0].probs != expected[1].probs
    sessions = [open_app(browser, hardened_url) for _ in files]
    try:
        for (_, page), f in zip(sessions, files):  # both uploads start before either result is drawn
            upload(page, [f])
        for k, ((_context, page), f, want) in enumerate(zip(sessions, files, expected)):
            other = files[1 - k]
            panel = page.locator(".st-key-result-0")
            for c in want.probs:  # every class's probability, as the page finishes drawing its table
                expect(panel).to_contain_text(f"{want.probs[c]:.1%}", timeout=120_000)
            assert f.name in panel.inner_text() and other.name not in page.inner_text("body")
            assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == want.label
            assert page.locator(".st-key-result-1").count() == 0  # one upload, one result panel
            with page.expect_download() as dl:
                page.get_by_text("Download results (CSV)").click()
            csv_text = Path(dl.value.path()).read_text()
            assert f.name in csv_text and other.name not in csv_text
            with page.expect_download() as dl:  # the exam's one-page PDF (app_reports)
                page.get_by_text("Download the exam report (PDF)").click()
            assert Path(dl.value.path()).read_bytes().startswith(b"%PDF")
    finally:
        for context, _ in sessions:
            context.close()


def test_server_refuses_uploads_over_its_limit_and_without_the_xsrf_token(browser, hardened_url, phantom_dir):
    """The page's own uploader request, replayed from the page with other bodies: the server answers a
    body over ``--max-upload-mb`` with 413 (the limit holds without the widget's check), and a request
    without the session's XSRF token with 403 (protection stayed on despite the environment)."""
    from playwright.sync_api import expect

    context, page = open_app(browser, hardened_url)
    try:
        expect(page.get_by_text(f"up to {LIMIT_MB} MB each")).to_be_visible(
            timeout=60_000
        )  # the page's limit is the server's
        urls: list[str] = []
        page.on(
            "request",
            lambda r: urls.append(r.url) if "/_stcore/upload_file/" in r.url and r.method == "PUT" else None,
        )
        upload(page, sorted((phantom_dir / "F2").glob("*.png"))[:1])
        page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=120_000)
        assert urls, "the uploader made no upload request"
        token = next(c["value"] for c in context.cookies() if c["name"] == "_streamlit_xsrf")
        put = """async ([url, size, token]) => {
            const form = new FormData();
            form.append("UploadedFile", new Blob([new Uint8Array(size)], {type: "image/png"}), "scan.png");
            const headers = token ? {"X-Xsrftoken": token} : {};
            try {
                const r = await fetch(url, {method: "PUT", body: form, headers: headers, credentials: "same-origin"});
                return r.status;
            } catch (e) {
                return "no answer: " + e;
            }
        }"""
        small, big = 64 * 1024, (LIMIT_MB + 1) * 2**20
        assert page.evaluate(put, [urls[-1], small, token]) in (200, 204)  # the replay itself is accepted
        assert page.evaluate(put, [urls[-1], big, token]) == 413  # too large: refused by the server
        assert page.evaluate(put, [urls[-1], small, None]) == 403  # no XSRF token: refused
    finally:
        context.close()
