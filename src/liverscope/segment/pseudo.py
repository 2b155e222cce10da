"""Pseudo-masks of a classifier run: its CAMs (single model or fold ensemble, optional flip averaging,
from the last feature map or other backbone stages) cut by a rule of :mod:`liverscope.segment.rules`
(inside the scan sector, or inside a given region such as the liver), scored against true masks, or
written as PNGs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from liverscope.data.geometry import to_original
from liverscope.data.preprocess import normalise_batch
from liverscope.data.sector import sector_mask
from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import mask_scores, pointing_game
from liverscope.explain.cams import compute_cams, resolve_layers
from liverscope.rundir import PSEUDO_MASKS, PSEUDO_MASKS_SUMMARY, load_model, members, read_preprocessing
from liverscope.segment.images import list_images, load_images
from liverscope.segment.rules import check_rule, describe_rule, normalise_map, pseudo_mask
from liverscope.segment.unet import cpu_threads
from liverscope.utils import atomic_write_json, atomic_write_png, progress


@dataclass
class PseudoMasks:
    """CAMs, sectors and pseudo-masks of a batch of model inputs."""

    masks: np.ndarray  # bool N,H,W
    cams: np.ndarray  # float32 N,H,W, normalised over the search region (zero outside it)
    sectors: np.ndarray  # bool N,H,W: the scan sectors
    classes: np.ndarray  # int N: the class the CAMs explain
    rule: str
    regions: np.ndarray | None = (
        None  # bool N,H,W: where masks and maxima were looked for (sector ∩ region; None: the sectors)
    )

    @property
    def search_regions(self) -> np.ndarray:
        """Where masks and CAM maxima were looked for: :attr:`regions`, else the sectors."""
        return self.sectors if self.regions is None else self.regions


@dataclass
class PseudoOptions:
    """How CAMs become pseudo-masks (:func:`pseudo_masks`, ``segment pseudo``; the ``pseudo`` settings of
    ``segment train``)."""

    rule: str = "threshold"  # threshold | otsu | top | grabcut (:data:`~liverscope.segment.rules.RULES`)
    threshold: float = 0.5  # rule threshold (and grabcut's start): CAM >= this, as in the study
    q: float = 20.0  # rule top: the percentage of sector pixels kept
    flip_average: bool = False  # average each CAM with the mirrored image's
    method: str = "gradcam"  # CAM method (:func:`liverscope.explain.cams.method_key`)
    layers: str | int | list | None = (
        None  # where the maps are taken (None: the last feature map; see :func:`run_cams`)
    )
    ensemble: list[str] | None = None  # fold model directories (default: :func:`liverscope.rundir.members`)

    @classmethod
    def of(cls, options: "PseudoOptions | str", **changes) -> "PseudoOptions":
        """``options`` (or a rule name) with ``changes`` (keyword names of the fields) applied."""
        base = cls(rule=options) if isinstance(options, str) else options
        return dataclasses.replace(base, **changes) if changes else base


def run_cams(
    run_dir: str | Path,
    images: Sequence[np.ndarray],
    *,
    ensemble: Sequence[str | Path] | None = None,
    flip_average: bool = False,
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    batch_size: int = 16,
    models: Sequence | None = None,
    layers: str | int | Sequence[str | int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of preprocessed model inputs, averaged over the fold models and/or the mirrored image.

    The class explained is ``targets`` when given, else the predicted class (of the ensemble: mean of
    the fold logits, as the ensemble predicts). With ``flip_average`` the raw map of the mirrored image
    (explained for the same class) is mirrored back and averaged with the raw map before normalising
    (:func:`liverscope.explain.cams.compute_cams` ``aug_smooth_flip``); fold models' normalised maps are averaged.

    Args:
        run_dir: a run directory.
        images: uint8 ``size x size x 3`` model inputs (:func:`~liverscope.data.preprocess.preprocess_array`).
        ensemble: fold model directories (default: see :func:`liverscope.rundir.members`).
        flip_average: also average over the horizontally mirrored image.
        method: CAM method of :func:`liverscope.explain.cams.compute_cams`.
        targets: class index per image.
        batch_size: images per CAM pass.
        models: already loaded models (skips loading from ``run_dir``).
        layers: where the maps are taken (:func:`liverscope.explain.cams.compute_cams`: ``None`` the last
            feature map; a stage such as ``"layer3"`` / ``-2`` or several, a multi-scale CAM).

    Returns:
        ``(cams float32 N,H,W, class indices int N)``; the averaged map is *not* renormalised here.
    """
    import torch

    pp = read_preprocessing(run_dir)
    if models is None:
        models = [load_model(d)[0] for d in members(run_dir, ensemble)]
    images = [np.ascontiguousarray(im) for im in images]
    if not images:
        return np.zeros((0, pp.size, pp.size), np.float32), np.zeros(0, int)
    if targets is None and len(models) > 1:
        with torch.inference_mode(), cpu_threads(str(next(models[0].parameters()).device)):
            logits = []
            for m in models:
                out = [
                    m.eval()(
                        torch.from_numpy(normalise_batch(images[i : i + batch_size], pp)).permute(0, 3, 1, 2)
                    ).float()
                    for i in range(0, len(images), batch_size)
                ]
                logits.append(torch.cat(out).numpy())
        targets = np.mean(logits, axis=0).argmax(axis=1)
    total, count = None, 0
    for m in models:
        # flips: explain averages the raw maps of the scan and its mirror image (same class), then
        # normalises; fold models: their normalised maps are averaged (raw scales differ between models)
        with cpu_threads(str(next(m.parameters()).device)):
            cams, classes = compute_cams(
                m,
                images,
                pp,
                targets=None if targets is None else list(targets),
                method=method,
                restrict_to_sector=True,
                batch_size=batch_size,
                aug_smooth_flip=flip_average,
                layers=layers,
            )
        if targets is None:
            targets = np.asarray(classes)
        cams = np.asarray(cams, np.float32)
        total = cams if total is None else total + cams
        count += 1
    return (total / count).astype(np.float32), np.asarray(targets, int)


