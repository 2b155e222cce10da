"""``segment train`` after the fit: the held-out test images predicted (:func:`predict_held_out`, with the
lesion gate fitted on the validation images) and scored against their targets, expert masks and trivial
baselines (:func:`score_held_out`), the segmenter's ``.json`` (:func:`segmenter_meta`, with the resolved
configuration), its files (:func:`write_segmenter`) and what the command prints (:func:`summary_lines`);
and the state one run of :func:`liverscope.segment.commands.train_segmenter` carries between its steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverscope import __version__
from liverscope.data.geometry import to_original
from liverscope.data.preprocess import Preprocessing
from liverscope.evaluate.masks import centred_disc, expert_mask_summary, mask_scores, score_summary
from liverscope.evaluate.report import write_report
from liverscope.rundir import merge_metrics
from liverscope.segment.config import SegmentConfig
from liverscope.segment.gate import apply_gate, fit_gate
from liverscope.segment.images import LoadedImage, load_masks_for
from liverscope.segment.unet import normalisation, predict_probs_at, resize_masks, save_segmenter
from liverscope.utils import atomic_write_csv, log


@dataclass
class SegmentSetup:
    """What ``segment train`` settles before it reads any image."""

    run_dir: Path
    data: Path
    cfg: SegmentConfig  # checked, with train.size filled in
    files: dict  # the target's file names (segmenter_files)
    pp: Preprocessing  # the classifier's
    seg_pp: Preprocessing  # the segmenter's (pp at train.size when that is larger)
    arch: dict  # the architecture record
    device: str
    roots: list[Path]


@dataclass
class SegmentTargets:
    """The images and what the segmenter learns from them, on the segmenter's grid."""

    items: list[LoadedImage]
    masks: np.ndarray  # bool N x grid x grid
    sectors: np.ndarray  # bool N x grid x grid
    weights: np.ndarray | None  # per-pixel loss weights (pseudo.confident)
    desc: str  # what the targets are, in words
    skipped: list = field(default_factory=list)


@dataclass
class FittedSegmenter:
    """The trained network and what trained it (the engine's own figures for nnU-Net)."""

    model: Any
    info: dict
    arch: dict
    arch_name: str
    loss: str
    epochs: int | None
    lr: float
    batch_size: int

    @property
    def in_channels(self) -> int:
        return int(self.arch["in_channels"])


@dataclass
class HeldOutImages:
    """The held-out test images' predictions (gated and raw), sectors, targets and classes."""

    index: np.ndarray
    pred: list
    raw: list
    image_scores: list
    sectors: list
    truths: list
    classes: list


def _with_sector(full: dict, sector: dict) -> dict:
    """``{"n", "iou", "dice", "iou_sector", "dice_sector"}`` of two :func:`mask_scores`
    (whole image, sector)."""
    return {**score_summary(full), "iou_sector": sector["iou"], "dice_sector": sector["dice"]}


def _baselines(truth: list, classes: list, sectors: list, area: float, against: str) -> dict:
    """The trivial segmenters that see no mask of the image, scored like the U-Net: the whole scan sector,
    and a disc of ``area`` pixels at the sector's centroid (:func:`centred_disc`)."""
    return {
        "sector": {**expert_mask_summary(sectors, truth, classes, sectors), "against": against},
        "centred_disc": {
            **expert_mask_summary([centred_disc(s, area) for s in sectors], truth, classes, sectors),
            "against": against,
            "area_px": area,
        },
    }


def _summary_line(name: str, summary: dict) -> str:
    """One line of an :func:`expert_mask_summary`'s overall figures."""
    o = summary.get("overall") or {}
    parts = []
    if o.get("n_lesion"):
        parts.append(
            f"Dice {o['dice']:.3f}, IoU {o['iou']:.3f} over the {o['n_lesion']} images "
            "with something to outline, "
            f"detected {o['detection_rate']:.2f}"
        )
    if o.get("n_empty"):
        parts.append(
            f"false alarms on {o['false_positive_rate']:.0%} of the {o['n_empty']} images "
            "with nothing to outline"
        )
    return f"{name}: " + ("; ".join(parts) or "no test image")


