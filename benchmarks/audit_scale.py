"""The audit at scale (issue 14): `liverscope audit` on 10k, 30k and 100k synthetic images with planted
exact copies and near-duplicates; wall time, time per image, peak memory, planted duplicates found and
false merges.

Each set is written once under OUT/images-N (reused when it exists). Images are small smooth
grey phantoms (64x64 PNG, a random 6x6 field upsampled plus fine texture, distinct from each other), of
which a share is planted again as a byte-identical copy and another share as a near-duplicate (the same
image brighter by 6 grey levels and re-encoded as JPEG, quality 92: a re-export of the same frame). Ground truth: every copy must land in
its original's duplicate group, and no two originals may share a group.

    python benchmarks/audit_scale.py --sizes 10000 30000 100000

Each audit runs as its own `liverscope audit` process, so its peak resident memory (``os.wait4``'s
resource usage of that child) is the audit's alone.
Results are appended to OUT/audit_scale.jsonl as each size finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _phantom(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    field = rng.uniform(0, 255, (6, 6)).astype(np.float32)
    img = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 4, img.shape).astype(np.float32)  # speckle-like fine texture
    return np.clip(img, 0, 255).astype(np.uint8)


def write_set(root: Path, n: int, exact_rate: float, near_rate: float, seed: int = 0) -> dict:
    """Write ``n`` files (originals + planted copies) in two class folders; return the ground truth."""
    truth_path = root / "truth.json"
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    rng = np.random.default_rng(seed)
    n_exact, n_near = int(n * exact_rate), int(n * near_rate)
    n_orig = n - n_exact - n_near
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
    originals = []
    for i in range(n_orig):
        path = root / ("a" if i % 2 else "b") / f"img{i:06d}.png"
        img = _phantom(rng)
        cv2.imwrite(str(path), img)
        originals.append((str(path), img))
    copies = []  # (copy path, original path, kind)
    picks = rng.choice(n_orig, n_exact + n_near, replace=False)
    for j, k in enumerate(picks):
        src, img = originals[k]
        folder = Path(src).parent
        if j < n_exact:
            dst = folder / f"copy{j:06d}.png"
            dst.write_bytes(Path(src).read_bytes())
            copies.append((str(dst), src, "exact"))
        else:
            shifted = np.clip(img.astype(np.int16) + 6, 0, 255).astype(np.uint8)
            dst = folder / f"near{j:06d}.jpg"
            cv2.imwrite(str(dst), shifted, [cv2.IMWRITE_JPEG_QUALITY, 92])
            copies.append((str(dst), src, "near"))
    truth = {"n": n, "originals": [p for p, _ in originals], "copies": copies}
    truth_path.write_text(json.dumps(truth))
    return truth


def run_audit(data: Path, out: Path) -> tuple[float, float, dict]:
    """Run ``liverscope audit`` in a child process: (seconds, peak RSS in MiB of that child, audit.json).
    ``os.wait4`` returns the resource usage of exactly that child."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "liverscope", "-q", "audit", str(data), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"audit failed ({status}):\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, json.loads((out / "audit.json").read_text())


def score(truth: dict, audit: dict) -> dict:
    group = audit["group_id"]
    found = {"exact": 0, "near": 0}
    planted = {"exact": 0, "near": 0}
    for dst, src, kind in truth["copies"]:
        planted[kind] += 1
        found[kind] += int(group.get(dst) is not None and group.get(dst) == group.get(src))
    by_group: dict = {}
    for p in truth["originals"]:
        by_group.setdefault(group.get(p), []).append(p)
    false_merges = sum(len(v) - 1 for k, v in by_group.items() if k is not None and len(v) > 1)
    return {
        "planted_exact": planted["exact"],
        "found_exact": found["exact"],
        "planted_near": planted["near"],
        "found_near": found["near"],
        "false_merges": false_merges,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "audit_scale")
    ap.add_argument("--exact-rate", type=float, default=0.05)
    ap.add_argument("--near-rate", type=float, default=0.05)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sorted(args.sizes):
        t0 = time.perf_counter()
        truth = write_set(args.out / f"images-{n}", n, args.exact_rate, args.near_rate)
        written = time.perf_counter() - t0
        load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
        seconds, peak_mib, audit = run_audit(args.out / f"images-{n}", args.out / f"audit-{n}")
        row = {
            "n": n,
            "seconds": round(seconds, 1),
            "ms_per_image": round(1000 * seconds / n, 3),
            "peak_rss_mib": round(peak_mib, 1),
            **score(truth, audit),
            "write_seconds": round(written, 1),
            "cpus": os.cpu_count(),
            "load_before": round(load_before, 2),
        }
        rows.append(row)
        with open(args.out / "audit_scale.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    base = rows[0]["ms_per_image"]
    for r in rows:
        print(
            f"n={r['n']:>7}: {r['seconds']:7.1f}s, {r['ms_per_image']:.3f} ms/image ({r['ms_per_image'] / base:.2f}x of n={rows[0]['n']}), "
            f"peak {r['peak_rss_mib']:.0f} MiB, exact {r['found_exact']}/{r['planted_exact']}, near {r['found_near']}/{r['planted_near']}, "
            f"false merges {r['false_merges']}"
        )


if __name__ == "__main__":
    main()
