"""Faithfulness scores of class activation maps: numbers that compare CAM methods, not pictures.

Kept apart from the methods (:mod:`liverscope.explain.cams`), as pytorch-grad-cam keeps its ``metrics/``
apart from its CAM classes: these functions take any maps (a method's, a random baseline's) and the
model they claim to explain.

* :func:`energy_outside_sector`: the share of a map's energy that falls outside the scan sector — a
  model that looks at text or borders is reading the scanner, not the liver;
* :func:`deletion_curve`: delete the most relevant sector pixels first and watch the class probability
  fall (the area under it: lower is more faithful);
* :func:`road_score`: ROAD (remove and debias, Rong et al. 2022, https://arxiv.org/abs/2202.00449, with
  pytorch-grad-cam's noisy linear imputer; higher is more faithful);
* :func:`faithfulness`: all of them for a batch of images, with their means.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from liverscope.data.preprocess import normalise_batch
from liverscope.data.sector import sector_mask

#: Share of the sector removed at each step of the deletion curve (0 → 1 in ``DELETION_STEPS`` steps).
DELETION_STEPS = 10
#: Shares of the sector's pixels that ROAD removes (most relevant first and least relevant first).
ROAD_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def input_tensor(images: Sequence[np.ndarray], pp, device) -> torch.Tensor:
    """Preprocessed uint8 ``H x W x 3`` images → the normalised ``N x 3 x H x W`` model input on ``device``."""
    return torch.from_numpy(normalise_batch(images, pp)).permute(0, 3, 1, 2).contiguous().to(device)


def energy_outside_sector(cam_raw: np.ndarray, sector: np.ndarray) -> float:
    """Share of a map's energy (sum of its non-negative values) that falls outside the scan sector.

    Args:
        cam_raw: a map at the sector's resolution, not restricted to the sector (negative values count as 0).
        sector: bool mask of the scan sector.

    Returns:
        A number in [0, 1]; 0 for an all-zero map.
    """
    cam = np.maximum(np.asarray(cam_raw, dtype=np.float64), 0)
    sector = np.asarray(sector, bool)
    if cam.shape != sector.shape:
        raise ValueError(f"map {cam.shape} and sector {sector.shape} differ in shape")
    total = cam.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0
    return float(cam[~sector].sum() / total)


def _relevance_order(cam: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of the region's pixels, most relevant first; ties broken at random (not by position)."""
    idx = np.flatnonzero(region)
    vals = cam.ravel()[idx]
    return idx[np.lexsort((rng.random(len(idx)), -vals))]


