"""The report's CAM gallery: for each true class, the most confident correct and wrong test
predictions of a run, each as the model input beside its map (``cam_gallery/`` in the run directory,
written through :func:`liverscope.rundir.write_gallery`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from liverscope import rundir
from liverscope.data.io import read_image
from liverscope.data.preprocess import Preprocessing, preprocess_array
from liverscope.errors import LiverscopeError
from liverscope.explain.cams import DEFAULT_METHOD, METHOD_NAMES, explain_batch, method_key
from liverscope.explain.images import gallery_tile, overlay
from liverscope.utils import softmax

logger = logging.getLogger(__name__)


def _find_file(path: str, data_root: Path | None) -> Path | None:
    p = Path(path)
    candidates = [p] + (
        [data_root / p, data_root / p.name, data_root / p.parent.name / p.name]
        if data_root is not None
        else []
    )
    return next((c for c in candidates if c.is_file()), None)


def write_cam_gallery(
    run_dir: str | Path, data_root: str | Path | None = None, per_class: int = 2, method: str = DEFAULT_METHOD
) -> Path | None:
    """The report's CAM gallery: for each true class, the ``per_class`` most confident correct and wrong
    test predictions, each as the model input beside its map (of the predicted class).

    Reads ``run_dir/predictions_test.csv``; files that cannot be found (``data_root`` is tried as a
    prefix and as a parent folder) or read are skipped. Writes ``run_dir/cam_gallery/*.png`` and
    ``captions.json`` (replacing an earlier gallery; ``flagged.json``: tiles of images flagged out-of-distribution), for the report.

    Returns:
        The gallery folder, or ``None`` when there is nothing to show (no test predictions, no readable image).
    """
    run_dir = Path(run_dir)
    pred_csv = run_dir / rundir.PREDICTIONS_TEST
    if not pred_csv.exists() or not (run_dir / rundir.MODEL_META).exists():
        return None
    root = Path(data_root) if data_root is not None else None
    model, meta = rundir.load_model(run_dir)
    labels = list(meta["labels"])
    pp = Preprocessing.from_dict(meta["preprocessing"])
    try:
        predictions = rundir.read_predictions(pred_csv, labels)
        if (
            predictions.paths and predictions.logits is None
        ):  # probabilities come from the logits at the run's temperature
            raise LiverscopeError("no logit_* columns")
    except (LiverscopeError, KeyError, ValueError, OSError) as exc:
        logger.warning("CAM gallery skipped: cannot read %s (%s)", pred_csv, exc)
        return None
    paths, y = predictions.paths, predictions.y
    if not len(paths):
        return None
    probs = softmax(predictions.logits, rundir.temperature(meta))
    pred = probs.argmax(1)
    picks = _pick_cases(paths, y, probs, root, pp, per_class)
    if not picks:
        return None
    b = explain_batch(
        model, [m for _, _, m in picks], pp, [int(pred[r]) for r, _, _ in picks], method, True, 8
    )
    tiles = []
    name = METHOD_NAMES[method_key(method)]
    for j, (r, kind, inp) in enumerate(picks):
        true, p = labels[int(y[r])], labels[int(pred[r])]
        fname = f"{true}_{kind}_{j:02d}_{Path(paths[r]).stem}.png"
        fname = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in fname)
        tile = gallery_tile(inp, overlay(inp, b.cams[j], b.sectors[j] if b.sectors[j].any() else None))
        tiles.append(
            (
                fname,
                tile,
                f"{Path(paths[r]).name}: true {true}, predicted {p} (p={probs[r, pred[r]]:.2f}) — {kind}; {name} of {p}",
            )
        )
    flagged = (
        None
        if predictions.ood is None
        else [t[0] for t, (r, _, _) in zip(tiles, picks) if predictions.ood[r]]
    )
    return rundir.write_gallery(run_dir, tiles, flagged)


def _pick_cases(
    paths, y: np.ndarray, probs: np.ndarray, root: Path | None, pp: Preprocessing, per_class: int
) -> list[tuple[int, str, np.ndarray]]:
    """``(row, "correct"|"wrong", model input)`` of the ``per_class`` most confident correct and wrong
    predictions of each true class whose file can still be found and read."""
    pred = probs.argmax(1)
    picks: list[tuple[int, str, np.ndarray]] = []
    for k in range(probs.shape[1]):
        for kind, sel in (("correct", (y == k) & (pred == k)), ("wrong", (y == k) & (pred != k))):
            rows = np.flatnonzero(sel)
            rows = rows[np.argsort(-probs[rows, pred[rows]], kind="stable")]
            found = 0
            for r in rows:
                f = _find_file(paths[r], root) if found < per_class else None
                if f is None:
                    continue
                try:
                    inp = preprocess_array(read_image(f), pp)
                except Exception:  # unreadable now: not shown
                    continue
                picks.append((int(r), kind, inp))
                found += 1
    return picks


__all__ = ["write_cam_gallery"]
