"""Weakly supervised segmentation: CAM pseudo-masks, an Attention U-Net trained on them, and scores.

The first reference study thresholds each Grad-CAM heatmap at 0.5 of its normalised range, calls the
result a pseudo-mask, trains an Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look
for the Pancreas", MIDL 2018) on those masks with binary cross-entropy and reports IoU 0.43 *against its
own pseudo-masks*. This module does the same by default and adds what makes the figure mean something:

* pseudo-mask rules besides the fixed 0.5 threshold — Otsu's threshold over the scan sector and the top
  q% of sector pixels — all limited to the scan sector (text, calibration marks and the black border
  are not tissue), and CAMs averaged over a cross-validation run's fold models and/or horizontal flips;
* a grouped train / validation / test split (duplicate images never straddle it);
* IoU and Dice against the pseudo-masks of held-out images (the study's figure) *and* against expert
  masks when a mask folder is given, over the whole image and restricted to the scan sector;
* the pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016): does
  the CAM's maximum fall inside the lesion?

Definitions used throughout (tests pin them down):

* a *normalised* map is min-max scaled to [0, 1] over the scan-sector pixels and 0 outside the sector
  (:func:`normalise_map`; a constant map becomes all zeros);
* :func:`threshold_mask`: pixels with ``cam >= threshold``;
* :func:`otsu_mask`: Otsu's threshold (OpenCV) of the sector pixels, rescaled to 0..255; pixels strictly
  above it; a constant map gives an empty mask;
* :func:`top_fraction_mask`: exactly ``ceil(q/100 * n)`` of the ``n`` sector pixels, the highest ones;
  ties are broken in raster order (top-left first);
* :func:`iou` / :func:`dice`: MONAI's ``compute_iou`` / ``compute_dice``; two empty masks score 1.0
  (perfect agreement that nothing is there), an empty and a non-empty mask score 0.0;
* :func:`pointing_game`: the first maximum (raster order) of the CAM, inside the sector when one is given,
  is a hit when it lies in the true mask; a constant map points nowhere (a miss); an empty true mask has
  no answer (``None``, left out of hit rates).

Masks on disk are PNGs at the original image size, 0 = background, 255 = foreground (read back as
``> 127``). A mask belongs to the image with the same relative path or, failing that, the same file name.

The segmenter lives in the run directory: ``segmenter.safetensors`` (weights, never pickled) and
``segmenter.json`` (architecture, input size, preprocessing, split, loss, scores). The app calls
:func:`load_segmenter` and :func:`predict_mask`.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from liverscope.data.io import decode_image, read_bytes, to_grey
from liverscope.data.preprocess import Preprocessing, preprocess_array, sector_mask
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.explain import crop_box, normalise_in_region
from liverscope.utils import atomic_path, atomic_write_json, atomic_write_text, log, read_json

RULES = ("threshold", "otsu", "top")
LOSSES = ("bce", "bce+dice")
#: U-Net channels per level: small enough to train on a laptop CPU in minutes at 128-160 px.
DEFAULT_CHANNELS = (8, 16, 32, 64)
SEGMENTER_WEIGHTS = "segmenter.safetensors"
SEGMENTER_META = "segmenter.json"
#: Mask pixels above this grey value are foreground (masks are stored as 0/255).
MASK_LEVEL = 127


_log = log  # progress lines: liverscope.utils.log


def _cpu_threads(device: str = "cpu"):
    """On CPU, compute with half the cores (:func:`liverscope.predict.default_model_threads`): on a CPU
    busy with anything else a full OpenMP team stalls at its barriers — measured here, 8 epochs of the
    phantom U-Net took 12-65 s with 2 threads and 0.7-3.5 s with 1 on a busy 2-core machine."""
    import contextlib

    from liverscope.predict import default_model_threads, torch_threads

    return torch_threads(default_model_threads()) if str(device).startswith("cpu") else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# Pseudo-mask rules (pure functions: arrays in, boolean masks out)
# --------------------------------------------------------------------------------------------------


def _region(cam: np.ndarray, sector: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise LiverscopeError(f"a CAM must be a 2-D map, got shape {cam.shape}")
    if sector is None:
        return cam, np.ones(cam.shape, bool)
    sector = np.asarray(sector, dtype=bool)
    if sector.shape != cam.shape:
        raise LiverscopeError(f"sector mask shape {sector.shape} does not match the CAM's {cam.shape}")
    return cam, sector


def normalise_map(cam: np.ndarray, sector: np.ndarray | None = None) -> np.ndarray:
    """Min-max scale a map to [0, 1] over the sector pixels; 0 outside the sector and for a constant map.

    Args:
        cam: ``HxW`` map (any range).
        sector: ``HxW`` boolean scan-sector mask (``None``: the whole image).

    Returns:
        float32 ``HxW`` in [0, 1].
    """
    cam, sec = _region(cam, sector)
    return normalise_in_region(cam, sec)


def threshold_mask(cam: np.ndarray, threshold: float = 0.5, sector: np.ndarray | None = None) -> np.ndarray:
    """The study's rule: pixels of the normalised map at or above ``threshold``, inside the sector.

    Args:
        cam: ``HxW`` normalised map (see :func:`normalise_map`).
        threshold: cut-off (0.5 in the study).
        sector: scan-sector mask (``None``: whole image).

    Returns:
        bool ``HxW`` mask.
    """
    cam, sec = _region(cam, sector)
    return (cam >= threshold) & sec


def otsu_mask(cam: np.ndarray, sector: np.ndarray | None = None) -> np.ndarray:
    """Otsu's threshold over the sector pixels (Otsu, IEEE Trans. SMC 1979), computed by OpenCV.

    The sector values are rescaled to 0..255 (Otsu's threshold is unchanged by rescaling) and the mask
    holds the pixels strictly above the threshold. A constant map has no threshold: empty mask.

    Returns:
        bool ``HxW`` mask, inside the sector.
    """
    cam, sec = _region(cam, sector)
    mask = np.zeros(cam.shape, bool)
    vals = cam[sec]
    if vals.size == 0:
        return mask
    lo, hi = float(vals.min()), float(vals.max())
    if hi - lo <= 1e-12:
        return mask
    q = np.clip(np.rint((vals - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(q.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask[sec] = q > t
    return mask


def top_fraction_mask(cam: np.ndarray, sector: np.ndarray | None = None, q: float = 20.0) -> np.ndarray:
    """The ``q`` percent highest sector pixels: exactly ``ceil(q/100 * n)`` of the ``n`` sector pixels.

    Ties are broken in raster order (the earlier pixel wins), so the count is always exact.

    Args:
        cam: ``HxW`` map.
        sector: scan-sector mask (``None``: whole image).
        q: percentage in [0, 100].

    Returns:
        bool ``HxW`` mask.
    """
    if not 0 <= q <= 100:
        raise LiverscopeError(f"--q {q}: the top fraction is a percentage in [0, 100]")
    cam, sec = _region(cam, sector)
    idx = np.flatnonzero(sec.ravel())
    k = min(len(idx), int(math.ceil(q * len(idx) / 100.0 - 1e-9)))
    mask = np.zeros(cam.size, bool)
    if k > 0:
        order = np.argsort(-cam.ravel()[idx], kind="stable")
        mask[idx[order[:k]]] = True
    return mask.reshape(cam.shape)


def pseudo_mask(cam: np.ndarray, sector: np.ndarray | None = None, rule: str = "threshold", *, threshold: float = 0.5, q: float = 20.0) -> np.ndarray:
    """One pseudo-mask by rule name: ``threshold`` (default, ``cam >= threshold``), ``otsu`` or ``top`` (top ``q``%)."""
    if rule == "threshold":
        return threshold_mask(cam, threshold, sector)
    if rule == "otsu":
        return otsu_mask(cam, sector)
    if rule == "top":
        return top_fraction_mask(cam, sector, q)
    raise LiverscopeError(f"pseudo-mask rule '{rule}': expected one of {', '.join(RULES)}")


def describe_rule(rule: str, threshold: float = 0.5, q: float = 20.0, flip_average: bool = False, n_models: int = 1) -> str:
    """Human-readable name of a pseudo-mask recipe, e.g. ``threshold 0.5, flip-averaged``."""
    name = {"threshold": f"threshold {threshold:g}", "otsu": "Otsu", "top": f"top {q:g}%"}.get(rule, rule)
    if flip_average:
        name += ", flip-averaged"
    if n_models > 1:
        name += f", {n_models}-model ensemble"
    return name


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _pair(pred, true, region) -> tuple:
    import torch

    p = np.asarray(pred).astype(bool)
    t = np.asarray(true).astype(bool)
    if p.shape != t.shape:
        raise LiverscopeError(f"mask shapes differ: {p.shape} vs {t.shape}")
    if region is not None:
        r = np.asarray(region, bool)
        p, t = p & r, t & r
    return torch.from_numpy(p[None, None].astype(np.float32)), torch.from_numpy(t[None, None].astype(np.float32))


def iou(pred: np.ndarray, true: np.ndarray, region: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean masks (MONAI ``compute_iou``).

    Args:
        pred, true: ``HxW`` masks (bool or 0/1).
        region: only pixels inside it count (e.g. the scan sector); ``None``: all.

    Returns:
        IoU in [0, 1]; two empty masks give 1.0.
    """
    from monai.metrics import compute_iou

    p, t = _pair(pred, true, region)
    return float(compute_iou(p, t, include_background=True, ignore_empty=False).item())


def dice(pred: np.ndarray, true: np.ndarray, region: np.ndarray | None = None) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two boolean masks (MONAI ``compute_dice``).

    Returns:
        Dice in [0, 1]; two empty masks give 1.0.
    """
    from monai.metrics import compute_dice

    p, t = _pair(pred, true, region)
    return float(compute_dice(p, t, include_background=True, ignore_empty=False).item())


def pointing_game(cam: np.ndarray, true_mask: np.ndarray, sector: np.ndarray | None = None) -> bool | None:
    """Whether the CAM's maximum falls inside the true mask (the pointing game, no tolerance).

    Args:
        cam: ``HxW`` map.
        true_mask: ``HxW`` boolean mask of the object.
        sector: only look for the maximum inside it (``None``: whole image).

    Returns:
        ``True`` (hit) / ``False`` (miss; also for a constant map, which points nowhere), or ``None``
        when the true mask is empty (no answer; leave it out of hit rates).
    """
    cam, sec = _region(cam, sector)
    true_mask = np.asarray(true_mask, bool)
    if true_mask.shape != cam.shape:
        raise LiverscopeError(f"mask shape {true_mask.shape} does not match the CAM's {cam.shape}")
    if not true_mask.any():
        return None
    if not sec.any():
        return False
    vals = np.where(sec, cam, -np.inf)
    if float(cam[sec].max()) - float(cam[sec].min()) <= 1e-12:
        return False
    return bool(true_mask.ravel()[int(np.argmax(vals))])


def mask_scores(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], regions: Sequence[np.ndarray] | None = None) -> dict:
    """Mean IoU and Dice over image pairs (and per image).

    Args:
        preds, trues: masks, pairwise of equal shape.
        regions: optional per-image regions (e.g. scan sectors) the scores are restricted to.

    Returns:
        ``{"n", "iou", "dice", "iou_per_image", "dice_per_image"}`` (means are NaN for ``n = 0``).
    """
    if len(preds) != len(trues):
        raise LiverscopeError(f"{len(preds)} predicted masks for {len(trues)} true masks")
    regs = regions if regions is not None else [None] * len(preds)
    ious = [iou(p, t, r) for p, t, r in zip(preds, trues, regs)]
    dices = [dice(p, t, r) for p, t, r in zip(preds, trues, regs)]
    return {
        "n": len(ious),
        "iou": float(np.mean(ious)) if ious else float("nan"),
        "dice": float(np.mean(dices)) if dices else float("nan"),
        "iou_per_image": ious,
        "dice_per_image": dices,
    }


def _summary(s: dict) -> dict:
    return {k: s[k] for k in ("n", "iou", "dice")}


# --------------------------------------------------------------------------------------------------
# Geometry: original image <-> model input
# --------------------------------------------------------------------------------------------------


def mask_to_model(mask: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """An original-size mask → the model's ``size x size`` grid (same crop, nearest neighbour)."""
    y0, y1, x0, x1 = box
    m = np.asarray(mask, bool)[y0:y1, x0:x1].astype(np.uint8)
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


def mask_to_original(mask: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A model-grid mask → the original image's ``HxW`` (nearest neighbour; 0 outside a crop box)."""
    h, w = shape[:2]
    y0, y1, x0, x1 = box or (0, h, 0, w)
    out = np.zeros((h, w), bool)
    m = cv2.resize(np.asarray(mask, np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    out[y0:y1, x0:x1] = m.astype(bool)
    return out


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as a boolean array (grey value > 127), resized (nearest) to ``shape`` when given."""
    m = to_grey(decode_image(read_bytes(path), path)) > MASK_LEVEL
    if shape is not None and m.shape != tuple(shape[:2]):
        m = cv2.resize(m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    return m


def find_mask(mask_dir: str | Path, rel: str | Path) -> Path | None:
    """The mask of an image in ``mask_dir``: same relative path, then same file name (any image suffix
    → ``.png`` also tried; a ``NAME_mask.png`` also matches ``NAME``)."""
    mask_dir, rel = Path(mask_dir), Path(rel)
    stems = [rel.stem] + ([rel.stem[: -len("_mask")]] if rel.stem.endswith("_mask") else [])
    candidates = [mask_dir / rel, mask_dir / rel.with_suffix(".png")]
    for stem in stems:
        candidates += [mask_dir / rel.parent / f"{stem}{rel.suffix}", mask_dir / rel.parent / f"{stem}.png", mask_dir / f"{stem}{rel.suffix}", mask_dir / f"{stem}.png"]
    for c in candidates:
        if c.is_file():
            return c
    return None


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    """Write a boolean mask as a 0/255 PNG, atomically."""
    ok, buf = cv2.imencode(".png", np.asarray(mask, bool).astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - only for invalid arrays
        raise LiverscopeError(f"cannot encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


# --------------------------------------------------------------------------------------------------
# Loading images of a folder
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """A decoded file reduced to what segmentation needs: the model input and how to map back."""

    path: Path
    rel: Path  # path relative to the data root (the file name for a file given directly)
    input: np.ndarray  # preprocessed uint8 size x size x 3
    shape: tuple[int, int]  # original H, W
    box: tuple[int, int, int, int]  # crop box in the original image
    label: str | None = None
    extra: dict = field(default_factory=dict)


def _relative(path: Path, roots: Sequence[Path]) -> Path:
    for r in roots:
        if r.is_dir():
            try:
                return path.relative_to(r)
            except ValueError:
                continue
    return Path(path.name)


def load_images(files: Sequence[Path], pp: Preprocessing, roots: Sequence[Path] = (), labels: Sequence[str] | None = None,
                keep_original: bool = False, workers: int = 2) -> tuple[list[LoadedImage], list[tuple[str, str]]]:
    """Decode and preprocess files in threads; unreadable ones are returned as ``(path, reason)``.

    Args:
        files: image files.
        pp: the classifier's preprocessing.
        roots: folders the relative names are taken from.
        labels: optional label per file.
        keep_original: keep the decoded original in ``extra["original"]`` (for overlays).
        workers: threads.
    """
    roots = [Path(r) for r in roots]

    def work(i: int):
        p = Path(files[i])
        try:
            img = decode_image(read_bytes(p), p)
        except ImageReadError as exc:
            return (str(p), exc.reason)
        item = LoadedImage(p, _relative(p, roots), preprocess_array(img, pp), img.shape[:2], crop_box(img, pp), labels[i] if labels else None)
        if keep_original:
            item.extra["original"] = img
        return item

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results = list(ex.map(work, range(len(files))))
    good = [r for r in results if isinstance(r, LoadedImage)]
    bad = [r for r in results if not isinstance(r, LoadedImage)]
    return good, bad


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named or found recursively in folders (``masks/`` and hidden files skipped)."""
    from liverscope.predict import iter_image_files

    return list(iter_image_files(paths))


# --------------------------------------------------------------------------------------------------
# CAMs of a run (single model or fold ensemble, optional flip averaging) and pseudo-masks
# --------------------------------------------------------------------------------------------------


def run_preprocessing(run_dir: str | Path) -> Preprocessing:
    """The preprocessing recorded in a run's ``model.json``."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").exists():
        raise LiverscopeError(f"{run_dir}: no model.json — train first (liverscope train) or check the run directory")
    return Preprocessing.from_dict(read_json(run_dir / "model.json")["preprocessing"])


def model_dirs(run_dir: str | Path, ensemble: Sequence[str | Path] | None = None) -> list[Path]:
    """The classifier(s) whose CAMs are averaged: ``ensemble`` when given, the fold models of a ``cv``
    run (``model.json`` lists them under ``ensemble``), else the run itself."""
    run_dir = Path(run_dir)
    if ensemble:
        return [Path(e) for e in ensemble]
    meta_path = run_dir / "model.json"
    if not meta_path.exists():
        raise LiverscopeError(f"{run_dir}: no model.json — train first (liverscope train) or check the run directory")
    meta = read_json(meta_path)
    if meta.get("ensemble") and not (run_dir / "model.safetensors").exists():
        return [run_dir / e for e in meta["ensemble"]]
    return [run_dir]


@dataclass
class PseudoMasks:
    """CAMs, sectors and pseudo-masks of a batch of model inputs."""

    masks: np.ndarray  # bool N,H,W
    cams: np.ndarray  # float32 N,H,W, normalised over the sector
    sectors: np.ndarray  # bool N,H,W
    classes: np.ndarray  # int N: the class the CAMs explain
    rule: str


def run_cams(run_dir: str | Path, images: Sequence[np.ndarray], *, ensemble: Sequence[str | Path] | None = None, flip_average: bool = False,
             method: str = "gradcam", targets: Sequence[int] | None = None, batch_size: int = 16, models: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of preprocessed model inputs, averaged over the fold models and/or the mirrored image.

    The class explained is ``targets`` when given, else the predicted class (of the ensemble: mean of
    the fold logits, as the ensemble predicts). With ``flip_average`` the raw map of the mirrored image
    (explained for the same class) is mirrored back and averaged with the raw map before normalising
    (:func:`liverscope.explain.compute_cams` ``aug_smooth_flip``); fold models' normalised maps are averaged.

    Args:
        run_dir: a run directory.
        images: uint8 ``size x size x 3`` model inputs (:func:`~liverscope.data.preprocess.preprocess_array`).
        ensemble: fold model directories (default: see :func:`model_dirs`).
        flip_average: also average over the horizontally mirrored image.
        method: CAM method of :func:`liverscope.explain.compute_cams`.
        targets: class index per image.
        batch_size: images per CAM pass.
        models: already loaded models (skips loading from ``run_dir``).

    Returns:
        ``(cams float32 N,H,W, class indices int N)``; the averaged map is *not* renormalised here.
    """
    import torch

    from liverscope import explain
    from liverscope.predict import load_run_model, normalise_batch

    pp = run_preprocessing(run_dir)
    if models is None:
        models = [load_run_model(d)[0] for d in model_dirs(run_dir, ensemble)]
    images = [np.ascontiguousarray(im) for im in images]
    if not images:
        return np.zeros((0, pp.size, pp.size), np.float32), np.zeros(0, int)
    if targets is None and len(models) > 1:
        with torch.inference_mode(), _cpu_threads(str(next(models[0].parameters()).device)):
            logits = []
            for m in models:
                out = [m.eval()(torch.from_numpy(normalise_batch(images[i : i + batch_size], pp)).permute(0, 3, 1, 2)).float()
                       for i in range(0, len(images), batch_size)]
                logits.append(torch.cat(out).numpy())
        targets = np.mean(logits, axis=0).argmax(axis=1)
    total, count = None, 0
    for m in models:
        # flips: explain averages the raw maps of the scan and its mirror image (same class), then
        # normalises; fold models: their normalised maps are averaged (raw scales differ between models)
        with _cpu_threads(str(next(m.parameters()).device)):
            cams, classes = explain.compute_cams(m, images, pp, targets=None if targets is None else list(targets), method=method,
                                                 restrict_to_sector=True, batch_size=batch_size, aug_smooth_flip=flip_average)
        if targets is None:
            targets = np.asarray(classes)
        cams = np.asarray(cams, np.float32)
        total = cams if total is None else total + cams
        count += 1
    return (total / count).astype(np.float32), np.asarray(targets, int)


def pseudo_masks(run_dir: str | Path, images: Sequence[np.ndarray], rule: str = "threshold", *, threshold: float = 0.5, q: float = 20.0,
                 flip_average: bool = False, ensemble: Sequence[str | Path] | None = None, method: str = "gradcam", batch_size: int = 16,
                 cams: tuple[np.ndarray, np.ndarray] | None = None) -> PseudoMasks:
    """CAM pseudo-masks of preprocessed model inputs.

    Each map (averaged over the ensemble / flips, see :func:`run_cams`) is normalised over its scan
    sector (:func:`normalise_map`) and cut by ``rule`` (:func:`pseudo_mask`); masks never leave the sector.

    Args:
        run_dir: a run directory (a ``cv`` run: its fold models are averaged).
        images: uint8 ``size x size x 3`` model inputs.
        rule: ``threshold`` (default; ``threshold`` 0.5 as in the study), ``otsu`` or ``top`` (``q`` %).
        cams: precomputed ``(cams, classes)`` of :func:`run_cams` (to try several rules on one pass).

    Returns:
        :class:`PseudoMasks`.
    """
    if rule not in RULES:
        raise LiverscopeError(f"pseudo-mask rule '{rule}': expected one of {', '.join(RULES)}")
    if cams is None:
        cams = run_cams(run_dir, images, ensemble=ensemble, flip_average=flip_average, method=method, batch_size=batch_size)
    raw, classes = cams
    sectors = np.stack([sector_mask(im) for im in images]) if len(images) else np.zeros((0,) + raw.shape[1:], bool)
    norm = np.stack([normalise_map(c, s) for c, s in zip(raw, sectors)]) if len(images) else raw
    masks = np.stack([pseudo_mask(c, s, rule, threshold=threshold, q=q) for c, s in zip(norm, sectors)]) if len(images) else np.zeros(raw.shape, bool)
    n_models = len(model_dirs(run_dir, ensemble)) if run_dir is not None else 1
    return PseudoMasks(masks, norm, sectors, np.asarray(classes), describe_rule(rule, threshold, q, flip_average, n_models))


def score_pseudo_masks(pm: PseudoMasks, true_masks: Sequence[np.ndarray]) -> dict:
    """Pseudo-masks (and their CAMs) against true masks on the model grid.

    Returns:
        ``{"n", "iou", "dice", "iou_sector", "dice_sector", "pointing_game", "pointing_n", "iou_per_image",
        "dice_per_image", "hits"}`` — the ``_sector`` scores only count pixels inside the scan sector;
        ``pointing_game`` is the hit rate over the ``pointing_n`` images whose true mask is not empty.
    """
    trues = [np.asarray(t, bool) for t in true_masks]
    if len(trues) != len(pm.masks):
        raise LiverscopeError(f"{len(pm.masks)} pseudo-masks for {len(trues)} true masks")
    full = mask_scores(list(pm.masks), trues)
    sec = mask_scores(list(pm.masks), trues, list(pm.sectors))
    hits = [pointing_game(c, t, s) for c, t, s in zip(pm.cams, trues, pm.sectors)]
    valid = [h for h in hits if h is not None]
    return {
        "n": full["n"], "iou": full["iou"], "dice": full["dice"], "iou_sector": sec["iou"], "dice_sector": sec["dice"],
        "pointing_game": float(np.mean(valid)) if valid else float("nan"), "pointing_n": len(valid),
        "iou_per_image": full["iou_per_image"], "dice_per_image": full["dice_per_image"], "hits": hits,
    }


def _check_out_dir(out: Path, data_roots: Sequence[Path]) -> None:
    o = out.resolve()
    for d in data_roots:
        d = d.resolve()
        root = d if d.is_dir() else d.parent
        if o == root or root in o.parents:
            raise LiverscopeError(f"--out {out} lies inside the data folder {root}: masks are never written into the data; choose another folder")


def write_pseudo_masks(run_dir: str | Path, data: str | Path, out: str | Path | None = None, *, rule: str = "threshold", threshold: float = 0.5,
                       q: float = 20.0, flip_average: bool = False, method: str = "gradcam", ensemble: Sequence[str | Path] | None = None,
                       chunk: int = 64) -> dict:
    """Pseudo-masks of every image of ``data`` as PNGs (0/255, original size) under ``out``, mirroring
    ``data``'s relative paths (``.png`` suffix). ``out`` defaults to ``RUN_DIR/pseudo_masks`` and may not
    lie inside ``data``.

    Returns:
        ``{"written", "out", "rule", "skipped": [(path, reason), ...]}``.
    """
    run_dir, data = Path(run_dir), Path(data)
    if not data.exists():
        raise LiverscopeError(f"{data}: does not exist (give an image folder or file)")
    if rule not in RULES:
        raise LiverscopeError(f"pseudo-mask rule '{rule}': expected one of {', '.join(RULES)}")
    out = Path(out) if out is not None else run_dir / "pseudo_masks"
    _check_out_dir(out, [data])
    pp = run_preprocessing(run_dir)
    from liverscope.predict import load_run_model

    models = [load_run_model(d)[0] for d in model_dirs(run_dir, ensemble)]
    files = list_images([data])
    written, skipped, desc = 0, [], describe_rule(rule, threshold, q, flip_average, len(models))
    for start in range(0, len(files), chunk):
        items, bad = load_images(files[start : start + chunk], pp, roots=[data])
        skipped += bad
        if not items:
            continue
        inputs = [it.input for it in items]
        cams = run_cams(run_dir, inputs, flip_average=flip_average, method=method, models=models)
        pm = pseudo_masks(run_dir, inputs, rule, threshold=threshold, q=q, ensemble=ensemble, cams=cams)
        for it, m in zip(items, pm.masks):
            write_mask_png(out / it.rel.with_suffix(".png"), mask_to_original(m, it.shape, it.box))
            written += 1
    atomic_write_json(out / "pseudo_masks.json", {
        "run": str(run_dir), "data": str(data), "rule": rule, "threshold": threshold, "q": q, "flip_average": flip_average,
        "method": method, "models": [str(d) for d in model_dirs(run_dir, ensemble)], "description": desc, "written": written,
        "skipped": [list(s) for s in skipped],
    })
    return {"written": written, "out": out, "rule": desc, "skipped": skipped}


# --------------------------------------------------------------------------------------------------
# Attention U-Net
# --------------------------------------------------------------------------------------------------


def build_unet(in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS, strides: Sequence[int] | None = None, dropout: float = 0.0):
    """MONAI's 2-D Attention U-Net with one output channel (logits).

    Args:
        in_channels: 1 (grey, the default: B-mode is grey) or 3.
        channels: feature channels per level; the input side must be a multiple of the product of ``strides``.
        strides: down-sampling per level (default 2 at each of ``len(channels) - 1`` levels).
        dropout: dropout probability.
    """
    from monai.networks.nets import AttentionUnet

    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise LiverscopeError(f"the U-Net needs at least two levels of channels, got {channels}")
    strides = tuple(int(s) for s in (strides or (2,) * (len(channels) - 1)))
    if in_channels not in (1, 3):
        raise LiverscopeError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
    return AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=channels, strides=strides, dropout=dropout)


def unet_arch(in_channels: int = 1, channels: Sequence[int] = DEFAULT_CHANNELS, strides: Sequence[int] | None = None, dropout: float = 0.0) -> dict:
    channels = [int(c) for c in channels]
    return {"name": "monai.networks.nets.AttentionUnet", "spatial_dims": 2, "in_channels": int(in_channels), "out_channels": 1,
            "channels": channels, "strides": [int(s) for s in (strides or (2,) * (len(channels) - 1))], "dropout": float(dropout)}


def _unet_from_arch(arch: dict):
    return build_unet(arch["in_channels"], arch["channels"], arch["strides"], arch.get("dropout", 0.0))


def _check_size(size: int, strides: Sequence[int]) -> None:
    step = int(np.prod(strides))
    if size % step or size < 2 * step:
        raise LiverscopeError(f"U-Net input size {size} must be a multiple of {step} (the product of the strides) and at least {2 * step}")


def to_unet_input(images: Sequence[np.ndarray], size: int, in_channels: int = 1):
    """uint8 ``HxWx3`` images → float tensor ``N x C x size x size`` scaled to about [-2, 2]."""
    import torch

    arrs = []
    for im in images:
        im = np.asarray(im)
        if im.shape[0] != size or im.shape[1] != size:
            interp = cv2.INTER_AREA if min(im.shape[:2]) > size else cv2.INTER_LINEAR
            im = cv2.resize(im, (size, size), interpolation=interp)
        a = to_grey(im)[None] if in_channels == 1 else np.moveaxis(im if im.ndim == 3 else np.repeat(im[..., None], 3, 2), 2, 0)
        arrs.append(a)
    x = torch.from_numpy(np.stack(arrs).astype(np.float32))
    return (x / 255.0 - 0.5) / 0.25


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    if masks.shape[1] == size and masks.shape[2] == size:
        return masks.astype(bool)
    return np.stack([cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) for m in masks]).astype(bool)


@dataclass
class Segmenter:
    """A trained Attention U-Net with its metadata (``segmenter.json``)."""

    model: object
    meta: dict
    device: str = "cpu"

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def in_channels(self) -> int:
        return int(self.meta["architecture"]["in_channels"])


def predict_proba(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Foreground probabilities of model inputs, each at its own ``HxW`` (bilinear resize back)."""
    import torch

    out = []
    model = segmenter.model.eval()
    with torch.inference_mode(), _cpu_threads(segmenter.device):
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            x = to_unet_input(chunk, segmenter.size, segmenter.in_channels).to(segmenter.device)
            probs = torch.sigmoid(model(x)).float().cpu().numpy()[:, 0]
            for im, p in zip(chunk, probs):
                h, w = np.asarray(im).shape[:2]
                out.append(p if (h, w) == p.shape else cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR))
    return out


def predict_mask(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """Boolean mask of one preprocessed model input (uint8 ``HxWx3``) at its ``HxW``: probability > 0.5.

    This is the app's contract (``liverscope.app.segmentation_outline``).
    """
    return predict_proba(segmenter, [image])[0] > 0.5


def save_segmenter(run_dir: str | Path, model, meta: dict) -> None:
    """``segmenter.safetensors`` (weights only) + ``segmenter.json``, each written atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / SEGMENTER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(run_dir / SEGMENTER_META, meta)


def load_segmenter(run_dir: str | Path, device: str = "cpu") -> Segmenter | None:
    """The run's segmenter, or ``None`` when the run has none (no ``segmenter.json``/``.safetensors``)."""
    from safetensors.torch import load_file

    from liverscope.utils import resolve_device

    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / SEGMENTER_META, run_dir / SEGMENTER_WEIGHTS
    if not meta_path.exists() or not weights_path.exists():
        return None
    meta = read_json(meta_path)
    device = resolve_device(device)
    model = _unet_from_arch(meta["architecture"])
    model.load_state_dict(load_file(str(weights_path)))
    return Segmenter(model.to(device).eval(), meta, device)


def _bce_dice_loss(kind: str):
    import torch

    bce = torch.nn.BCEWithLogitsLoss()
    if kind == "bce":
        return bce
    if kind == "bce+dice":
        from monai.losses import DiceLoss

        dl = DiceLoss(sigmoid=True)
        return lambda logits, target: bce(logits, target) + dl(logits, target)
    raise LiverscopeError(f"--loss {kind}: expected one of {', '.join(LOSSES)}")


def fit_unet(images: Sequence[np.ndarray], masks: np.ndarray, split: Sequence[str], *, device: str = "cpu", **kwargs) -> tuple[object, dict]:
    """Train an Attention U-Net on ``(image, mask)`` pairs; the weights of the best validation Dice are kept.

    A plain PyTorch loop (not Lightning): a few hundred steps of a small network on in-memory tensors
    need no devices/precision/checkpoint machinery, and the loop stays fast in tests. On CPU it runs
    with half the cores (see :func:`_cpu_threads`).

    Args:
        images: uint8 ``HxWx3`` images (resized to ``size``).
        masks: bool ``N x H x W`` targets.
        split: ``train`` / ``val`` / ``test`` per image (``test`` images are not touched).
        device: ``cpu`` or ``cuda``.
        size: U-Net input size (default: the images' size); a multiple of 2**levels.
        in_channels: 1 (grey) or 3.
        channels: U-Net channels per level.
        loss: ``bce`` (BCE with logits; the study's) or ``bce+dice`` (plus MONAI's soft Dice loss).
        epochs: passes over the training images.
        batch_size: images per step.
        lr: Adam learning rate.
        seed: initialisation and shuffling seed.
        patience: stop after this many epochs without a better validation Dice (``None``: never).
        flip: random horizontal flips of training pairs.
        max_steps: stop after this many optimiser steps (quick checks).

    Returns:
        ``(model in eval mode with the best weights, info)``; ``info`` has ``best_epoch``, ``best_val_dice``,
        ``epochs_run``, ``history`` (per epoch: loss, val Dice), ``seconds``.
    """
    with _cpu_threads(device):
        return _fit_unet(images, masks, split, device=device, **kwargs)


def _fit_unet(images: Sequence[np.ndarray], masks: np.ndarray, split: Sequence[str], *, size: int | None = None, in_channels: int = 1,
             channels: Sequence[int] = DEFAULT_CHANNELS, loss: str = "bce", epochs: int = 30, batch_size: int = 8, lr: float = 1e-3,
             seed: int = 0, device: str = "cpu", patience: int | None = None, flip: bool = True, verbose: bool = False,
             max_steps: int | None = None) -> tuple[object, dict]:
    """See :func:`fit_unet`."""
    import torch

    from liverscope.utils import seed_everything

    split = np.asarray(split).astype(str)
    masks = np.asarray(masks, bool)
    if len(images) != len(masks) or len(images) != len(split):
        raise LiverscopeError(f"{len(images)} images, {len(masks)} masks and {len(split)} split labels: they must match")
    size = int(size or np.asarray(images[0]).shape[0])
    arch = unet_arch(in_channels, channels)
    _check_size(size, arch["strides"])
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(tr) == 0:
        raise LiverscopeError("no training images for the U-Net (the split left none)")
    seed_everything(seed)
    model = _unet_from_arch(arch).to(device)
    x_all = to_unet_input(images, size, in_channels)
    y_all = torch.from_numpy(_resize_masks(masks, size)[:, None].astype(np.float32))
    criterion = _bce_dice_loss(loss)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best = {"dice": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    history, steps, t0, stale = [], 0, time.perf_counter(), 0
    for epoch in range(1, int(epochs) + 1):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen).numpy()]
        losses = []
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # BatchNorm needs two samples
            xb, yb = x_all[idx].clone(), y_all[idx].clone()
            if flip:
                f = torch.rand(len(idx), generator=gen) < 0.5
                xb[f], yb[f] = xb[f].flip(-1), yb[f].flip(-1)
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            lo = criterion(model(xb), yb)
            lo.backward()
            opt.step()
            losses.append(float(lo.item()))
            steps += 1
            if max_steps and steps >= max_steps:
                break
        val_dice = float("nan")
        if len(va):
            preds = _predict_tensor(model, x_all[va], device)
            val_dice = float(np.mean([dice(p, t) for p, t in zip(preds, y_all[va, 0].numpy().astype(bool))]))
        score = val_dice if len(va) else float(epoch)  # without validation images: keep the last epoch
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"), "val_dice": val_dice})
        if verbose:
            _log(f"U-Net epoch {epoch}: loss {history[-1]['loss']:.4f}, val Dice {val_dice:.3f}")
        if score > best["dice"]:
            best = {"dice": score, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            stale = 0
        else:
            stale += 1
        if (patience and stale >= patience) or (max_steps and steps >= max_steps):
            break
    model.load_state_dict(best["state"])
    model.eval()
    info = {"best_epoch": best["epoch"], "best_val_dice": best["dice"] if len(va) else None, "epochs_run": len(history), "steps": steps,
            "history": history, "seconds": round(time.perf_counter() - t0, 1), "architecture": arch, "size": size, "loss": loss,
            "lr": lr, "batch_size": batch_size, "seed": seed}
    return model, info


def _predict_tensor(model, x, device: str, batch_size: int = 16) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append((torch.sigmoid(model(x[i : i + batch_size].to(device))) > 0.5).cpu().numpy()[:, 0])
    return np.concatenate(out) if out else np.zeros((0,) + tuple(x.shape[-2:]), bool)


def predict_masks_at(model, images: Sequence[np.ndarray], size: int, in_channels: int = 1, device: str = "cpu") -> np.ndarray:
    """Boolean masks (``size x size``) of a U-Net for uint8 images."""
    with _cpu_threads(device):
        return _predict_tensor(model, to_unet_input(images, size, in_channels), device)


# --------------------------------------------------------------------------------------------------
# segment train: pseudo-masks (or given masks) -> grouped split -> U-Net -> scores -> run directory
# --------------------------------------------------------------------------------------------------


def _load_masks_for(items: Sequence[LoadedImage], mask_dir: Path, size: int) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
    """Model-grid masks of ``items`` from ``mask_dir`` (``None`` where missing / unreadable)."""
    out, problems = [], []
    for it in items:
        p = find_mask(mask_dir, it.rel)
        if p is None:
            out.append(None)
            problems.append((str(it.path), f"no mask in {mask_dir}"))
            continue
        try:
            m = read_mask(p, it.shape)
        except ImageReadError as exc:
            out.append(None)
            problems.append((str(p), exc.reason))
            continue
        out.append(mask_to_model(m, it.box, size))
    return out, problems


def segmentation_split(items: Sequence[LoadedImage], *, test_frac: float = 0.2, val_frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """Grouped, stratified train / val / test split: exact and near-duplicate images (audit) stay together."""
    from liverscope.data.audit import duplicate_group_ids
    from liverscope.data.datasets import Sample
    from liverscope.data.splits import check_leakage, holdout_split

    samples = [Sample(it.path, it.label or "all") for it in items]
    groups = duplicate_group_ids(samples, annotate=False)
    labels = [s.label for s in samples]
    split = holdout_split(labels, groups, test_frac=test_frac, val_frac=val_frac, seed=seed)
    check_leakage(split, groups, paths=[s.path for s in samples])
    return split


def merge_segmentation_metrics(run_dir: str | Path, scores: dict) -> Path:
    """Put ``scores`` under ``"segmentation"`` of the run's ``metrics.json`` (read, update, atomic write)."""
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path) if path.exists() else {}
    metrics["segmentation"] = scores
    atomic_write_json(path, metrics)
    return path


def train_segmenter(run_dir: str | Path, data: str | Path, *, masks: str | Path | None = None, real_masks: str | Path | None = None,
                    loss: str = "bce", epochs: int = 30, size: int | None = None, channels: Sequence[int] = DEFAULT_CHANNELS,
                    in_channels: int = 1, batch_size: int = 8, lr: float = 1e-3, rule: str = "threshold", threshold: float = 0.5,
                    q: float = 20.0, flip_average: bool = False, method: str = "gradcam", ensemble: Sequence[str | Path] | None = None,
                    seed: int = 0, device: str = "auto", test_frac: float = 0.2, val_frac: float = 0.2, patience: int | None = None,
                    max_steps: int | None = None, write_pseudo: bool = True, report: bool = True) -> dict:
    """``liverscope segment train``: pseudo-masks → grouped split → Attention U-Net → scores → run directory.

    Steps: decode and preprocess the images of ``data`` with the classifier's preprocessing; targets are
    the masks in ``masks`` (same relative path or file name) or CAM pseudo-masks by ``rule`` (also
    written to ``RUN_DIR/pseudo_masks/``); a grouped stratified split (``seg_split.csv``); training with
    the best validation Dice kept; IoU/Dice of the held-out test images against their targets (the
    study's figure) and, with ``real_masks``, against the expert masks — whole image and inside the scan
    sector — plus the pseudo-masks' own scores against the expert masks. Saves ``segmenter.safetensors``
    and ``segmenter.json``, merges the scores into ``metrics.json["segmentation"]`` and rewrites the report.

    Returns:
        ``{"scores": ..., "meta": ..., "summary_lines": [...]}``.
    """
    from liverscope.data.datasets import check_readable, load_samples
    from liverscope.utils import resolve_device

    run_dir, data = Path(run_dir), Path(data)
    if loss not in LOSSES:
        raise LiverscopeError(f"--loss {loss}: expected one of {', '.join(LOSSES)}")
    if rule not in RULES:
        raise LiverscopeError(f"pseudo-mask rule '{rule}': expected one of {', '.join(RULES)}")
    pp = run_preprocessing(run_dir)
    size = int(size or pp.size)
    arch = unet_arch(in_channels, channels)
    _check_size(size, arch["strides"])
    device = resolve_device(device)
    t0 = time.perf_counter()
    samples, _ = load_samples(data)
    samples, skipped = check_readable(samples)
    items, bad = load_images([s.path for s in samples], pp, roots=[data] if data.is_dir() else [data.parent], labels=[s.label for s in samples])
    skipped += bad
    if masks is not None:
        targets, problems = _load_masks_for(items, Path(masks), pp.size)
        skipped += problems
        keep = [i for i, t in enumerate(targets) if t is not None]
        items, targets = [items[i] for i in keep], [targets[i] for i in keep]
        target_desc = f"masks from {masks}"
        target_arr = np.stack(targets) if targets else np.zeros((0, pp.size, pp.size), bool)
        sectors = np.stack([sector_mask(it.input) for it in items]) if items else target_arr
    else:
        if write_pseudo:
            _check_out_dir(run_dir / "pseudo_masks", [data])
        pm = pseudo_masks(run_dir, [it.input for it in items], rule, threshold=threshold, q=q, flip_average=flip_average, ensemble=ensemble, method=method)
        target_arr, sectors, target_desc = pm.masks, pm.sectors, f"CAM pseudo-masks ({pm.rule}, {method})"
        if write_pseudo:
            for it, m in zip(items, pm.masks):
                write_mask_png(run_dir / "pseudo_masks" / it.rel.with_suffix(".png"), mask_to_original(m, it.shape, it.box))
    if len(items) < 3:
        raise LiverscopeError(f"{data}: {len(items)} usable image(s) with masks; the U-Net needs at least 3 (train, val, test)")
    _log(f"segmentation targets: {target_desc}; {len(items)} images")
    split = segmentation_split(items, test_frac=test_frac, val_frac=val_frac, seed=seed)
    inputs = [it.input for it in items]
    model, info = fit_unet(inputs, target_arr, split, size=size, in_channels=in_channels, channels=channels, loss=loss, epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed, device=device, patience=patience, max_steps=max_steps)
    # scores on held-out test images, on the model grid of the classifier (pp.size)
    te = np.flatnonzero(split == "test")
    pred_small = predict_masks_at(model, [inputs[i] for i in te], size, in_channels, device)
    pred = _resize_masks(pred_small, pp.size) if len(te) else np.zeros((0, pp.size, pp.size), bool)
    sec_te = [sectors[i] for i in te]
    scores: dict = {
        "masks": target_desc, "loss": loss, "size": size, "n_train": int((split == "train").sum()), "n_val": int((split == "val").sum()),
        "n_test": int(len(te)), "best_epoch": info["best_epoch"], "best_val_dice": info["best_val_dice"],
    }
    vs_target = mask_scores(list(pred), [target_arr[i] for i in te])
    vs_target_sec = mask_scores(list(pred), [target_arr[i] for i in te], sec_te)
    scores["iou_vs_targets"] = vs_target["iou"]
    scores["dice_vs_targets"] = vs_target["dice"]
    scores["iou_vs_targets_sector"] = vs_target_sec["iou"]
    scores["dice_vs_targets_sector"] = vs_target_sec["dice"]
    per_image = [{"path": str(items[i].path), "iou_vs_targets": a, "dice_vs_targets": b} for i, a, b in zip(te, vs_target["iou_per_image"], vs_target["dice_per_image"])]
    if real_masks is not None:
        reals, problems = _load_masks_for([items[i] for i in te], Path(real_masks), pp.size)
        have = [k for k, r in enumerate(reals) if r is not None]
        if problems:
            _log(f"{len(problems)} test image(s) have no expert mask in {real_masks}; scored on the {len(have)} that do")
        rp = [pred[k] for k in have]
        rt = [reals[k] for k in have]
        rs = [sec_te[k] for k in have]
        real = mask_scores(rp, rt)
        real_sec = mask_scores(rp, rt, rs)
        scores["unet_vs_real"] = {"n": real["n"], "iou": real["iou"], "dice": real["dice"], "iou_sector": real_sec["iou"], "dice_sector": real_sec["dice"]}
        for k, a, b in zip(have, real["iou_per_image"], real["dice_per_image"]):
            per_image[k].update(iou_vs_real=a, dice_vs_real=b)
        if masks is None:
            tp = [target_arr[te[k]] for k in have]
            ps, ps_sec = mask_scores(tp, rt), mask_scores(tp, rt, rs)
            scores["pseudo_vs_real"] = {"n": ps["n"], "iou": ps["iou"], "dice": ps["dice"], "iou_sector": ps_sec["iou"], "dice_sector": ps_sec["dice"]}
        scores["real_masks"] = str(real_masks)
    meta = {
        "architecture": arch, "size": size, "input": "grey" if in_channels == 1 else "rgb", "normalisation": "(x/255 - 0.5) / 0.25",
        "preprocessing": pp.to_dict(), "classifier_run": str(run_dir), "data": str(data), "targets": target_desc,
        "pseudo_masks": None if masks is not None else {"rule": rule, "threshold": threshold, "q": q, "flip_average": flip_average, "method": method},
        "loss": loss, "epochs": epochs, "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"], "lr": lr, "batch_size": batch_size,
        "seed": seed, "split": {"method": "grouped stratified hold-out", "test_frac": test_frac, "val_frac": val_frac,
                                "counts": {k: int((split == k).sum()) for k in ("train", "val", "test")}, "file": "seg_split.csv"},
        "scores": scores, "train_seconds": info["seconds"], "history": info["history"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        from liverscope import __version__

        meta["liverscope_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "split"])
    w.writerows([(str(it.path), s) for it, s in zip(items, split)])
    atomic_write_text(run_dir / "seg_split.csv", buf.getvalue())
    save_segmenter(run_dir, model, meta)
    report_scores = dict(scores)
    report_scores["test_images"] = per_image
    merge_segmentation_metrics(run_dir, report_scores)
    if report:
        try:
            from liverscope.evaluate.report import write_report

            write_report(run_dir)
        except Exception as exc:  # the report is a convenience: never lose a trained segmenter over it
            _log(f"report not written: {type(exc).__name__}: {exc}")
    lines = [
        f"U-Net trained on {target_desc}: {scores['n_train']} train / {scores['n_val']} val / {scores['n_test']} test images, "
        f"best epoch {info['best_epoch']} of {info['epochs_run']} ({info['seconds']:.0f}s)",
        f"test vs targets: IoU {scores['iou_vs_targets']:.3f}, Dice {scores['dice_vs_targets']:.3f} (n={scores['n_test']})",
    ]
    if "unet_vs_real" in scores:
        r = scores["unet_vs_real"]
        lines.append(f"test vs expert masks: IoU {r['iou']:.3f}, Dice {r['dice']:.3f} (sector: IoU {r['iou_sector']:.3f}, Dice {r['dice_sector']:.3f}; n={r['n']})")
    if "pseudo_vs_real" in scores:
        r = scores["pseudo_vs_real"]
        lines.append(f"pseudo-masks vs expert masks (same test images): IoU {r['iou']:.3f}, Dice {r['dice']:.3f}")
    lines.append(f"saved {run_dir / SEGMENTER_WEIGHTS} and {run_dir / SEGMENTER_META}")
    if skipped:
        lines.append(f"skipped {len(skipped)} file(s): " + "; ".join(f"{p} ({r})" for p, r in skipped[:10]))
    _log(f"segmentation done in {time.perf_counter() - t0:.0f}s")
    return {"scores": scores, "meta": meta, "summary_lines": lines, "split": split, "skipped": skipped}


# --------------------------------------------------------------------------------------------------
# segment predict / segment score
# --------------------------------------------------------------------------------------------------


def write_predictions(run_dir: str | Path, paths: Sequence[str | Path], out: str | Path, chunk: int = 32) -> dict:
    """Masks (``NAME_mask.png``, 0/255) and outline overlays (``NAME_outline.png``) at each image's
    original size, mirroring folder-relative paths under ``out``. Bad files are skipped and listed.

    Returns:
        ``{"written", "out", "skipped": [(path, reason), ...]}``.
    """
    from liverscope.app import draw_outline
    from liverscope.data.io import to_rgb

    run_dir, out = Path(run_dir), Path(out)
    seg = load_segmenter(run_dir)
    if seg is None:
        raise LiverscopeError(f"{run_dir}: no segmenter — train one first (liverscope segment train {run_dir} DATA)")
    pp = Preprocessing.from_dict(seg.meta["preprocessing"])
    roots = [Path(p) for p in paths if Path(p).is_dir()]
    files = list_images(paths)
    written, skipped = 0, []
    for start in range(0, len(files), chunk):
        items, bad = load_images(files[start : start + chunk], pp, roots=roots, keep_original=True)
        skipped += bad
        if not items:
            continue
        probs = predict_proba(seg, [it.input for it in items])
        for it, p in zip(items, probs):
            mask = mask_to_original(p > 0.5, it.shape, it.box)
            stem = it.rel.with_suffix("")
            write_mask_png(out / f"{stem}_mask.png", mask)
            overlay = draw_outline(to_rgb(it.extra.pop("original")), mask)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            with atomic_path(out / f"{stem}_outline.png") as tmp:
                tmp.write_bytes(buf.tobytes())
            written += 1
    if skipped:
        buf = io.StringIO()
        csv.writer(buf).writerows([("path", "reason"), *skipped])
        atomic_write_text(out / "skipped.csv", buf.getvalue())
    return {"written": written, "out": out, "skipped": skipped}


def score_mask_dirs(pred_dir: str | Path, true_dir: str | Path, out: str | Path | None = None) -> dict:
    """IoU and Dice of every mask in ``pred_dir`` against its counterpart in ``true_dir`` (:func:`find_mask`).

    A predicted mask of another size is resized (nearest neighbour) to the true mask's size. Predicted
    masks without a counterpart, and unreadable files, are listed in ``skipped``.

    Returns:
        ``{"n", "mean_iou", "mean_dice", "images": [{"name", "iou", "dice"}, ...], "skipped": [...]}``.
    """
    pred_dir, true_dir = Path(pred_dir), Path(true_dir)
    for d in (pred_dir, true_dir):
        if not d.is_dir():
            raise LiverscopeError(f"{d}: not a folder of masks")
    from liverscope.data.io import IMAGE_SUFFIXES

    files = sorted(p for p in pred_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                   and not p.stem.endswith("_outline"))
    rows, skipped = [], []
    for p in files:
        rel = p.relative_to(pred_dir)
        t = find_mask(true_dir, rel)
        if t is None:
            skipped.append((str(p), f"no true mask in {true_dir}"))
            continue
        try:
            tm = read_mask(t)
            pm = read_mask(p, tm.shape)
        except ImageReadError as exc:
            skipped.append((exc.path, exc.reason))
            continue
        rows.append({"name": str(rel), "true": str(t), "iou": iou(pm, tm), "dice": dice(pm, tm)})
    if not rows:
        raise LiverscopeError(f"no predicted mask in {pred_dir} has a counterpart in {true_dir} (same relative path or file name)")
    result = {"n": len(rows), "mean_iou": float(np.mean([r["iou"] for r in rows])), "mean_dice": float(np.mean([r["dice"] for r in rows])),
              "images": rows, "skipped": skipped}
    if out is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["name", "true", "iou", "dice"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out, buf.getvalue())
    return result


__all__ = [
    "RULES", "LOSSES", "normalise_map", "threshold_mask", "otsu_mask", "top_fraction_mask", "pseudo_mask", "iou", "dice",
    "pointing_game", "mask_scores", "run_cams", "pseudo_masks", "score_pseudo_masks", "write_pseudo_masks", "build_unet", "fit_unet", "Segmenter",
    "load_segmenter", "save_segmenter", "predict_mask", "predict_proba", "train_segmenter", "write_predictions", "score_mask_dirs",
    "find_mask", "read_mask", "mask_to_model", "mask_to_original", "crop_box", "load_images",
]
