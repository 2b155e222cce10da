"""Cross-validation and fold ensembles (the ResNet-50 + CBAM study's protocol, grouped).

``cross_validate`` audits the data once, carves a hold-out test set and k folds (duplicate groups never
straddle two of them), trains one complete run per fold (``folds/foldI/``, through
:func:`liverscope.training.train.train_prepared` and :func:`liverscope.training.postrun.finish`), then :func:`aggregate_cv` scores every development image
with the fold model that did not train on it (out-of-fold) and the hold-out set with the ensemble: the
mean of the fold models' logits, divided by one temperature fitted on the out-of-fold logits (refused,
with a warning, when the fit lands on the edge of its range) times how much the averaging shrinks the
fold models' logits on the hold-out images (:func:`~liverscope.evaluate.stats.ensemble_temperature`,
no label used), then softmax.

Folds run one after another, or in parallel: :func:`cross_validate_on_devices` keeps one fold
process per GPU, or ``--folds-per-gpu M`` of them (a worker per slot pulling folds from a queue,
:func:`run_fold_queue`), and on a cluster ``liverscope cv --fold I`` array tasks write into one shared run directory (docs/scaling.md). Either
way the data is audited and split once (``split.csv``, then read by every fold), and the last fold to
finish aggregates (or ``liverscope cv --aggregate``: :func:`aggregate_run`).
"""

from __future__ import annotations

import copy
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from liverscope import __version__, rundir
from liverscope.config import RunConfig
from liverscope.data import splits
from liverscope.data.preprocess import Preprocessing
from liverscope.errors import LiverscopeError, UsageError
from liverscope.evaluate.scoring import score_predictions
from liverscope.evaluate.stats import ensemble_temperature, fit_temperature_checked
from liverscope.training.datamodule import (
    CollectedData,
    Listing,
    RunDataModule,
    collect_samples,
    list_data,
    run_preprocessing,
    samples_in_split,
)
from liverscope.training.lightning_module import global_rank
from liverscope.training.postrun import finish, write_report_safely
from liverscope.training.provenance import collect_provenance
from liverscope.training.train import train_prepared
from liverscope.utils import log, softmax


def ensemble_logits(fold_logits: Sequence[np.ndarray]) -> np.ndarray:
    """The fold ensemble: the mean of the fold models' logits (softmax is applied afterwards)."""
    return np.mean(np.stack([np.asarray(lg, dtype=np.float64) for lg in fold_logits]), axis=0)


def cv_assignments(
    data: CollectedData, cfg: RunConfig, k: int, test_frac: float
) -> tuple[np.ndarray, np.ndarray]:
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
    for i, (_, val_idx) in enumerate(
        splits.kfold_split(labels[dev], None if groups is None else groups[dev], k=k, seed=seed)
    ):
        fold[dev[val_idx]] = i
    if grouped:
        for i in range(k):
            split_i = np.where(outer == "test", "test", np.where(fold == i, "val", "train"))
            splits.check_leakage(split_i, data.groups, allow=cfg.data.allow_leak)
    return np.where(outer == "test", "test", "dev"), fold


def fold_count(split_path: Path) -> int:
    """The number of folds of a cv run's ``split.csv``.

    Raises:
        LiverscopeError: the split has no ``fold`` column (a ``train`` run, not a cv run).
    """
    _, _, folds = rundir.read_split(split_path)
    if folds is None or not len(folds):
        raise LiverscopeError(
            f"{split_path}: no fold column; this is not the split of a cv run (use another --name)"
        )
    return int(folds.max()) + 1


