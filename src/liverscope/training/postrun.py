"""The steps after a fit, apart from training (``liverscope train``, each fold of ``liverscope cv``):
calibrate on the validation images (a temperature, refused when the fit lands on the edge of its
range), fit the out-of-distribution detector (class means and shared covariance of the training
split's pooled features, threshold on the validation images; :mod:`liverscope.evaluate.ood`), score
the test split, plot the curves, write the CAM gallery and the report. Each step takes the run and
returns numbers or files; :func:`finish_run` runs them in order, :func:`finish` after a
:class:`~liverscope.training.train.Trained` model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from liverscope import rundir
from liverscope.config import RunConfig
from liverscope.data.preprocess import PreprocessCache, Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.evaluate.figures import write_curves
from liverscope.evaluate.metrics import compute_metrics
from liverscope.evaluate.ood import (
    DEFAULT_METHOD,
    DEFAULT_QUANTILE,
    METHODS,
    fit_class_gaussian,
    fit_threshold,
    flag_summary,
    ood_scores,
)
from liverscope.evaluate.report import write_report
from liverscope.evaluate.scoring import score_predictions
from liverscope.evaluate.stats import fit_temperature_checked
from liverscope.explain.gallery import write_cam_gallery
from liverscope.models import LiverNet
from liverscope.training.datamodule import PreparedData, eval_loader
from liverscope.training.lightning_module import log_final_figures
from liverscope.training.train import Trained
from liverscope.utils import log, resolve_device, softmax, strict_fp32


def finish(trained: Trained) -> dict:
    """The post-run steps of a freshly trained model (global rank 0): :func:`finish_run` on its
    validation and test splits, then the final figures to the run's trackers."""
    data = trained.data
    metrics = finish_run(
        trained.run_dir,
        trained.model,
        data.prepared(),
        data.loaders("val"),
        data.loaders("test"),
        trained.cfg,
        device=trained.device,
    )
    log_final_figures(trained.loggers, metrics, step=trained.global_step, config=trained.cfg.to_dict())
    log(f"trained in {trained.train_seconds:.0f}s; run directory: {trained.run_dir}")
    return metrics


