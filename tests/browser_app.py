"""The app in a real browser, for the browser tests and ``benchmarks/records_browser_load.py``: Debian's
Chromium and its flags, ``liverscope serve`` on a free port (:func:`serve`), a page on the app once it
has drawn (:func:`open_app`, :func:`wait_for_app`) and an upload through its file input (:func:`upload`).
Not a test module: it imports neither pytest nor Playwright (the caller holds the browser)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("LIVERSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
APP_NOTICE = "Decision support, not a diagnosis"  # on every page of the app once it has drawn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_healthy(proc: subprocess.Popen, url: str, log_path: Path, seconds: float = 90) -> None:
    """Return once Streamlit's health endpoint answers; fail with the server's log when it exits or is
    still silent after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"liverscope serve exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"liverscope serve did not answer in {seconds:.0f} s:\n{log_path.read_text()}"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def serve(run_dir: Path, log_path: Path, *args: str, env: dict | None = None):
    """``liverscope serve RUN_DIR [ARGS]`` on a free port; yields the URL once the server answers."""
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "liverscope.ui.cli", "serve", str(run_dir), "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_healthy(proc, url, log_path)
            yield url
        finally:
            proc.terminate()  # `serve` exec'd Streamlit: this PID is the server itself
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_app(page, url: str, timeout_ms: int = 60_000) -> None:
    """Load the app at ``url`` in ``page`` and wait until it has drawn its notice."""
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(APP_NOTICE).wait_for(timeout=timeout_ms)


def open_app(browser, url: str, viewport: tuple[int, int] = (1400, 2400), timeout_ms: int = 60_000):
    """A new browser context (one user, one Streamlit session) with the app drawn in its page: ``(context,
    page)``. Tall by default: Streamlit scrolls inside the page, so a full-page shot is the viewport."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    wait_for_app(page, url, timeout_ms)
    return context, page


def upload(page, files) -> None:
    """Give ``files`` to the app's uploader, as a user choosing them does."""
    page.locator('input[type="file"]').set_input_files([str(f) for f in files])