def ensure_cv_split(cfg: RunConfig, k: int, test_frac: float, listed: Listing) -> None:
    """Write a cv run's ``config.yaml`` and, unless it has one, its ``split.csv``: the data audited,
    cached and split into a hold-out test set and k folds. One process does it (global rank 0, or the
    parent of fold processes); the folds read the split."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, cfg)
    split_path = run_dir / rundir.SPLIT
    if split_path.exists():
        log(f"reusing the cross-validation split in {split_path}")
        return
    data = collect_samples(cfg, run_dir, listed)
    outer, fold = cv_assignments(data, cfg, k, test_frac)
    for s, g in zip(data.samples, data.groups):
        s.group = str(g)
    rundir.write_split(split_path, data.samples, outer, folds=fold)


class FoldDataModule(RunDataModule):
    """Fold ``fold`` of a cv run as a :class:`~liverscope.training.datamodule.RunDataModule`: its ``prepare`` (global rank 0)
    makes sure the cv run's split exists, then writes the fold's ``split.csv`` (the fold is ``val``,
    the hold-out ``test``, the other folds ``train``)."""

    def __init__(
        self, cv_cfg: RunConfig, fold_cfg: RunConfig, listed: Listing, fold: int, k: int, test_frac: float
    ):
        super().__init__(fold_cfg, listed, has_val=True)
        self.cv_cfg, self.fold, self.k, self.test_frac = cv_cfg, fold, k, test_frac

    def prepare(self) -> None:
        ensure_cv_split(self.cv_cfg, self.k, self.test_frac, self.listed)
        samples, outer, folds = samples_in_split(self.listed[0], self.cv_cfg.run_dir / rundir.SPLIT)
        assignment = np.where(outer == "test", "test", np.where(folds == self.fold, "val", "train"))
        rundir.write_split(self.split_path, samples, assignment)


def fold_config(cfg: RunConfig, i: int) -> RunConfig:
    """The recipe of fold ``i``: the cv run's, written to ``folds/foldI/``. ``train.select: auto`` becomes
    ``last``: the fold's validation images are its out-of-fold images, so they choose nothing (no best
    epoch, no early stopping); ``best`` keeps the old way (out-of-fold figures a little optimistic)."""
    fold_cfg = copy.deepcopy(cfg)
    fold_cfg.out_dir, fold_cfg.name = str(cfg.run_dir / rundir.FOLDS), f"fold{i}"
    if fold_cfg.train.select == "auto":
        fold_cfg.train.select = "last"
    return fold_cfg


def cross_validate(
    cfg: RunConfig,
    k: int = 5,
    test_frac: float = 0.2,
    folds: Sequence[int] | None = None,
    resume: bool = False,
    aggregate: bool = True,
) -> Path:
    """Stratified (grouped) k-fold training with a hold-out test set and a logit-averaging ensemble.

    The run directory gets ``split.csv`` (with the fold of every development image), ``folds/foldI/``
    (a complete run per fold: its validation fold is the I-th fold), ``oof_predictions.csv`` (every
    development image scored by the model that did not train on it), the ensemble's
    ``predictions_test.csv``, ``cv_folds.csv`` and ``metrics.json`` (``oof``, ``ensemble``, ``folds``).
    Finished folds are kept, so an interrupted ``cv`` resumes where it stopped. The data is audited
    once, when the split is made; a run that has ``split.csv`` reads it (the folds of other processes).
    Every process of a distributed run calls it (each fold's Trainer is placed by the recipe).

    Args:
        cfg: the recipe (``data.split`` = grouped | stratified | random).
        k: number of folds (a run that has its split keeps the split's).
        test_frac: share of the data held out for the ensemble's test (0 for CV only).
        folds: train only these folds (e.g. an array task's); ``[]``: write the split only; ``None``: all.
        resume: continue an interrupted fold from its last checkpoint.
        aggregate: aggregate (:func:`aggregate_cv`) once every fold is trained, whichever process
            trained the last one.
    """
    run_dir = cfg.run_dir
    listed = list_data(cfg)
    split_path = run_dir / rundir.SPLIT
    k = fold_count(split_path) if split_path.exists() else k
    todo = list(range(k)) if folds is None else [int(i) for i in folds]
    outside = [i for i in todo if not 0 <= i < k]
    if outside:
        raise UsageError(f"--fold {outside}: this cross-validation has folds 0..{k - 1}")
    if not todo and global_rank() == 0:
        ensure_cv_split(cfg, k, test_frac, listed)
    for i in todo:
        fold_cfg = fold_config(cfg, i)
        fold_dir = fold_cfg.run_dir
        if rundir.is_trained(fold_dir):
            log(f"fold {i}: already trained, kept")
            continue
        fold_resume = resume and rundir.last_checkpoint(fold_dir).exists()
        if global_rank() == 0:
            log(f"fold {i + 1}/{k}")
        trained = train_prepared(
            fold_cfg, FoldDataModule(cfg, fold_cfg, listed, i, k, test_frac), fold_resume
        )
        if trained is not None:  # global rank 0: calibrate, fit the OOD flag, score, report
            finish(trained)
    if not todo or not aggregate or global_rank() != 0:
        return run_dir
    missing = [i for i in range(k) if not rundir.is_trained(rundir.fold_dir(run_dir, i))]
    if missing:  # other processes (array tasks, GPUs) train them: the last one to finish aggregates
        log(
            f"folds {missing} are not trained yet: the last of them to finish aggregates (or `liverscope cv --aggregate`)"
        )
        return run_dir
    aggregate_cv(run_dir, listed[1], k, run_preprocessing(cfg))
    return run_dir


def aggregate_run(run_dir: str | Path) -> dict:
    """Aggregate the trained folds of an existing cv run (``liverscope cv --aggregate``): the ensemble,
    out-of-fold figures and report, from the run directory alone (the data need not be at hand).

    Raises:
        LiverscopeError: not a cv run, or some folds are not trained yet (named, with the command that trains them).
    """
    run_dir = Path(run_dir)
    if not (run_dir / rundir.SPLIT).exists():
        raise LiverscopeError(
            f"{run_dir}: no {rundir.SPLIT}; not a cross-validation run (start one with `liverscope cv DATA --name NAME`)"
        )
    k = fold_count(run_dir / rundir.SPLIT)
    missing = [i for i in range(k) if not rundir.is_trained(rundir.fold_dir(run_dir, i))]
    if missing:
        raise LiverscopeError(
            f"{run_dir}: folds {missing} are not trained yet; train them (`liverscope cv --recipe {run_dir / rundir.CONFIG} --fold I`), then aggregate"
        )
    first = rundir.fold_dir(run_dir, 0)
    return aggregate_cv(run_dir, rundir.read_model_meta(first)["labels"], k, rundir.read_preprocessing(first))


def aggregate_cv(run_dir: Path, class_names: Sequence[str], k: int, pp: Preprocessing) -> dict:
    """Out-of-fold metrics, the ensemble's temperature (fitted on the out-of-fold logits, times how much
    averaging flattens the fold models' logits on the hold-out: :func:`~liverscope.evaluate.stats.ensemble_temperature`),
    the logit-averaging ensemble on the hold-out test set at that temperature, and the fold table."""
    names = list(class_names)
    fold_dirs = [rundir.fold_dir(run_dir, i) for i in range(k)]
    folds = _read_folds(fold_dirs, names)
    result: dict = {"k": k, "class_names": names}
    # the out-of-fold T calibrates one fold model; their mean is flatter (measured in docs/benchmarks.md)
    fit = ensemble_temperature(_score_out_of_fold(run_dir, folds, names, result), folds["test_logits"])
    result["temperature_fit"] = fit
    if fit.get("warning") and not fit.get("at_edge"):
        log(f"WARNING: {fit['warning']}")
    temperature = fit["temperature"]
    if folds["test"] is not None:
        test = folds["test"]
        logits = ensemble_logits(folds["test_logits"])
        scored = score_predictions(
            run_dir, rundir.PREDICTIONS_TEST, test.samples(), test.y, logits, names, temperature
        )
        result["ensemble"] = result["test"] = scored["metrics"]
        result["temperature"] = temperature
        if scored["by_source"]:
            result["ensemble_by_source"] = result["test_by_source"] = scored["by_source"]
        result["ensemble_vs_oof"] = ensemble_vs_oof(result)
    result["folds"] = folds["table"]
    rundir.write_fold_table(run_dir, folds["table"])
    rundir.write_metrics(run_dir, result)
    _write_ensemble_meta(run_dir, fold_dirs, names, pp, fit, result["oof"])
    write_report_safely(run_dir)
    return result


def _read_folds(fold_dirs: Sequence[Path], names: list[str]) -> dict:
    """Each fold's out-of-fold predictions with its temperature (``oof``), what chose its weights
    (``selects``), its row of the fold table (``table``) and its logits on the hold-out test."""
    oof: list[tuple[rundir.Predictions, float]] = []
    table, test_logits, selects = [], [], []
    test: rundir.Predictions | None = None
    for i, fd in enumerate(fold_dirs):
        val, meta = rundir.read_predictions(fd / rundir.PREDICTIONS_VAL, names), rundir.read_model_meta(fd)
        oof.append((val, rundir.temperature(meta)))
        selects.append(meta.get("select", "best"))  # folds trained before train.select kept their best epoch
        fm = rundir.read_metrics(fd)
        row = {"fold": i, "n_val": len(val.y)}
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_kappa"):
            row[f"val_{key}"] = (fm.get("validation") or {}).get(key)
            row[f"test_{key}"] = (fm.get("test") or {}).get(key)
        table.append(row)
        if (fd / rundir.PREDICTIONS_TEST).exists():
            test = rundir.read_predictions(fd / rundir.PREDICTIONS_TEST, names)
            test_logits.append(test.logits)
    return {"oof": oof, "selects": selects, "table": table, "test": test, "test_logits": test_logits}


def _score_out_of_fold(run_dir: Path, folds: dict, names: list[str], result: dict) -> dict:
    """Score every development image by the fold model that did not train on it (``oof_predictions.csv``,
    ``result["oof"]``, the protocol and the per-source table), then fit one temperature on those logits
    (a fold model's; :func:`aggregate_cv` scales it for the ensemble). Returns that fit."""
    oof = folds["oof"]
    protocol = oof_protocol(folds["selects"])
    if protocol["temperature"] == "cross-fitted":
        temps = cross_fitted_temperatures([p.logits for p, _ in oof], [p.y for p, _ in oof])
        oof = list(zip([p for p, _ in oof], temps))
    elif protocol["warning"]:
        log(f"WARNING: {protocol['warning']}")
    result["oof_protocol"] = dict(protocol, fold_temperatures=[t for _, t in oof])
    oof_y = np.concatenate([p.y for p, _ in oof])
    oof_logits = np.concatenate([p.logits for p, _ in oof])
    oof_probs = np.concatenate(
        [softmax(p.logits, t) for p, t in oof]
    )  # each fold model at its own temperature
    samples = [s for p, _ in oof for s in p.samples()]
    scored = score_predictions(
        run_dir,
        rundir.OOF_PREDICTIONS,
        samples,
        oof_y,
        oof_logits,
        names,
        probs=oof_probs,
        confusion_png=False,
    )
    result["oof"] = scored["metrics"]
    # the ensemble's one temperature: every development image is held out from the model that scored it
    fit = fit_temperature_checked(oof_logits, oof_y)
    if fit["warning"]:
        log(f"WARNING: {fit['warning']}")
    if scored["by_source"]:
        result["oof_by_source"] = scored["by_source"]
    return fit


def _write_ensemble_meta(
    run_dir: Path, fold_dirs: Sequence[Path], names: list[str], pp: Preprocessing, fit: dict, oof: dict
) -> None:
    """The cv run's ``model.json``: the fold models as one ensemble at the ensemble's temperature (``fit``)."""
    first = rundir.read_model_meta(fold_dirs[0])
    rundir.write_model_meta(
        run_dir,
        {
            "architecture": first["architecture"],
            "labels": names,
            "preprocessing": pp.to_dict(),
            "weights_source": first.get("weights_source"),
            "temperature": fit["temperature"],
            "temperature_fit": fit,  # 1.0 when the fit is refused
            "training_data": first.get("training_data"),  # every fold's split holds all the run's images
            "ensemble": [str(fd.relative_to(run_dir)) for fd in fold_dirs],
            "validation": {
                key: oof.get(key) for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
            },
            "liverscope_version": __version__,
            # the ensemble's own: its split.csv (with the folds) fingerprints the data; each fold's model.json has its own
            "provenance": collect_provenance(rundir.read_config(run_dir).train.seed, run_dir / rundir.SPLIT),
        },
    )


def oof_protocol(selects: Sequence[str]) -> dict:
    """How a cv run's out-of-fold figures were made, from its folds' ``select`` (``model.json``).

    ``last`` in every fold: the out-of-fold images chose nothing; each fold's probabilities take a
    temperature fitted on the other folds' out-of-fold logits (:func:`cross_fitted_temperatures`).
    ``best`` (the old way, and every cv run trained before ``train.select``): each fold's out-of-fold images
    chose its best epoch and fitted its temperature, so the figures are a little optimistic."""
    kind = selects[0] if len(set(selects)) == 1 else "mixed"
    honest = kind == "last"
    warning = (
        None
        if honest
        else (
            "out-of-fold images chose the fold models' best epochs and fitted their temperatures (train.select best): "
            "the out-of-fold figures are a little optimistic; train.select auto or last makes them honest"
        )
    )
    if kind == "mixed":
        warning = f"folds trained with different train.select ({', '.join(selects)}): {warning}"
    return {
        "select": kind,
        "honest": honest,
        "warning": warning,
        "temperature": "cross-fitted"
        if honest
        else "each fold's own, fitted on its validation (out-of-fold) images",
    }


def cross_fitted_temperatures(logits: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> list[float]:
    """One temperature per fold, each fitted on the out-of-fold logits of the other folds (never on the
    fold's own images: they are the ones it scores); 1.0 where the fit is refused (at the edge of its range)."""
    temps = []
    for i in range(len(logits)):
        others = [j for j in range(len(logits)) if j != i]
        fit = fit_temperature_checked(
            np.concatenate([logits[j] for j in others]), np.concatenate([y[j] for j in others])
        )
        temps.append(float(fit["temperature"]))
    return temps


#: The figures set side by side by :func:`ensemble_vs_oof`.
GAP_KEYS = ("balanced_accuracy", "macro_auc", "quadratic_kappa", "accuracy", "macro_f1")


def ensemble_vs_oof(result: dict) -> dict:
    """The fold ensemble on the hold-out (the product users run) beside the out-of-fold figures (the
    estimate): each figure of :data:`GAP_KEYS`, overall and per source, and ``gap`` = ensemble - out-of-fold."""

    def row(oof: dict, ens: dict) -> dict:
        out = {}
        for key in GAP_KEYS:
            a, b = oof.get(key), ens.get(key)
            if a is not None and b is not None:
                out[key] = {"oof": a, "ensemble": b, "gap": float(b) - float(a)}
        return dict(out, n_oof=oof.get("n"), n_ensemble=ens.get("n"))

    table = {"overall": row(result["oof"], result["ensemble"])}
    oof_src = (result.get("oof_by_source") or {}).get("groups") or {}
    ens_src = (result.get("ensemble_by_source") or {}).get("groups") or {}
    table["by_source"] = {s: row(oof_src[s], ens_src[s]) for s in oof_src if s in ens_src}
    return table


def run_fold_queue(
    folds: Sequence[int], devices: Sequence[str], launch: Callable[[int, str], int]
) -> dict[int, int]:
    """Run ``launch(fold, device)`` for every fold, never two folds in one slot at a time (a device named
    twice in ``devices`` is two slots: :func:`visible_gpus`' ``per_gpu``): one worker per slot pulls the
    next fold from a queue as soon as its last one has ended, so every device stays busy while folds
    remain and the fastest device takes the most folds. (A pool that sends fold i to device i mod N puts a
    fold beside another while a device that finished early sits idle.)

    Returns:
        The exit code of every fold (``launch``'s return value).
    """
    if not devices:
        raise UsageError("no devices to train folds on")
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for fold in folds:
        pending.put(int(fold))
    codes: dict[int, int] = {}

    def worker(device: str) -> None:
        while True:
            try:
                fold = pending.get_nowait()
            except queue.Empty:
                return
            codes[fold] = launch(fold, device)

    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="fold-worker") as pool:
        for job in [pool.submit(worker, str(d)) for d in devices]:
            job.result()
    return codes


def fold_command(config_path: Path, fold: int, resume: bool = False) -> list[str]:
    """The command line of one fold process: ``liverscope cv --recipe RUN/config.yaml --fold I`` (it
    reads the run's split, so it audits nothing; its parent aggregates)."""
    return [
        sys.executable,
        "-m",
        "liverscope",
        "cv",
        "--recipe",
        str(config_path),
        "--fold",
        str(fold),
        "--no-auto-aggregate",
        *(["--resume"] if resume else []),
    ]


def fold_process_launcher(config_path: Path, resume: bool = False) -> Callable[[int, str], int]:
    """``launch(fold, device)`` for :func:`run_fold_queue`: a fold process that sees one GPU (``CUDA_VISIBLE_DEVICES``)."""

    def launch(fold: int, device: str) -> int:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=device)
        log(f"fold {fold}: starting on GPU {device}")
        return subprocess.run(fold_command(config_path, fold, resume), env=env, check=False).returncode

    return launch


def visible_gpus(n: int, per_gpu: int = 1) -> list[str]:
    """The fold slots of ``n`` GPUs: the first ``n`` of ``CUDA_VISIBLE_DEVICES`` when it is set (e.g. a
    cluster's allocation), else ``0..n-1``, each named ``per_gpu`` times, so that :func:`run_fold_queue`
    keeps up to ``per_gpu`` fold processes on every GPU (a small network at batch 32 leaves a large GPU
    mostly idle: several folds share it, each in its own process)."""
    if per_gpu < 1:
        raise UsageError(f"--folds-per-gpu {per_gpu}: at least 1")
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and len(visible) < n:
        raise UsageError(
            f"--gpus {n}: CUDA_VISIBLE_DEVICES names only {len(visible)} GPU(s) ({','.join(visible)})"
        )
    ids = visible[:n] if visible else [str(i) for i in range(n)]
    return [d for d in ids for _ in range(per_gpu)]


def cross_validate_on_devices(
    cfg: RunConfig,
    k: int,
    test_frac: float,
    devices: Sequence[str],
    resume: bool = False,
    launch: Callable[[int, str], int] | None = None,
) -> Path:
    """Cross-validation with the folds in parallel, one fold process per device at a time
    (:func:`run_fold_queue`). This process audits and splits the data once and writes ``config.yaml``;
    each fold process reads them (``resume`` reaches every one of them); when all have ended, it
    aggregates. ``launch`` replaces the fold processes (tests)."""
    if str(cfg.train.devices) != "1":
        raise UsageError(
            f"--gpus trains one fold per GPU; train.devices is {cfg.train.devices}: leave it at 1 "
            "(or drop --gpus and train each fold on several devices with --devices N --strategy ddp)"
        )
    run_dir = cross_validate(cfg, k=k, test_frac=test_frac, folds=[])
    k = fold_count(run_dir / rundir.SPLIT)
    todo = [i for i in range(k) if not rundir.is_trained(rundir.fold_dir(run_dir, i))]
    codes = run_fold_queue(todo, devices, launch or fold_process_launcher(run_dir / rundir.CONFIG, resume))
    failed = {i: c for i, c in sorted(codes.items()) if c}
    if failed:
        raise LiverscopeError(
            f"fold processes failed (fold: exit code) {failed}; rerun the same command with --resume to continue them"
        )
    return cross_validate(cfg, k=k, test_frac=test_frac)


__all__ = [
    "ensemble_logits",
    "cv_assignments",
    "fold_count",
    "ensure_cv_split",
    "FoldDataModule",
    "fold_config",
    "cross_validate",
    "aggregate_run",
    "aggregate_cv",
    "oof_protocol",
    "cross_fitted_temperatures",
    "ensemble_vs_oof",
    "GAP_KEYS",
    "run_fold_queue",
    "fold_command",
    "fold_process_launcher",
    "visible_gpus",
    "cross_validate_on_devices",
]
