"""The shortcut check of a run on labelled images (``liverscope evaluate RUN DATA --ablation tissue,periphery``):
the run's model (a fold ensemble: the mean of its members' logits) re-scores every image with the scan
sector's tissue blanked and with its periphery blanked (:mod:`liverscope.data.ablation`); the skill above
chance of each, beside the plain figure, overall and per source, and the verdict come from
:mod:`liverscope.evaluate.shortcut`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope.data.ablation import ablated_inputs, parse_ablations
from liverscope.data.datasets import Sample
from liverscope.data.io import read_image
from liverscope.evaluate.shortcut import shortcut_table
from liverscope.inference.predict import Predictor
from liverscope.utils import log

#: Images decoded and blanked at a time (memory stays flat on large sets).
CHUNK = 64


def ablated_logits(
    pred: Predictor, samples: Sequence[Sample], regions: Sequence[str]
) -> tuple[dict[str, np.ndarray], int]:
    """The predictor's logits of every image under each region blanked, and how many images had no scan
    sector (their sector is the whole frame)."""
    out: dict[str, list[np.ndarray]] = {r: [] for r in regions}
    no_sector = 0
    with ThreadPoolExecutor(pred.workers, thread_name_prefix="liverscope-ablate") as pool:
        for start in range(0, len(samples), CHUNK):
            chunk = samples[start : start + CHUNK]
            done = list(pool.map(lambda s: ablated_inputs(read_image(s.path), pred.pp, regions), chunk))
            no_sector += sum(not a.sector_found for a in done)
            for r in regions:
                out[r].append(pred.logits([a.inputs[r] for a in done]))
    n_classes = len(pred.labels)
    return {
        r: np.concatenate(v) if v else np.zeros((0, n_classes), np.float32) for r, v in out.items()
    }, no_sector


def shortcut_check(
    run_dir: str | Path,
    samples: Sequence[Sample],
    y: np.ndarray,
    plain_logits: np.ndarray,
    regions: Sequence[str] | str,
    device: str = "auto",
    tta: str = "none",
) -> dict:
    """Re-score a run on ``samples`` (already scored plain: ``plain_logits``) with each of ``regions`` blanked.

    Args:
        run_dir: the trained run (``train`` or ``cv``).
        samples: the images (readable ones: they were scored plain), with their sources.
        y: ``(n,)`` true class indices.
        plain_logits: ``(n, K)`` the run's logits of the plain images.
        regions: ``tissue`` and/or ``periphery`` (:func:`~liverscope.data.ablation.parse_ablations`).
        device, tta: as the plain scoring's.

    Returns:
        :func:`~liverscope.evaluate.shortcut.shortcut_table` plus ``regions``, ``sector_method``,
        ``no_sector`` (images without a scan sector found) and ``tta``.
    """
    regions = parse_ablations(regions)
    pred = Predictor.from_run(run_dir, device=device, calibrated=False, tta=tta)
    log(f"shortcut check: re-scoring {len(samples)} images with the {' and the '.join(regions)} blanked")
    logits, no_sector = ablated_logits(pred, list(samples), regions)
    preds = {"plain": np.argmax(plain_logits, axis=1), **{r: np.argmax(v, axis=1) for r, v in logits.items()}}
    table = shortcut_table(y, preds, [s.source for s in samples])
    if table["reads_scanner"]:
        log(f"WARNING: shortcut check: {table['message']}")
    return dict(table, regions=regions, sector_method=pred.pp.sector, no_sector=no_sector, tta=tta)


__all__ = ["CHUNK", "ablated_logits", "shortcut_check"]