def _fit_gate_on_validation(
    model, inputs: list, targets: np.ndarray, split: np.ndarray, size: int, arch: dict, device: str
) -> dict | None:
    """The lesion gate (:func:`~liverscope.segment.gate.fit_gate`) fitted on the validation images, when
    they hold both images with something to outline and images with nothing (else ``None``: no gate)."""
    va = np.flatnonzero(split == "val")
    if not len(va):
        return None
    truths = resize_masks(targets[va], size)
    has = truths.reshape(len(va), -1).any(1)
    if not (has.any() and (~has).any()):
        return None
    probs, image = predict_probs_at(
        model,
        [inputs[i] for i in va],
        size,
        int(arch["in_channels"]),
        device,
        normalisation(arch),
        scores=True,
    )
    return fit_gate(list(probs), list(truths), None if image is None else list(image))


def _image_head_auc(image: Sequence[float | None], truths: Sequence[np.ndarray]) -> float | None:
    """ROC AUC of the image-level head (anything to outline vs nothing) on the test images; ``None``
    without a head or without both kinds of image."""
    present = [bool(np.asarray(t).any()) for t in truths]
    if any(s is None for s in image) or len(set(present)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(present, image)), 4)


def predict_held_out(
    s: SegmentSetup, t: SegmentTargets, split: np.ndarray, f: FittedSegmenter
) -> tuple[dict | None, HeldOutImages]:
    """The lesion gate fitted on the validation images, and the test images' masks (gated and raw) on the
    segmenter's grid."""
    inputs, size, grid = [it.input for it in t.items], s.cfg.train.size, s.seg_pp.size
    gate = _fit_gate_on_validation(f.model, inputs, t.masks, split, size, f.arch, s.device)
    te = np.flatnonzero(split == "test")
    probs, image = predict_probs_at(
        f.model, [inputs[i] for i in te], size, f.in_channels, s.device, normalisation(f.arch), scores=True
    )
    image = [None] * len(te) if image is None else list(image)
    pred = [to_original(apply_gate(p, gate, sc)[0], (grid, grid)) for p, sc in zip(probs, image)]
    raw = [to_original(p > 0.5, (grid, grid)) for p in probs]
    return gate, HeldOutImages(
        te,
        pred,
        raw,
        image,
        [t.sectors[i] for i in te],
        [t.masks[i] for i in te],
        [t.items[i].label or "all" for i in te],
    )


def score_held_out(
    s: SegmentSetup,
    t: SegmentTargets,
    split: np.ndarray,
    f: FittedSegmenter,
    gate: dict | None,
    test: HeldOutImages,
) -> tuple[dict, list[dict]]:
    """The test images' scores against their targets, expert masks (:func:`_score_experts`) and the
    trivial baselines; and one row per test image."""
    pred, truths = test.pred, test.truths
    scores: dict = {
        "target": s.cfg.target,
        "masks": t.desc,
        "loss": f.loss,
        "size": s.cfg.train.size,
        "grid": s.seg_pp.size,
        "n_train": int((split == "train").sum()),
        "n_val": int((split == "val").sum()),
        "n_test": int(len(test.index)),
        "best_epoch": f.info["best_epoch"],
        "best_val_dice": f.info["best_val_dice"],
    }
    vs_target = mask_scores(pred, truths)
    vs_target_sec = mask_scores(pred, truths, test.sectors)
    scores["iou_vs_targets"] = vs_target["iou"]
    scores["dice_vs_targets"] = vs_target["dice"]
    scores["iou_vs_targets_sector"] = vs_target_sec["iou"]
    scores["dice_vs_targets_sector"] = vs_target_sec["dice"]
    scores["vs_targets"] = expert_mask_summary(pred, truths, test.classes, test.sectors)
    per_image = [
        {"path": str(t.items[i].path), "iou_vs_targets": a, "dice_vs_targets": b}
        for i, a, b in zip(test.index, vs_target["iou_per_image"], vs_target["dice_per_image"])
    ]
    have, experts = _score_experts(s, t, test, scores, per_image)
    cls_x, sec_x = [test.classes[k] for k in have], [test.sectors[k] for k in have]
    scores["gate"] = gate
    scores["image_head_auc"] = _image_head_auc(test.image_scores, truths)
    if experts is not None:
        scores["expert_masks"] = str(s.cfg.real_masks if s.cfg.real_masks is not None else s.cfg.masks)
        scores["vs_expert"] = expert_mask_summary([pred[k] for k in have], experts, cls_x, sec_x)
        if gate:
            scores["vs_expert_ungated"] = expert_mask_summary(
                [test.raw[k] for k in have], experts, cls_x, sec_x
            )
        if s.cfg.masks is None:
            scores["pseudo_vs_expert"] = expert_mask_summary([truths[k] for k in have], experts, cls_x, sec_x)
    train_areas = [int(t.masks[i].sum()) for i in np.flatnonzero(split == "train") if t.masks[i].any()]
    area = float(np.median(train_areas)) if train_areas else 0.0
    scores["baselines"] = (
        _baselines(experts, cls_x, sec_x, area, "expert masks")
        if experts is not None
        else _baselines(truths, test.classes, test.sectors, area, "targets")
    )
    return scores, per_image


