"""Benchmark: browser users of the app and a ``predict --record`` batch on one SQLite file at once (issue 24).

Trains the phantom demo run when none is given, starts ``liverscope serve RUN --db FILE``, opens
``--users`` headless Chromium pages (Playwright, Debian's chromium), and at the same moment starts
``liverscope predict RUN PHANTOMS --record --db FILE --by folder``. Each user uploads two images of
their own exam and waits for the exam's answer. Reported: whether every record is in the database
(users x 2 + the batch's images), whether any page showed an error ("database is locked" or "Exam
records unavailable"), the p95 time from upload to the exam's answer on the page, and the batch's own
p95 recording time per image (its last line).

    python benchmarks/records_browser_load.py [--users 10] [--run runs/demo]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser_app import CHROMIUM, CHROMIUM_ARGS, open_app, serve, upload  # noqa: E402  (tests/browser_app.py)
from liverscope.data.datasets import make_phantoms  # noqa: E402
from liverscope.records import open_store  # noqa: E402


def _train(root: Path) -> Path:
    from liverscope.config import load_config
    from liverscope.training.run import fit

    data = make_phantoms(root / "ph", n_per_class=24, size=64, seed=1)
    cfg = load_config(
        "cpu-quick",
        {
            "data.path": str(data),
            "out_dir": str(root / "runs"),
            "name": "load",
            "data.image_size": 64,
            "data.cache_dir": str(root / "cache"),
            "train.epochs": 4,
            "train.progress": False,
            "train.device": "cpu",
        },
    )
    return fit(cfg)


def _answer(page, started: float) -> tuple[float | None, bool, str | None]:
    """Seconds from the upload to the exam's answer on the page, whether the page shows a records error."""
    try:
        page.get_by_text("Exam upload-").first.wait_for(timeout=600_000)
        seconds = time.perf_counter() - started
        text = page.inner_text("body")
        return seconds, "locked" in text or "Exam records unavailable" in text, None
    except Exception as exc:  # noqa: BLE001 — reported
        return None, True, repr(exc)[:300]


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--run", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run = args.run or _train(root)
        phantoms = (
            root / "ph"
            if (root / "ph").exists()
            else make_phantoms(root / "ph", n_per_class=24, size=64, seed=1)
        )
        images = sorted(p for p in phantoms.rglob("*.png") if "masks" not in p.parts)
        db = root / "load.sqlite"
        with serve(run, root / "serve.log", "--db", str(db)) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            pages = [
                open_app(browser, url, viewport=(1200, 1600), timeout_ms=180_000) for _ in range(args.users)
            ]  # every user's page ready, then all at once:
            batch = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "liverscope",
                    "predict",
                    str(run),
                    str(phantoms),
                    "--out",
                    str(root / "p.csv"),
                    "--record",
                    "--db",
                    str(db),
                    "--by",
                    "folder",
                    "--backend",
                    "torch",
                    "--device",
                    "cpu",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            # Playwright's sync API drives the pages from this thread: every upload goes out first, then the
            # answers are read; the server works on all the sessions (and the batch) at once
            started = []
            for i, (_, page) in enumerate(pages):
                upload(page, images[2 * i : 2 * i + 2])
                started.append(time.perf_counter())
            results = [(i, *_answer(page, started[i])) for i, (_, page) in enumerate(pages)]
            for ctx, _ in pages:
                ctx.close()
            log = batch.communicate(timeout=900)[0]
            browser.close()
        with open_store(db) as store:
            stored = store.count()["analyses"]
    batch_n = len(images)
    times = sorted(s for _, s, _, _ in results if s is not None)
    bad = [(i, e) for i, _, err, e in results if err]
    p95 = times[int(0.95 * (len(times) - 1))] if times else float("nan")
    m = re.search(r"p95 ([0-9.]+) ms per image", log)
    print(
        f"{args.users} browser users (2 images each) + a predict --record batch of {batch_n}: stored {stored} of {2 * args.users + batch_n} analyses; "
        f"{len(bad)} page(s) with an error; upload to exam answer p95 {p95:.1f} s; batch p95 recording {m.group(1) if m else '?'} ms per image"
    )
    for i, e in bad:
        print(f"  user {i}: {e}")


if __name__ == "__main__":
    main()