def _probs(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(torch.softmax(model(x[i : i + batch_size]).float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def deletion_curve(
    model: nn.Module,
    x: torch.Tensor,
    cam: np.ndarray,
    target: int,
    region: np.ndarray,
    steps: int = DELETION_STEPS,
    batch_size: int = 16,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of ``target`` as the most relevant region pixels are deleted (replaced by a heavily
    blurred copy of the image: removes the local structure, keeps the brightness and the fan's shape).

    Args:
        x: one normalised input ``3 x H x W``.
        cam: its map ``H x W``.
        region: the pixels that may be deleted (the sector).

    Returns:
        ``(fractions, probabilities)``, ``steps + 1`` points from nothing to the whole region deleted.
    """
    rng = rng or np.random.default_rng(0)
    c, h, w = x.shape
    order = _relevance_order(cam, region, rng)
    xs = x.detach().cpu().numpy()
    sigma = max(2.0, min(h, w) / 10)
    blurred = np.stack([cv2.GaussianBlur(ch, (0, 0), sigma) for ch in xs])
    fractions = np.linspace(0, 1, steps + 1)
    batch = np.repeat(xs[None], steps + 1, axis=0).reshape(steps + 1, c, h * w)
    flat_blur = blurred.reshape(c, h * w)
    for k, f in enumerate(fractions):
        gone = order[: int(round(f * len(order)))]
        batch[k][:, gone] = flat_blur[:, gone]
    t = torch.from_numpy(batch.reshape(steps + 1, c, h, w)).to(x.device)
    return fractions, _probs(model, t, batch_size)[:, int(target)]


# Hand-written around pytorch-grad-cam's NoisyLinearImputer rather than its ROADMostRelevantFirst /
# ROADLeastRelevantFirst: those rank pixels by percentiles over the whole image, so least-relevant-first
# would spend its shares on the black background outside the scan sector; no library restricts ROAD to a region.
def road_score(
    model: nn.Module,
    x: torch.Tensor,
    cam: np.ndarray,
    target: int,
    region: np.ndarray,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    batch_size: int = 16,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """ROAD (RemOve And Debias, Rong et al. 2022): remove a share of the region's pixels — most relevant
    first (MoRF) and least relevant first (LeRF) — fill them by pytorch-grad-cam's noisy linear
    imputation (so the removal's shape does not leak the map), and measure the change of the target
    probability. ``combined = (LeRF - MoRF) / 2`` averaged over the shares, as pytorch-grad-cam's
    ``ROADCombined``: higher is more faithful. Pixels outside the region are never removed (the library's
    whole-image percentiles would start with the sector's zeros).

    Returns:
        ``{"morf": mean change, "lerf": mean change, "combined": ...}`` (changes of probability; MoRF
        should be negative for a faithful map).
    """
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = rng or np.random.default_rng(0)
    c, h, w = x.shape
    order = _relevance_order(cam, region, rng)
    xc = x.detach().cpu().float()
    imputer = NoisyLinearImputer()
    perturbed = []
    for most_first in (True, False):
        ranked = order if most_first else order[::-1]
        for f in fractions:
            keep = np.ones(h * w, np.float32)
            keep[ranked[: int(round(float(f) * len(ranked)))]] = 0
            if keep.all():
                perturbed.append(xc)
                continue
            with torch.random.fork_rng(
                devices=[]
            ):  # the imputer's noise: reproducible, and the caller's RNG untouched
                torch.manual_seed(int(rng.integers(2**31)))
                perturbed.append(imputer(xc, torch.from_numpy(keep.reshape(h, w))))
    t = torch.stack([xc, *perturbed]).to(x.device)
    p = _probs(model, t, batch_size)[:, int(target)]
    base, rest = p[0], p[1:] - p[0]
    morf, lerf = float(rest[: len(fractions)].mean()), float(rest[len(fractions) :].mean())
    return {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2, "base": float(base)}


def faithfulness(
    model: nn.Module,
    images: Sequence[np.ndarray],
    pp,
    cams: np.ndarray,
    targets: Sequence[int],
    sectors: Sequence[np.ndarray] | None = None,
    raw_cams: np.ndarray | None = None,
    deletion_steps: int = DELETION_STEPS,
    road: bool = True,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """Numbers that say how faithful maps are to the model, so that methods compare by number, not by eye.

    Args:
        model: the model the maps explain.
        images: preprocessed uint8 inputs (as for :func:`liverscope.explain.cams.compute_cams`).
        pp: the run's preprocessing.
        cams: their maps ``N x H x W``.
        targets: the class each map explains.
        sectors: scan-sector masks (default: found on each input); deletion and ROAD remove sector pixels only.
        raw_cams: the unrestricted maps (:attr:`liverscope.explain.cams.CamBatch.raw`) for the energy share; default ``cams``.
        deletion_steps: points of the deletion curve minus one.
        road: also compute ROAD (solves a sparse system per removal: ~0.1 s per image at 64 px, seconds at 224).
        road_fractions: shares of the sector ROAD removes.
        batch_size: forward pass size.
        seed: tie-breaking and imputation noise.

    Returns:
        ``{"deletion_auc": [N], "road": [N], "road_morf": [N], "road_lerf": [N],
        "energy_outside_sector": [N], "mean": {name: mean over images}}`` (lists of floats; ROAD keys
        only when ``road``). Deletion AUC: area under the target probability as the most relevant 0→100 %
        of the sector is deleted, lower = more faithful. ROAD: higher = more faithful.
    """
    n = len(images)
    cams = np.asarray(cams, np.float32)
    if len(cams) != n or len(targets) != n:
        raise ValueError(f"{n} images, {len(cams)} maps, {len(targets)} targets")
    secs = [sector_mask(im) for im in images] if sectors is None else [np.asarray(s, bool) for s in sectors]
    rng = np.random.default_rng(seed)
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: dict = {"deletion_auc": [], "energy_outside_sector": []}
    if road:
        out.update(road=[], road_morf=[], road_lerf=[])
    try:
        for i in range(n):
            x = input_tensor([images[i]], pp, device)[0]
            region = secs[i] if secs[i].any() else np.ones(secs[i].shape, bool)
            fr, pr = deletion_curve(model, x, cams[i], targets[i], region, deletion_steps, batch_size, rng)
            out["deletion_auc"].append(
                float(np.trapezoid(pr, fr) if hasattr(np, "trapezoid") else np.trapz(pr, fr))
            )
            raw = cams[i] if raw_cams is None else raw_cams[i]
            out["energy_outside_sector"].append(energy_outside_sector(raw, secs[i]))
            if road:
                r = road_score(model, x, cams[i], targets[i], region, road_fractions, batch_size, rng)
                out["road"].append(r["combined"])
                out["road_morf"].append(r["morf"])
                out["road_lerf"].append(r["lerf"])
    finally:
        model.train(was_training)
    out["mean"] = {
        k: (float(np.mean(v)) if len(v) else float("nan")) for k, v in out.items() if isinstance(v, list)
    }
    return out


__all__ = [
    "DELETION_STEPS",
    "ROAD_FRACTIONS",
    "energy_outside_sector",
    "deletion_curve",
    "road_score",
    "faithfulness",
    "input_tensor",
    "model_device",
]
