"""Benchmark: what recording costs, alone and under load (issue 24).

1. **Overhead per image**: a batch recorder (``predict --record``'s :class:`~liverscope.records.Recorder`)
   records N real image files into a new SQLite file, one transaction each: the file's SHA-256, its
   DICOM header (none for PNG), the exam and image rows and the analysis. Median and p95 per image,
   for ``synchronous=NORMAL`` (the default) and ``FULL`` (``LIVERSCOPE_DB_SYNC=FULL``).
2. **Under load**: ``--users`` writer processes (stand-ins for the app's users: each records one
   analysis, pauses ``--think`` ms, records the next) and one batch writer (as fast as it can) on one
   SQLite file at once. Every writer counts what it recorded and every error; the database must hold
   exactly the sum, no "database is locked" may escape. p95 time per recorded analysis.

    python benchmarks/records.py [--images 200] [--users 10] [--per-user 30] [--think 50]

The model's own time is not included: a recorder is handed finished results (predict's figures are in
the inference section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from liverscope.data.datasets import make_phantoms
from liverscope.inference.results import Result
from liverscope.records import ExamKey, ImageInput, RunInfo, open_store
from liverscope.records.recorder import Recorder

LABELS = ["F0", "F1", "F2", "F3", "F4"]
RUN = RunInfo("bench:resnet10t", "b" * 64, "bench", "torch", "none", 1.2, "/runs/bench")


def _result(path: str, rng: np.random.Generator) -> Result:
    p = rng.dirichlet(np.ones(len(LABELS)))
    probs = dict(zip(LABELS, map(float, p)))
    return Result(
        path, max(probs, key=probs.get), probs, ood_score=float(rng.normal()), ood=False, precision="fp32"
    )


def _pct(ts: list[float], q: float) -> float:
    ts = sorted(ts)
    return 1000 * ts[int(q * (len(ts) - 1))]


def overhead(files: list[Path], sync: str) -> tuple[float, float]:
    """Median and p95 ms per image of a batch recorder on a new database."""
    os.environ["LIVERSCOPE_DB_SYNC"] = sync
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d, open_store(Path(d) / "r.sqlite") as store:
        rec = Recorder(store, RUN, "folder")
        for f in files:
            rec.record(_result(str(f), rng))
        assert store.count()["analyses"] == len(files)
    return _pct(rec.seconds, 0.5), _pct(rec.seconds, 0.95)


def _user(db: str, user: int, n: int, think_s: float, start_at: float, out) -> None:
    rng = np.random.default_rng(user)
    store = open_store(db)
    times, errors = [], []
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(n):
        name = f"user{user}-{i}.png"
        img = ImageInput(name, f"{user:08d}{i:056d}", 1000, None, "app")
        t0 = time.perf_counter()
        try:
            store.record(
                ExamKey(f"app-exam-{user}-{i // 2}", "user"), img, _result(name, rng), RUN, user=f"user{user}"
            )
        except Exception as exc:  # noqa: BLE001 — counted and shown
            errors.append(repr(exc))
        times.append(time.perf_counter() - t0)
        time.sleep(think_s)
    store.close()
    out.put(("user", times, errors))


def _batch(db: str, files: list[str], start_at: float, out) -> None:
    rng = np.random.default_rng(99)
    store = open_store(db)
    rec = Recorder(store, RUN, "folder")
    errors = []
    time.sleep(max(0.0, start_at - time.time()))
    for f in files:
        try:
            rec.record(_result(f, rng))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    store.close()
    out.put(("batch", rec.seconds, errors))


def under_load(files: list[Path], users: int, per_user: int, think_ms: float) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        db = str(Path(d) / "r.sqlite")
        open_store(db).close()
        start_at = time.time() + 10
        procs = [
            ctx.Process(target=_user, args=(db, u, per_user, think_ms / 1000, start_at, out))
            for u in range(users)
        ]
        procs.append(ctx.Process(target=_batch, args=(db, [str(f) for f in files], start_at, out)))
        for p in procs:
            p.start()
        reports = [out.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
        with open_store(db) as store:
            stored = store.count()["analyses"]
    times = [t for _, ts, _ in reports for t in ts]
    user_t = [t for kind, ts, _ in reports if kind == "user" for t in ts]
    batch_t = [t for kind, ts, _ in reports if kind == "batch" for t in ts]
    errors = [e for _, _, es in reports for e in es]
    return {
        "expected": users * per_user + len(files),
        "stored": stored,
        "errors": errors,
        "p95": _pct(times, 0.95),
        "p95_user": _pct(user_t, 0.95),
        "p95_batch": _pct(batch_t, 0.95),
        "median": _pct(times, 0.5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--per-user", type=int, default=30)
    ap.add_argument("--think", type=float, default=50.0, help="ms between one user's analyses")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = make_phantoms(Path(d) / "ph", n_per_class=-(-args.images // 5), size=128, seed=0)
        files = sorted(p for p in root.rglob("*.png") if "masks" not in p.parts)[: args.images]
        for sync in ("NORMAL", "FULL"):
            med, p95 = overhead(files, sync)
            print(
                f"overhead per image, synchronous={sync}: median {med:.1f} ms, p95 {p95:.1f} ms ({len(files)} images)"
            )
        os.environ["LIVERSCOPE_DB_SYNC"] = "NORMAL"
        r = under_load(files, args.users, args.per_user, args.think)
    print(
        f"under load ({args.users} users x {args.per_user} analyses, {args.think:g} ms apart, + a batch of {len(files)}): "
        f"stored {r['stored']} of {r['expected']}, {len(r['errors'])} error(s); per analysis median {r['median']:.1f} ms, "
        f"p95 {r['p95']:.1f} ms (users {r['p95_user']:.1f}, batch {r['p95_batch']:.1f})"
    )
    for e in r["errors"][:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