def _score_experts(
    s: SegmentSetup, t: SegmentTargets, test: HeldOutImages, scores: dict, per_image: list[dict]
) -> tuple[list[int], list | None]:
    """``(test images with an expert mask, their expert masks)``: ``real_masks``, else the given
    ``masks`` themselves (``None`` on pseudo-masks without ``real_masks``); with ``real_masks`` the
    U-Net's and the targets' IoU/Dice against them go into ``scores`` and ``per_image``."""
    cfg = s.cfg
    if cfg.real_masks is None:
        return list(range(len(test.index))), (test.truths if cfg.masks is not None else None)
    reals, problems = load_masks_for([t.items[i] for i in test.index], Path(cfg.real_masks), s.seg_pp.size)
    have = [k for k, r in enumerate(reals) if r is not None]
    if problems:
        log(
            f"{len(problems)} test image(s) have no expert mask in {cfg.real_masks}; "
            f"scored on the {len(have)} that do"
        )
    experts = [reals[k] for k in have]
    rp, rs = [test.pred[k] for k in have], [test.sectors[k] for k in have]
    real = mask_scores(rp, experts)
    scores["unet_vs_real"] = _with_sector(real, mask_scores(rp, experts, rs))
    for k, a, b in zip(have, real["iou_per_image"], real["dice_per_image"]):
        per_image[k].update(iou_vs_real=a, dice_vs_real=b)
    if cfg.masks is None:
        tp = [test.truths[k] for k in have]
        scores["pseudo_vs_real"] = _with_sector(mask_scores(tp, experts), mask_scores(tp, experts, rs))
    scores["real_masks"] = str(cfg.real_masks)
    return have, experts


def segmenter_meta(
    s: SegmentSetup, t: SegmentTargets, split: np.ndarray, f: FittedSegmenter, scores: dict, resume: bool
) -> dict:
    """The segmenter's ``.json``: what it is, how it was trained (``config``: the resolved
    configuration), its scores."""
    cfg, info = s.cfg, f.info
    p = cfg.pseudo
    pseudo = {
        "rule": p.rule,
        "threshold": p.threshold,
        "q": p.q,
        "flip_average": p.flip_average,
        "method": p.method,
        "layers": p.layers,
        "confident": p.confident,
        "positive": p.positive,
        "within": p.within,
    }
    split_meta = {
        "method": "grouped stratified hold-out",
        "test_frac": cfg.train.test_frac,
        "val_frac": cfg.train.val_frac,
        "counts": {k: int((split == k).sum()) for k in ("train", "val", "test")},
        "file": s.files["split"],
    }
    return {
        "target": cfg.target,
        "architecture": f.arch,
        "size": cfg.train.size,
        "arch": f.arch_name,
        "input": "grey" if f.in_channels == 1 else "rgb",
        "normalisation": "(x/255 - {mean}) / {std}".format(**normalisation(f.arch)),
        "initial_weights": info["initial_weights"],
        "preprocessing": s.seg_pp.to_dict(),
        "classifier_size": s.pp.size,
        "classifier_run": str(s.run_dir),
        "data": str(s.data),
        "targets": t.desc,
        "pseudo_masks": None if cfg.masks is not None else pseudo,
        "loss": f.loss,
        "epochs": f.epochs,
        "epochs_run": info["epochs_run"],
        "best_epoch": info["best_epoch"],
        "lr": f.lr,
        "batch_size": f.batch_size,
        "seed": cfg.train.seed,
        "split": split_meta,
        "gate": scores["gate"],
        "scores": scores,
        "train_seconds": info["seconds"],
        "history": info["history"],
        "engine": info["engine"],
        **{k: info[k] for k in ("nnunet",) if k in info},
        "checkpoints": s.files["checkpoints"],
        "resumed": bool(resume),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "liverscope_version": __version__,
        "config": cfg.to_dict(),
    }


