"""Blanking a part of an ultrasound frame before a model sees it: the shortcut check (issue 23).

``tissue``: the scan sector (:func:`liverscope.data.sector.sector_mask`, by the run's own
``Preprocessing.sector`` method) is set to the frame's background level, so what is left is the
scanner's text, marks, colour bars and the geometry of the frame. ``periphery``: everything outside the
sector is set to that level, so what is left is the tissue. A model that still scores without the tissue
reads the scanner, not the liver.

The blanking is done on the decoded image, before the run's preprocessing, so the model sees exactly what
it would see of such a frame, with one difference kept on purpose: a run that crops to the scan sector
crops the blanked frame to the *original* frame's sector box (a tissue-blanked frame has no sector left to
find, and a different crop would change the geometry the check is about). A run that denoises the sector's
box only (``denoise_region="sector"``) finds that box on the blanked frame: with the tissue blanked there
is none, and the whole frame is denoised (the periphery's text a little smoother than the model saw it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from liverscope.config import CHOICES
from liverscope.data.geometry import bounding_box
from liverscope.data.preprocess import Preprocessing, preprocess_array
from liverscope.data.sector import background_level, sector_mask
from liverscope.errors import UsageError

#: The parts of a frame that can be blanked: the scan sector's inside, or everything outside it.
REGIONS: tuple[str, ...] = CHOICES["evaluate.ablation"]


def parse_ablations(values: Iterable[str] | str | None) -> list[str]:
    """``--ablation`` values (repeatable, or comma lists: ``tissue,periphery``) → the regions, in
    :data:`REGIONS` order, each once.

    Raises:
        UsageError: a value that is not a region (named, with the valid ones).
    """
    items = [values] if isinstance(values, str) else list(values or [])
    asked = [p.strip().lower() for v in items for p in str(v).split(",") if p.strip()]
    bad = [a for a in asked if a not in REGIONS]
    if bad:
        raise UsageError(
            f"--ablation {', '.join(bad)}: choose {' or '.join(REGIONS)} (repeat the option, or a comma list: "
            f"--ablation {','.join(REGIONS)})"
        )
    return [r for r in REGIONS if r in asked]


def blank(img: np.ndarray, mask: np.ndarray, region: str, level: float) -> np.ndarray:
    """A copy of ``img`` with ``region`` set to grey ``level`` (every channel): ``tissue`` is the
    ``True`` part of the sector ``mask``, ``periphery`` the rest."""
    if region not in REGIONS:
        raise ValueError(f"region must be one of {', '.join(REGIONS)}, got '{region}'")
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {img.shape[:2]}")
    out = img.copy()
    value = (
        np.clip(round(level), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max)
        if img.dtype.kind in "ui"
        else level
    )
    out[mask if region == "tissue" else ~mask] = value
    return out


@dataclass
class Ablated:
    """The model inputs of one frame with each region blanked (uint8 ``size x size x 3``, as
    :func:`~liverscope.data.preprocess.preprocess_array` gives), and whether a sector was found (when
    none is, the sector is the whole frame: tissue blanking blanks everything, periphery blanking nothing)."""

    inputs: dict[str, np.ndarray]
    sector_found: bool


def ablated_inputs(img: np.ndarray, pp: Preprocessing, regions: Sequence[str]) -> Ablated:
    """A decoded frame → its model inputs under each of ``regions`` blanked, through the run's
    preprocessing ``pp``; the sector crop (``pp.crop_sector``) is the original frame's (module docstring)."""
    mask = sector_mask(img, pp.sector)
    level = background_level(img)
    box = bounding_box(mask) if pp.crop_sector else None
    rest = dataclasses.replace(pp, crop_sector=False) if pp.crop_sector else pp
    inputs = {}
    for region in regions:
        out = blank(img, mask, region, level)
        if box is not None:
            y0, y1, x0, x1 = box
            out = out[y0:y1, x0:x1]
        inputs[region] = preprocess_array(out, rest)
    return Ablated(inputs, not bool(mask.all()))


__all__ = ["REGIONS", "parse_ablations", "blank", "Ablated", "ablated_inputs"]
