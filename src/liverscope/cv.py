"""Cross-validation and fold ensembles (the ResNet-50 + CBAM study's protocol, grouped).

``cross_validate`` audits the data once, carves a hold-out test set and k folds (duplicate groups never
straddle two of them), trains one complete run per fold (``folds/foldI/``, through
:func:`liverscope.train.train_prepared`), then :func:`aggregate_cv` scores every development image
with the fold model that did not train on it (out-of-fold) and the hold-out set with the ensemble: the
mean of the fold models' logits, divided by one temperature fitted on the out-of-fold logits (refused,
with a warning, when the fit lands on the edge of its range), then softmax.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope import __version__, rundir
from liverscope.config import RunConfig
from liverscope.data import splits
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.evaluate.scoring import score_predictions
from liverscope.evaluate.stats import fit_temperature_checked
from liverscope.provenance import collect_provenance
from liverscope.train import CollectedData, PreparedData, collect_samples, train_prepared, write_report_safely
from liverscope.utils import log, softmax




def ensemble_logits(fold_logits: Sequence[np.ndarray]) -> np.ndarray:
    """The fold ensemble: the mean of the fold models' logits (softmax is applied afterwards)."""
    return np.mean(np.stack([np.asarray(l, dtype=np.float64) for l in fold_logits]), axis=0)


def cv_assignments(data: CollectedData, cfg: RunConfig, k: int, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Outer hold-out (``test``/``dev``) and fold index (-1 for test) per sample.

    ``grouped`` (default): duplicate groups never straddle the test hold-out or two folds.
    ``random``: the leaky protocol of the published studies, kept to demonstrate the leak.
    """
    labels = np.array([s.label for s in data.samples])
    seed = cfg.train.seed
    grouped = cfg.data.split == "grouped"
    groups = data.groups if grouped else None
    if test_frac > 0:
        if cfg.data.split == "random":
            outer = splits.random_split(labels, test_frac=test_frac, val_frac=0.0, seed=seed)
        else:
            outer = splits.holdout_split(labels, groups, test_frac=test_frac, val_frac=0.0, seed=seed)
    else:
        outer = np.array(["train"] * len(labels))
    dev = np.nonzero(outer != "test")[0]
    fold = np.full(len(labels), -1, dtype=int)
    for i, (_, val_idx) in enumerate(splits.kfold_split(labels[dev], None if groups is None else groups[dev], k=k, seed=seed)):
        fold[dev[val_idx]] = i
    if grouped:
        for i in range(k):
            split_i = np.where(outer == "test", "test", np.where(fold == i, "val", "train"))
            splits.check_leakage(split_i, data.groups, allow=cfg.data.allow_leak)
    return np.where(outer == "test", "test", "dev"), fold


def cross_validate(cfg: RunConfig, k: int = 5, test_frac: float = 0.2, folds: Sequence[int] | None = None, resume: bool = False) -> Path:
    """Stratified (grouped) k-fold training with a hold-out test set and a logit-averaging ensemble.

    The run directory gets ``split.csv`` (with the fold of every development image), ``folds/foldI/``
    (a complete run per fold: its validation fold is the I-th fold), ``oof_predictions.csv`` (every
    development image scored by the model that did not train on it), the ensemble's
    ``predictions_test.csv``, ``cv_folds.csv`` and ``metrics.json`` (``oof``, ``ensemble``, ``folds``).
    Finished folds are kept, so an interrupted ``cv`` resumes where it stopped.

    Args:
        cfg: the recipe (``data.split`` = grouped | stratified | random).
        k: number of folds.
        test_frac: share of the data held out for the ensemble's test (0 for CV only).
        folds: train only these folds (e.g. one per GPU process); ``None`` = all, then aggregate.
        resume: continue an interrupted fold from its last checkpoint.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, cfg)
    data = collect_samples(cfg, run_dir)
    split_path = run_dir / rundir.SPLIT
    if split_path.exists():
        prev, prev_outer, prev_fold = rundir.read_split(split_path)
        by_path = {str(s.path): (a, f) for s, a, f in zip(prev, prev_outer, prev_fold)}
        keep = [i for i, s in enumerate(data.samples) if str(s.path) in by_path]
        data.samples = [data.samples[i] for i in keep]
        data.groups = data.groups[keep]
        outer = np.array([by_path[str(s.path)][0] for s in data.samples])
        fold = np.array([by_path[str(s.path)][1] for s in data.samples])
        log(f"reusing the cross-validation split in {split_path}")
    else:
        outer, fold = cv_assignments(data, cfg, k, test_frac)
        for s, g in zip(data.samples, data.groups):
            s.group = str(g)
        rundir.write_split(split_path, data.samples, outer, folds=fold)
    k = int(fold.max()) + 1
    todo = list(range(k)) if folds is None else list(folds)
    for i in todo:
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.out_dir, fold_cfg.name = str(run_dir / rundir.FOLDS), f"fold{i}"
        fold_dir = fold_cfg.run_dir
        if rundir.is_trained(fold_dir):
            log(f"fold {i}: already trained, kept")
            continue
        fold_resume = resume and rundir.last_checkpoint(fold_dir).exists()
        rundir.start_run(fold_cfg, fold_resume)
        assignment = np.where(outer == "test", "test", np.where(fold == i, "val", "train"))
        rundir.write_split(fold_dir / rundir.SPLIT, data.samples, assignment)
        prep = PreparedData(data.samples, data.class_names, assignment, data.cache, data.pp, data.skipped)
        log(f"fold {i + 1}/{k}")
        train_prepared(fold_cfg, prep, fold_dir, fold_resume)
    if folds is not None and any(not (rundir.fold_dir(run_dir, i) / rundir.METRICS).exists() for i in range(k)):
        return run_dir  # other processes train the remaining folds; aggregate when all are done
    aggregate_cv(run_dir, data.class_names, k, data.pp)
    return run_dir