def pseudo_masks(
    run_dir: str | Path,
    images: Sequence[np.ndarray],
    options: PseudoOptions | str = "threshold",
    *,
    cams: tuple[np.ndarray, np.ndarray] | None = None,
    regions: Sequence[np.ndarray] | None = None,
    batch_size: int = 16,
    **changes,
) -> PseudoMasks:
    """CAM pseudo-masks of preprocessed model inputs.

    Each map (averaged over the ensemble / flips, see :func:`run_cams`) is normalised over its scan
    sector (:func:`~liverscope.segment.rules.normalise_map`) and cut by ``rule``
    (:func:`~liverscope.segment.rules.pseudo_mask`); masks never leave the sector. With ``regions``
    the sector is first intersected with each image's region (e.g. the liver, expert or predicted):
    maps are normalised, cut, and their maxima looked for (pointing game) inside the liver only.

    Args:
        run_dir: a run directory (a ``cv`` run: its fold models are averaged).
        images: uint8 ``size x size x 3`` model inputs.
        options: :class:`PseudoOptions`, or a rule name: ``threshold`` (default; ``threshold`` 0.5 as in
            the study), ``otsu``, ``top`` (``q`` %) or ``grabcut`` (the threshold mask refined by the
            image's edges). ``layers`` is ignored with ``cams``.
        cams: precomputed ``(cams, classes)`` of :func:`run_cams` (to try several rules on one pass).
        regions: bool ``size x size`` mask per image, intersected with its scan sector.
        batch_size: images per CAM pass.
        changes: fields of :class:`PseudoOptions` by name (``q=30``, ``layers="layer3"``) that
            replace ``options``'.

    Returns:
        :class:`PseudoMasks` (``regions``: the sectors intersected with the given regions).

    Raises:
        LiverscopeError: ``regions`` that do not match the images in number or size.
    """
    o = PseudoOptions.of(options, **changes)
    rule, threshold, q = o.rule, o.threshold, o.q
    check_rule(rule)
    if regions is not None and len(regions) != len(images):
        raise LiverscopeError(f"{len(regions)} region masks for {len(images)} images: give one per image")
    if cams is None:
        cams = run_cams(
            run_dir,
            images,
            ensemble=o.ensemble,
            flip_average=o.flip_average,
            method=o.method,
            batch_size=batch_size,
            layers=o.layers,
        )
    raw, classes = cams
    n = len(images)
    sectors = np.stack([sector_mask(im) for im in images]) if n else np.zeros((0,) + raw.shape[1:], bool)
    search = sectors
    if regions is not None and n:
        reg = (
            np.stack([np.asarray(r, bool) for r in regions])
            if all(np.shape(r) == sectors.shape[1:] for r in regions)
            else None
        )
        if reg is None:
            raise LiverscopeError(
                f"region masks must be the model input's size {sectors.shape[1:]}, got {sorted({np.shape(r) for r in regions})}"
            )
        search = sectors & reg
    norm = np.stack([normalise_map(c, s) for c, s in zip(raw, search)]) if n else raw
    masks = (
        np.stack(
            [
                pseudo_mask(c, s, rule, threshold=threshold, q=q, image=im)
                for c, s, im in zip(norm, search, images)
            ]
        )
        if n
        else np.zeros(raw.shape, bool)
    )
    n_models = len(members(run_dir, o.ensemble)) if run_dir is not None else 1
    described = describe_rule(rule, threshold, q, o.flip_average, n_models, o.layers)
    searched = None if regions is None else search
    return PseudoMasks(masks, norm, sectors, np.asarray(classes), described, searched)


