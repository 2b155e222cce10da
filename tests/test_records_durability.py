"""The records under stress: a ``predict --record`` batch killed with SIGKILL loses no committed
analysis and leaves a sound database; several writer processes (each with threads) on one SQLite file
(and on the PostgreSQL server where there is one) lose no record and never show "database is locked"."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip(
    "sqlalchemy", reason="the records extra is not installed: pip install 'liverscope[records]'"
)

from liverscope.records import ExamKey, open_store
from test_records_store import LABELS, RUN, db, image, result  # noqa: F401  (db: the sqlite/postgresql fixture)


def _committed(db_file: Path) -> int:
    """Analyses committed so far, read by another connection (WAL: readers never wait)."""
    try:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT count(*) FROM analyses").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_kill_9_during_a_batch_loses_no_committed_analysis(trained_run, phantom_dir, tmp_path):
    db_file = tmp_path / "r.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "liverscope",
        "-q",
        "predict",
        str(trained_run),
        str(phantom_dir),
        "--out",
        str(tmp_path / "p.csv"),
        "--record",
        "--db",
        str(db_file),
        "--by",
        "folder",
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    deadline = time.monotonic() + 300
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        seen = _committed(db_file)
        if seen >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, (
        f"the batch ended before it could be killed ({seen} recorded): {proc.stdout.read().decode()[-2000:]}"
    )
    seen = _committed(db_file)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    total = sum(1 for _ in phantom_dir.rglob("*.png") if "masks" not in _.parts)
    with open_store(db_file) as store:  # opens (recovers the WAL) and reads every record back whole
        n = store.count()["analyses"]
        exams = store.find_exams(limit=None)
        ok = store.engine.connect().exec_driver_sql("PRAGMA integrity_check").scalar()
    assert ok == "ok"
    assert seen <= n < total, f"{seen} committed before the kill, {n} after it, of {total}"
    for e in exams:
        for im in e.images:
            assert all(len(a.probabilities) == len(a.labels) == 5 for a in im.analyses)


def _writer(db_url: str, worker: int, threads: int, per_thread: int, start_at: float, out) -> None:
    """One process: ``threads`` threads, each recording ``per_thread`` analyses into three shared exams
    (every writer records the same images: the same exam and image rows are raced for)."""
    store = open_store(db_url)
    times, errors = [], []

    def run(t: int):
        time.sleep(max(0.0, start_at - time.time()))
        for i in range(per_thread):
            name = f"t{t}-{i // 2}.png"  # two analyses per image per writer; every writer records the same images
            t0 = time.perf_counter()
            try:
                store.record(
                    ExamKey(f"exam-{(i // 2) % 3}"),
                    image(name),
                    result(name, [0.1, 0.2, 0.4, 0.2, 0.1]),
                    RUN,
                    user=f"w{worker}",
                )
            except Exception as exc:  # noqa: BLE001 — every failure is reported to the test
                errors.append(repr(exc))
            times.append(time.perf_counter() - t0)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    store.close()
    out.put((worker, times, errors))


def test_concurrent_writers_lose_no_record(db):
    procs, threads, per_thread = 4, 3, 12
    with open_store(db):  # migrate once: writers then race for rows, not for the schema
        pass
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 8  # spawned interpreters take seconds to import: all begin together
    workers = [
        ctx.Process(target=_writer, args=(db, w, threads, per_thread, start_at, out)) for w in range(procs)
    ]
    for w in workers:
        w.start()
    reports = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    errors = [e for _, _, errs in reports for e in errs]
    assert not errors, errors[:3]
    with open_store(db) as store:
        counts = store.count()
        users = {a.user for e in store.find_exams(limit=None) for im in e.images for a in im.analyses}
    expected = procs * threads * per_thread
    assert (
        counts["analyses"] == expected
        and counts["images"] == threads * per_thread // 2
        and counts["exams"] == 3
    )
    assert users == {f"w{w}" for w in range(procs)}
    times = sorted(t for _, ts, _ in reports for t in ts)
    p95 = times[int(0.95 * (len(times) - 1))]
    print(
        f"\n{procs} processes x {threads} threads, {expected} analyses: p95 {1000 * p95:.1f} ms per recorded analysis"
    )
