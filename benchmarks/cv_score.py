"""Table cells for ``benchmarks/gpu.sh`` (issue 23): a cv run's out-of-fold figures, its hold-out manifest,
and the fold ensemble's figures on that hold-out (as ``cv`` scored it, and as ``evaluate --tta flip
--ablation tissue,periphery`` scored it).

    python benchmarks/cv_score.py oof RUN                 # balanced acc. | macro AUC | QWK | by source
    python benchmarks/cv_score.py manifest RUN OUT.csv    # the run's hold-out rows (absolute paths, label)
    python benchmarks/cv_score.py holdout RUN EVAL_DIR    # OOF | ensemble | ensemble + flip | shortcut skill
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from liverscope import rundir
from liverscope.utils import atomic_write_csv


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _figures(metrics: dict, by_source: dict) -> str:
    """``bacc / AUC / QWK, A a, B b`` of one scored set (a metrics dict and its by-source groups)."""
    cells = [metrics.get(k) for k in ("balanced_accuracy", "macro_auc", "quadratic_kappa")]
    head = " / ".join("–" if c is None else f"{c:.3f}" for c in cells)
    groups = (by_source or {}).get("groups") or {}
    return head + "".join(f", {s} {g['balanced_accuracy']:.3f}" for s, g in groups.items())


def oof(run: Path) -> str:
    """A cv run's out-of-fold figures as table cells: balanced accuracy | macro AUC | QWK | balanced
    accuracy per source; else the mean of its trained folds' validation balanced accuracy."""
    metrics = _read(run / "metrics.json")
    scored = metrics.get("oof") or {}
    if isinstance(scored.get("balanced_accuracy"), (int, float)):
        groups = (metrics.get("oof_by_source") or {}).get("groups") or {}
        by_source = ", ".join(f"{s} {g['balanced_accuracy']:.3f}" for s, g in groups.items())
        cells = [scored.get(k) for k in ("balanced_accuracy", "macro_auc", "quadratic_kappa")]
        return " | ".join("" if c is None else f"{c:.3f}" for c in cells) + f" | {by_source}"
    folds = [
        _read(f).get("validation", {}).get("balanced_accuracy")
        for f in sorted(run.glob("folds/*/model.json"))
    ]
    folds = [f for f in folds if isinstance(f, (int, float))]
    if not folds:
        return "none (see the log) | | |"
    return f"{sum(folds) / len(folds):.3f} (validation, {len(folds)} fold(s)) | | |"


def manifest(run: Path, out: Path) -> int:
    """Write the run's hold-out rows (``split == test``) as a manifest of absolute paths; their count."""
    samples, split, _ = rundir.read_split(run / rundir.SPLIT)
    test = [s for s, part in zip(samples, split) if part == "test"]
    atomic_write_csv(out, ("path", "label"), [(str(s.path.resolve()), s.label) for s in test])
    return len(test)


def holdout(run: Path, evaluated: Path) -> str:
    """Cells: out of fold | the ensemble on the hold-out (cv) | with flip TTA (evaluate) | shortcut skill
    above chance plain / tissue blanked / periphery blanked, overall and per source."""
    metrics, ev = _read(run / "metrics.json"), _read(evaluated / "metrics.json")
    short = ev.get("shortcut") or {}

    def skill(part: dict) -> str:
        return " / ".join(
            f"{part.get(k, {}).get('skill', float('nan')):+.3f}" for k in ("plain", "tissue", "periphery")
        )

    shortcut = "; ".join(
        [f"all {skill(short.get('overall') or {})}"]
        + [f"{s} {skill(p)}" for s, p in (short.get("by_source") or {}).items()]
    )
    return " | ".join(
        [
            _figures(metrics.get("oof") or {}, metrics.get("oof_by_source")),
            _figures(metrics.get("test") or {}, metrics.get("test_by_source")),
            _figures(ev.get("test") or {}, ev.get("test_by_source")),
            shortcut,
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["oof", "manifest", "holdout"])
    ap.add_argument("run", type=Path)
    ap.add_argument(
        "other", type=Path, nargs="?", help="manifest: the CSV to write; holdout: evaluate's output folder"
    )
    a = ap.parse_args()
    if a.what == "oof":
        print(oof(a.run))
    elif a.other is None:
        ap.error(f"{a.what} needs a second path")
    elif a.what == "manifest":
        print(f"{manifest(a.run, a.other)} hold-out images → {a.other}")
    else:
        print(holdout(a.run, a.other))
    return 0


if __name__ == "__main__":
    sys.exit(main())
