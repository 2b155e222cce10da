"""One training run, start to end (``liverscope train``): train the model
(:mod:`liverscope.training.train`), then the post-run steps (:mod:`liverscope.training.postrun`).

``fit(cfg)`` is the whole recipe, readable top to bottom like torchvision's reference scripts: list the
data → drop unreadable files → split (grouped by duplicates by default) → preprocess once into the
cache → train with Lightning → keep the chosen epoch → calibrate, fit the OOD flag, score the test
split → write the run directory and its report.
"""

from __future__ import annotations

from pathlib import Path

from liverscope.config import RunConfig
from liverscope.training.postrun import finish
from liverscope.training.train import train


def fit(cfg: RunConfig, resume: bool = False) -> Path:
    """Train one model by the recipe ``cfg`` and write its run directory.

    Every process of a distributed run calls it (Lightning's launcher, ``torchrun`` or ``srun`` start
    them); only global rank 0 audits, caches, splits and writes.

    Args:
        cfg: resolved configuration (data path, model, training, placement).
        resume: continue from ``checkpoints/last.ckpt`` of the same run (same split, same history).

    Returns:
        The run directory.
    """
    trained = train(cfg, resume)
    if trained is not None:
        finish(trained)
    return cfg.run_dir


__all__ = ["fit"]