def aggregate_cv(run_dir: Path, class_names: Sequence[str], k: int, pp: Preprocessing) -> dict:
    """Out-of-fold metrics, the ensemble's temperature (fitted on the out-of-fold logits), the
    logit-averaging ensemble on the hold-out test set at that temperature, and the fold table."""
    names = list(class_names)
    fold_dirs = [rundir.fold_dir(run_dir, i) for i in range(k)]
    oof: list[tuple[rundir.Predictions, float]] = []
    fold_table, test_logits = [], []
    test: rundir.Predictions | None = None
    for i, fd in enumerate(fold_dirs):
        val = rundir.read_predictions(fd / rundir.PREDICTIONS_VAL, names)
        oof.append((val, rundir.temperature(rundir.read_model_meta(fd))))
        fm = rundir.read_metrics(fd)
        row = {"fold": i, "n_val": len(val.y)}
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_kappa"):
            row[f"val_{key}"] = (fm.get("validation") or {}).get(key)
            row[f"test_{key}"] = (fm.get("test") or {}).get(key)
        fold_table.append(row)
        if (fd / rundir.PREDICTIONS_TEST).exists():
            test = rundir.read_predictions(fd / rundir.PREDICTIONS_TEST, names)
            test_logits.append(test.logits)

    result: dict = {"k": k, "class_names": names}
    oof_samples = [s for p, _ in oof for s in p.samples()]
    oof_y = np.concatenate([p.y for p, _ in oof])
    oof_logits = np.concatenate([p.logits for p, _ in oof])
    oof_probs = np.concatenate([softmax(p.logits, t) for p, t in oof])  # each fold model at its own temperature
    scored = score_predictions(run_dir, rundir.OOF_PREDICTIONS, oof_samples, oof_y, oof_logits, names, probs=oof_probs, confusion_png=False)
    result["oof"] = scored["metrics"]
    # the ensemble's one temperature: every development image is held out from the model that scored it
    fit = fit_temperature_checked(oof_logits, oof_y)
    if fit["warning"]:
        log(f"WARNING: {fit['warning']}")
    result["temperature_fit"] = fit
    temperature = fit["temperature"]
    if scored["by_source"]:
        result["oof_by_source"] = scored["by_source"]
    if test is not None:
        scored = score_predictions(run_dir, rundir.PREDICTIONS_TEST, test.samples(), test.y, ensemble_logits(test_logits), names, temperature)
        result["ensemble"] = result["test"] = scored["metrics"]
        result["temperature"] = temperature
        if scored["by_source"]:
            result["ensemble_by_source"] = result["test_by_source"] = scored["by_source"]
    result["folds"] = fold_table
    rundir.write_fold_table(run_dir, fold_table)
    rundir.write_metrics(run_dir, result)
    first = rundir.read_model_meta(fold_dirs[0])
    rundir.write_model_meta(run_dir, {
        "architecture": first["architecture"], "labels": names, "preprocessing": pp.to_dict(),
        "weights_source": first.get("weights_source"), "temperature": temperature, "temperature_fit": fit,  # 1.0 when the fit is refused
        "ensemble": [str(fd.relative_to(run_dir)) for fd in fold_dirs],
        "validation": {key: result["oof"].get(key) for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
        "liverscope_version": __version__,
        # the ensemble's own: its split.csv (with the folds) fingerprints the data; each fold's model.json has its own
        "provenance": collect_provenance(rundir.read_config(run_dir).train.seed, run_dir / rundir.SPLIT),
    })
    write_report_safely(run_dir)
    return result


def launch_folds_on_gpus(cfg_path: Path, k: int, n_gpus: int, extra_args: Sequence[str] = ()) -> None:
    """Train the folds of a cross-validation in parallel, one process per GPU
    (``CUDA_VISIBLE_DEVICES``), each running ``liverscope cv --fold I``; then aggregate."""
    def one(i: int) -> int:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i % n_gpus))
        cmd = [sys.executable, "-m", "liverscope.cli", "cv", "--recipe", str(cfg_path), "--fold", str(i), "--k", str(k), *extra_args]
        return subprocess.run(cmd, env=env, check=False).returncode

    with ThreadPoolExecutor(max_workers=n_gpus) as ex:
        codes = list(ex.map(one, range(k)))
    if any(codes):
        raise LiverscopeError(f"fold processes failed with exit codes {codes}; rerun `liverscope cv` with the same --name to resume")


__all__ = ["ensemble_logits", "cv_assignments", "cross_validate", "aggregate_cv", "launch_folds_on_gpus"]