def score_pseudo_masks(pm: PseudoMasks, true_masks: Sequence[np.ndarray]) -> dict:
    """Pseudo-masks (and their CAMs) against true masks on the model grid.

    Returns:
        ``{"n", "iou", "dice", "iou_sector", "dice_sector", "pointing_game", "pointing_n", "iou_per_image",
        "dice_per_image", "hits"}`` — the ``_sector`` scores only count pixels inside the scan sector;
        ``pointing_game`` is the hit rate over the ``pointing_n`` images whose true mask is not empty
        (the maximum is looked for in :attr:`PseudoMasks.search_regions`).
    """
    trues = [np.asarray(t, bool) for t in true_masks]
    if len(trues) != len(pm.masks):
        raise LiverscopeError(f"{len(pm.masks)} pseudo-masks for {len(trues)} true masks")
    full = mask_scores(list(pm.masks), trues)
    sec = mask_scores(list(pm.masks), trues, list(pm.sectors))
    hits = [pointing_game(c, t, s) for c, t, s in zip(pm.cams, trues, pm.search_regions)]
    valid = [h for h in hits if h is not None]
    return {
        "n": full["n"],
        "iou": full["iou"],
        "dice": full["dice"],
        "iou_sector": sec["iou"],
        "dice_sector": sec["dice"],
        "pointing_game": float(np.mean(valid)) if valid else float("nan"),
        "pointing_n": len(valid),
        "iou_per_image": full["iou_per_image"],
        "dice_per_image": full["dice_per_image"],
        "hits": hits,
    }


def check_out_dir(out: Path, data_roots: Sequence[Path]) -> None:
    """Refuse an output folder inside a data folder: masks are never written into the data."""
    o = out.resolve()
    for d in data_roots:
        d = d.resolve()
        root = d if d.is_dir() else d.parent
        if o == root or root in o.parents:
            raise LiverscopeError(
                f"--out {out} lies inside the data folder {root}: masks are never written into the data; choose another folder"
            )


def write_pseudo_masks(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    options: PseudoOptions | str = "threshold",
    *,
    chunk: int = 64,
    **changes,
) -> dict:
    """Pseudo-masks of every image of ``data`` as PNGs (0/255, original size) under ``out``, mirroring
    ``data``'s relative paths (``.png`` suffix). ``out`` defaults to ``RUN_DIR/pseudo_masks`` and may not
    lie inside ``data``. ``options`` and ``changes`` as :func:`pseudo_masks`'.

    Returns:
        ``{"written", "out", "rule", "skipped": [(path, reason), ...]}``.
    """
    run_dir, data = Path(run_dir), Path(data)
    o = PseudoOptions.of(options, **changes)
    rule, threshold, q, flip_average = o.rule, o.threshold, o.q, o.flip_average
    method, ensemble, layers = o.method, o.ensemble, o.layers
    if not data.exists():
        raise LiverscopeError(f"{data}: does not exist (give an image folder or file)")
    check_rule(rule)
    out = Path(out) if out is not None else run_dir / PSEUDO_MASKS
    check_out_dir(out, [data])
    pp = read_preprocessing(run_dir)
    member_dirs = members(run_dir, ensemble)
    models = [load_model(d)[0] for d in member_dirs]
    for m in models:  # a bad layer name fails before any image is read
        resolve_layers(m, layers)
    files = list_images([data])
    written, skipped, desc = 0, [], describe_rule(rule, threshold, q, flip_average, len(models), layers)
    for start in progress(range(0, len(files), chunk), f"pseudo-masks ({len(files)} images, {chunk} a step)"):
        items, bad = load_images(files[start : start + chunk], pp, roots=[data])
        skipped += bad
        if not items:
            continue
        inputs = [it.input for it in items]
        cams = run_cams(
            run_dir, inputs, flip_average=flip_average, method=method, models=models, layers=layers
        )
        pm = pseudo_masks(run_dir, inputs, o, cams=cams)
        for it, m in zip(items, pm.masks):
            atomic_write_png(out / it.rel.with_suffix(".png"), to_original(m, it.shape, it.box))
            written += 1
    atomic_write_json(
        out / PSEUDO_MASKS_SUMMARY,
        {
            "run": str(run_dir),
            "data": str(data),
            "rule": rule,
            "threshold": threshold,
            "q": q,
            "flip_average": flip_average,
            "method": method,
            "layers": layers if layers is None or isinstance(layers, (str, int)) else list(layers),
            "models": [str(d) for d in member_dirs],
            "description": desc,
            "written": written,
            "skipped": [list(s) for s in skipped],
        },
    )
    return {"written": written, "out": out, "rule": desc, "skipped": skipped}


__all__ = [
    "PseudoMasks",
    "PseudoOptions",
    "run_cams",
    "pseudo_masks",
    "score_pseudo_masks",
    "check_out_dir",
    "write_pseudo_masks",
]
