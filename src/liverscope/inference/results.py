"""What a prediction is and how it is written: :class:`Result` (one file's label, probabilities,
fibrosis endpoints and out-of-distribution flag, or the reason it was skipped), the CSV/JSON columns,
and the streaming, atomic writer that ``liverscope predict`` and the app use. No model here: the
:class:`~liverscope.inference.predict.Predictor` makes the results."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from liverscope.labels import endpoint_column, endpoint_keys, endpoint_probabilities
from liverscope.utils import atomic_path


@dataclass
class Result:
    """Prediction for one file (``error`` set and ``label`` ``None`` when the file was skipped).

    ``ood_score`` is the out-of-distribution score (higher = more unlike the training images) and ``ood``
    whether it is above the run's threshold; both ``None`` for a run without a detector. ``precision``
    is the numeric precision the model ran in (``fp32``, ``bf16``, ``int8``).
    """

    path: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    logits: list[float] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None
    ood: bool | None = None
    frames: int = 1  # frames of a cine loop averaged into this result (predict_paths(frames=...))
    precision: str | None = None  # what the model computed in: fp32, bf16, int8 (None: not scored)

    @property
    def confidence(self) -> float | None:
        return max(self.probs.values()) if self.probs else None

    @property
    def endpoints(self) -> dict[str, float] | None:
        """Fibrosis endpoints (≥F2, ≥F3, F4) when the labels are METAVIR stages, else ``None``."""
        return endpoint_probabilities(self.probs) if self.probs else None


def result_row(r: Result, labels: Sequence[str]) -> list[str]:
    """CSV row of one result (see :func:`csv_header`)."""
    probs = [f"{r.probs[c]:.6f}" if r.probs else "" for c in labels]
    row = [r.path, r.label or "", f"{r.confidence:.6f}" if r.confidence is not None else "", *probs]
    ep = r.endpoints
    row += [f"{ep[k]:.6f}" if ep else "" for k in endpoint_keys(labels)]
    row += [
        "" if r.ood_score is None else f"{r.ood_score:.6g}",
        "" if r.ood is None else str(r.ood).lower(),
        r.precision or "",
    ]
    return row + ["" if r.error else str(r.frames), r.error or ""]


def csv_header(labels: Sequence[str]) -> list[str]:
    """``file,prediction,confidence,prob_<label>...[,p_ge_F2,p_ge_F3,p_F4],ood_score,ood,precision,frames,error``
    (endpoints for METAVIR labels; ``ood`` is ``true`` for an image unlike the training data, empty
    without a detector; ``precision``: what the model computed in, ``fp32``, ``bf16`` or ``int8``;
    ``frames``: frames of a cine loop averaged into the row, 1 for a still image)."""
    cols = ["file", "prediction", "confidence", *[f"prob_{c}" for c in labels]]
    cols += [endpoint_column(k) for k in endpoint_keys(labels)]
    return cols + ["ood_score", "ood", "precision", "frames", "error"]


def write_results(results: Iterable[Result], labels: Sequence[str], out: str | Path, progress=None) -> dict:
    """Write results as CSV (``.csv``) or JSON (``.json``: one object per result with the CSV's fields by
    the same names, the probabilities as one ``probabilities`` object) while they stream in.

    Rows go to a temporary file beside ``out`` as each result arrives (nothing is held in memory but
    the list of skipped files); the temporary file replaces ``out`` in one step at the end, so a crash
    never leaves a truncated output.

    Args:
        results: e.g. :meth:`Predictor.predict_paths`.
        labels: class names (the probability columns).
        out: ``.csv`` or ``.json`` path.
        progress: optional callable ``progress(n_done)`` called after each row.

    Returns:
        ``{"predicted": n, "flagged": images flagged as unlike the training data, "skipped": [(path, reason), ...],
        "out": str, "seconds": float}``.
    """
    out = Path(out)
    fmt = "json" if out.suffix.lower() == ".json" else "csv"
    n_ok, n_flagged, skipped, n = 0, 0, [], 0
    t0 = time.perf_counter()
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            w = csv.writer(fh)
            w.writerow(csv_header(labels))
        else:
            fh.write("[")
        for r in results:
            if fmt == "csv":
                w.writerow(result_row(r, labels))
            else:
                item = {
                    "file": r.path,
                    "prediction": r.label,
                    "confidence": r.confidence,
                    "probabilities": r.probs,
                    "ood_score": r.ood_score,
                    "ood": r.ood,
                    "precision": r.precision,
                    "error": r.error,
                }
                ep = r.endpoints  # by the CSV's names (p_ge_F2, ...), and the CSV's frames
                item.update(
                    {endpoint_column(k): ep[k] if ep else None for k in endpoint_keys(labels)},
                    frames=None if r.error else r.frames,
                )
                fh.write(("," if n else "") + "\n  " + json.dumps(item, ensure_ascii=False))
            fh.flush()  # the row is on disk now: a long job's partial output can be watched (tail -f the temp file)
            n += 1
            if r.error:
                skipped.append((r.path, r.error))
            else:
                n_ok += 1
                n_flagged += bool(r.ood)
            if progress is not None:
                progress(n)
        if fmt == "json":
            fh.write("\n]\n")
    return {
        "predicted": n_ok,
        "flagged": n_flagged,
        "skipped": skipped,
        "out": str(out),
        "seconds": time.perf_counter() - t0,
    }


def results_csv(results: Iterable[Result], labels: Sequence[str]) -> str:
    """CSV text of results (same columns as :func:`write_results`), for downloads."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csv_header(labels))
    for r in results:
        w.writerow(result_row(r, labels))
    return buf.getvalue()


__all__ = ["Result", "csv_header", "result_row", "results_csv", "write_results"]