def infer_outputs(model: LiverNet, loader, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, pooled features and targets of a model over a DataLoader of ``(x, y)`` batches (eval
    mode, no grad; one forward pass gives logits and features, see :meth:`liverscope.models.LiverNet.forward_with_features`).
    In true fp32 whatever the training precision (TF32 off on a GPU: :func:`~liverscope.utils.strict_fp32`): the
    split's figures in ``metrics.json`` say ``"precision": "fp32"``."""
    model.eval().to(device)
    logits, feats, targets = [], [], []
    with torch.inference_mode(), strict_fp32(device):
        for x, y in loader:
            lg, f = model.forward_with_features(x.to(device))
            logits.append(lg.float().cpu())
            feats.append(f.float().cpu())
            targets.append(torch.as_tensor(y))
    return torch.cat(logits).numpy(), torch.cat(feats).numpy(), torch.cat(targets).numpy()


def finish_run(
    run_dir: Path,
    model: LiverNet,
    prep: PreparedData,
    val_dl: DataLoader,
    test_dl: DataLoader,
    cfg: RunConfig,
    device: str | None = None,
) -> dict:
    """After training, the post-run steps in order (on ``device``, default ``train.device``):
    :func:`calibrate`, :func:`fit_ood_safely` and the validation predictions, :func:`score_test`,
    ``metrics.json``, :func:`plot_curves`, :func:`write_gallery_safely`, :func:`write_report_safely`.

    Returns:
        The run's ``metrics.json``.
    """
    device = resolve_device(device or cfg.train.device)
    metrics: dict = {"split": cfg.data.split, "class_names": prep.class_names}
    temperature, ood = 1.0, None
    if len(val_dl.dataset):
        val = infer_outputs(model, val_dl, device)
        metrics.update(calibrate(run_dir, val[0], val[2], prep.class_names))
        temperature = metrics["temperature_fit"]["temperature"]
        ood = fit_ood_safely(run_dir, model, prep, cfg, val, device)
        rundir.write_predictions(
            run_dir / rundir.PREDICTIONS_VAL,
            val_dl.dataset.samples,
            val[0],
            prep.class_names,
            temperature,
            ood=(ood["val_scores"], ood["threshold"]) if ood else None,
        )
        if ood:
            metrics["ood"] = {
                k: ood[k] for k in ("method", "threshold", "thresholds", "quantile", "validation")
            }
    if len(test_dl.dataset):
        metrics.update(
            score_test(
                run_dir, model, test_dl, prep.class_names, temperature, ood, device, metrics.get("ood")
            )
        )
    rundir.write_metrics(run_dir, metrics)
    plot_curves(run_dir)
    write_gallery_safely(run_dir, cfg.data.path)
    write_report_safely(run_dir)
    return metrics


def calibrate(run_dir: Path, val_logits: np.ndarray, val_y: np.ndarray, class_names: list[str]) -> dict:
    """The temperature of the validation logits (1.0 when the fit is refused: it landed on the edge of
    its range) and the validation figures at it, recorded in ``model.json``.

    Returns:
        ``{"validation": metrics, "temperature_fit": fit}`` for ``metrics.json``.
    """
    fit = fit_temperature_checked(val_logits, val_y)
    if fit["warning"]:
        log(f"WARNING: {fit['warning']}")
    validation = compute_metrics(val_y, softmax(val_logits, fit["temperature"]), class_names)
    rundir.update_model_meta(
        run_dir,
        temperature=fit["temperature"],
        temperature_fit=fit,
        validation={k: validation.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")},
    )
    return {"validation": validation, "temperature_fit": fit}


def fit_ood_safely(
    run_dir: Path,
    model: LiverNet,
    prep: PreparedData,
    cfg: RunConfig,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: str,
) -> dict | None:
    """:func:`fit_ood` on the run's training split, or ``None`` (logged) when it fails: the flag is a
    safeguard on top of the model, never a reason to lose a trained model."""
    train_samples = [s for s, a in zip(prep.samples, prep.splits) if a == "train"]
    try:
        return fit_ood(run_dir, model, eval_loader(train_samples, prep, cfg), val[0], val[1], device)
    except Exception as exc:
        log(
            f"WARNING: out-of-distribution detector not fitted ({type(exc).__name__}: {exc}); predictions carry no OOD flag"
        )
        return None


def score_test(
    run_dir: Path,
    model: LiverNet,
    test_dl: DataLoader,
    class_names: list[str],
    temperature: float,
    ood: dict | None,
    device: str,
    ood_metrics: dict | None = None,
) -> dict:
    """Score the test split: ``predictions_test.csv``, the confusion matrix and the figures (with the
    OOD flag's share on it: a copy of ``ood_metrics`` with ``"test"`` added; ``ood_metrics`` itself is
    left as it is).

    Returns:
        ``{"test", "temperature"[, "test_by_source"][, "ood"]}`` for ``metrics.json`` (``"ood"`` when
        there is a detector and ``ood_metrics``).
    """
    logits, feats, y = infer_outputs(model, test_dl, device)
    test_ood, out = None, {}
    if ood:
        scores = ood_scores(ood["method"], logits, feats, ood)
        test_ood = (scores, ood["threshold"])
        if ood_metrics is not None:
            out["ood"] = dict(ood_metrics, test=flag_summary(scores, ood["threshold"]))
    scored = score_predictions(
        run_dir,
        rundir.PREDICTIONS_TEST,
        test_dl.dataset.samples,
        y,
        logits,
        class_names,
        temperature,
        ood=test_ood,
    )
    out.update(test=scored["metrics"], temperature=temperature)
    if scored["by_source"]:
        out["test_by_source"] = scored["by_source"]
    return out


def plot_curves(run_dir: Path) -> Path | None:
    """The training curves of ``history.csv`` as ``curves.png`` (``None`` without a history)."""
    if not (run_dir / rundir.HISTORY).exists():
        return None
    return write_curves(run_dir, run_dir / rundir.HISTORY)


def write_gallery_safely(run_dir: Path, data_root: str | Path | None) -> Path | None:
    """A few correct and wrong test cases per class with their Grad-CAM, for the report; a failure is
    logged (a convenience, like the report: never lose a trained model over it)."""
    try:
        return write_cam_gallery(run_dir, data_root=data_root)
    except Exception as exc:
        log(f"CAM gallery not written: {type(exc).__name__}: {exc}")
        return None


def fit_ood(
    run_dir: Path,
    model: LiverNet,
    train_loader: DataLoader,
    val_logits: np.ndarray,
    val_feats: np.ndarray,
    device: str = "cpu",
    quantile: float = DEFAULT_QUANTILE,
) -> dict:
    """Fit and store a run's out-of-distribution detector (``ood.safetensors``, ``model.json["ood"]``).

    The class means and the shared, shrunk covariance come from the pooled features of the training
    split seen without augmentation (``train_loader``); the threshold of every method in
    :data:`~liverscope.evaluate.ood.METHODS` is the ``quantile`` of the validation images' scores, so
    about that share of them pass. The run ships :data:`~liverscope.evaluate.ood.DEFAULT_METHOD`.

    Returns:
        ``model.json["ood"]`` plus the arrays (``means``, ``classes``, ``precision``) and ``val_scores``
        (the validation images' scores under the shipped method).
    """
    _, train_feats, train_y = infer_outputs(model, train_loader, device)
    gauss = fit_class_gaussian(train_feats, train_y, model.num_classes)
    # stored as float32; the thresholds are fitted with exactly the stored statistics
    stats = {
        "means": gauss["means"].astype(np.float32),
        "classes": gauss["classes"],
        "precision": gauss["precision"].astype(np.float32),
    }
    val_scores = {m: ood_scores(m, val_logits, val_feats, stats) for m in METHODS}
    thresholds = {m: fit_threshold(val_scores[m], quantile) for m in METHODS}
    info = {
        "method": DEFAULT_METHOD,
        "threshold": thresholds[DEFAULT_METHOD],
        "thresholds": thresholds,
        "quantile": quantile,
        "validation": flag_summary(val_scores[DEFAULT_METHOD], thresholds[DEFAULT_METHOD]),
        "validation_share_flagged": {m: flag_summary(val_scores[m], thresholds[m])["share"] for m in METHODS},
        "n_train": int(len(train_y)),
        "feature_dim": int(train_feats.shape[1]),
    }
    rundir.save_ood(run_dir, stats, info)
    log(
        f"out-of-distribution flag ({DEFAULT_METHOD}): threshold {info['threshold']:.4g} passes "
        f"{info['validation']['n'] - info['validation']['flagged']} of {info['validation']['n']} validation images"
    )
    return dict(info, **stats, val_scores=val_scores[DEFAULT_METHOD])


def fit_run_ood(run_dir: str | Path, device: str = "auto", quantile: float = DEFAULT_QUANTILE) -> dict:
    """Fit the out-of-distribution detector of an already trained run (one trained before liverscope
    scored OOD) from its own ``split.csv``: ``train`` rows for the class Gaussian, ``val`` rows for the
    threshold. Images are read through the run's preprocessing cache (recomputed where it is gone).

    Raises:
        LiverscopeError: no trained model, or a split without training or validation rows.
    """
    run_dir = Path(run_dir)
    model, meta = rundir.load_model(run_dir)
    cfg = rundir.read_config(run_dir)
    samples, assignment, _ = rundir.read_split(run_dir / rundir.SPLIT)
    pp = Preprocessing.from_dict(meta["preprocessing"])
    prep = PreparedData(
        samples, list(meta["labels"]), assignment, PreprocessCache(pp, cfg.data.cache_dir), pp, []
    )
    part = {k: [s for s, a in zip(samples, assignment) if a == k] for k in ("train", "val")}
    for k, rows in part.items():
        if not rows:
            raise LiverscopeError(
                f"{run_dir / rundir.SPLIT}: no '{k}' rows; the OOD detector needs training images (class means) and validation images (threshold)"
            )
    device = resolve_device(device)
    val_logits, val_feats, _ = infer_outputs(model, eval_loader(part["val"], prep, cfg), device)
    return fit_ood(
        run_dir, model, eval_loader(part["train"], prep, cfg), val_logits, val_feats, device, quantile
    )


def write_report_safely(run_dir: Path) -> None:
    """The report is a convenience: a failure is logged, never allowed to lose a trained model."""
    try:
        write_report(run_dir)
    except Exception as exc:
        log(f"report not written: {type(exc).__name__}: {exc}")