def write_segmenter(
    s: SegmentSetup,
    t: SegmentTargets,
    split: np.ndarray,
    f: FittedSegmenter,
    meta: dict,
    per_image: list[dict],
    report: bool,
) -> None:
    """The split, the segmenter (weights and ``.json``), its scores in ``metrics.json``; the
    report rewritten."""
    atomic_write_csv(
        s.run_dir / s.files["split"], ["path", "split"], [(str(it.path), k) for it, k in zip(t.items, split)]
    )
    save_segmenter(s.run_dir, f.model, meta, s.cfg.target)
    merge_metrics(s.run_dir, s.files["metrics"], {**meta["scores"], "test_images": per_image})
    if report:
        try:
            write_report(s.run_dir)
        except Exception as exc:  # the report is a convenience: never lose a trained segmenter over it
            log(f"report not written: {type(exc).__name__}: {exc}")


def summary_lines(s: SegmentSetup, t: SegmentTargets, f: FittedSegmenter, scores: dict) -> list[str]:
    """What ``segment train`` prints: the fit, the gate, the headline figures beside the
    baselines, the files."""
    info, target = f.info, s.cfg.target
    lines = [
        f"U-Net ({target}) trained on {t.desc} at {s.cfg.train.size} px: "
        f"{scores['n_train']} train / {scores['n_val']} val / "
        f"{scores['n_test']} test images, best epoch {info['best_epoch']} of {info['epochs_run']} "
        f"({info['seconds']:.0f}s)",
    ]
    # headline figures never count an empty prediction on an empty mask as a perfect Dice: Dice over the
    # images with something to outline, false alarms on the others (expert_mask_summary)
    experts = "vs_expert" in scores
    against = "expert masks" if experts else "targets"
    gate = scores["gate"]
    if gate:
        lines.append(
            "lesion gate (fitted on the validation images): largest region only, "
            f"at least {gate['min_area']:.2%} of the grid "
            f"and a peak probability of {gate['min_peak']:.2f}"
            + (
                f", on images the image-level head scores at least {gate['min_score']:.2f}"
                if "min_score" in gate
                else ""
            )
        )
    if scores["image_head_auc"] is not None:
        lines.append(f"image-level head (anything to outline?): test ROC AUC {scores['image_head_auc']:.3f}")
    for key, name in (
        ("vs_expert", "test vs expert masks"),
        ("vs_expert_ungated", "the same without the gate"),
        ("pseudo_vs_expert", "pseudo-masks vs expert masks"),
        ("vs_targets", "test vs targets"),
    ):
        if key in scores and (key != "vs_targets" or not experts or s.cfg.masks is None):
            lines.append(_summary_line(name, scores[key]))
    area = scores["baselines"]["centred_disc"]["area_px"]
    lines.append(_summary_line(f"baseline, whole sector vs {against}", scores["baselines"]["sector"]))
    lines.append(
        _summary_line(
            f"baseline, centred disc of {area:.0f} px vs {against}", scores["baselines"]["centred_disc"]
        )
    )
    lines.append(f"saved {s.run_dir / s.files['weights']} and {s.run_dir / s.files['meta']}")
    if t.skipped:
        lines.append(
            f"skipped {len(t.skipped)} file(s): " + "; ".join(f"{p} ({r})" for p, r in t.skipped[:10])
        )
    return lines


__all__ = [
    "SegmentSetup",
    "SegmentTargets",
    "FittedSegmenter",
    "HeldOutImages",
    "predict_held_out",
    "score_held_out",
    "segmenter_meta",
    "write_segmenter",
    "summary_lines",
]
