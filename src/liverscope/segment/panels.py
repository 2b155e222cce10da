"""What the app and the filed reports show of one analysed image besides its numbers: the image as
displayed (a DICOM's border blanked), the Grad-CAM overlay of the predicted class and the outline of
every segmenter the run holds (one colour per target: lesion red, liver green), each on the model input.

One place for these pictures, so the app's panels and a report's overlay (:func:`image_panels`, the
``combined`` picture: outlines drawn on the heatmap) are the same pixels. The segmenters are loaded once
per run directory (:data:`_SEGMENTERS`) and used by one caller at a time (Streamlit serves every browser
session from its own thread, all sharing one segmenter per run; heatmaps take their own lock:
:func:`liverscope.explain.cams.cam_overlay`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liverscope.data.geometry import bounding_box, to_model, to_original
from liverscope.data.io import to_rgb
from liverscope.data.preprocess import Preprocessing, crop_box, preprocess_array
from liverscope.data.sector import sector_mask
from liverscope.explain.cams import cam_overlay
from liverscope.segment import unet
from liverscope.segment.outline import draw_outline

_SEGMENTER_LOCK = threading.Lock()
#: The run's segmenters by target, per resolved run directory (loaded once; see :func:`run_segmenters`).
_SEGMENTERS: dict[str, dict] = {}
#: Caption of a target whose outline the lesion gate removed (segment.gate).
GATED = "what the segmenter found was too small or too unsure to be a lesion (lesion gate)"


def blank_outside_sector(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Set everything outside the ultrasound scan sector (``mask``, found when not given) to black:
    removes the burned-in text that ultrasound machines print in the border."""
    mask = sector_mask(img) if mask is None else mask
    out = img.copy()
    out[~mask] = 0
    return out


def mask_to_model_space(mask: np.ndarray, pp) -> np.ndarray:
    """Carry a full-resolution boolean mask through the preprocessing geometry (sector crop when the
    run crops, then the resize), so it lines up with the model input and its heatmaps."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape[:2]
    # preprocess_array crops to the bounding box of this same sector mask
    box = bounding_box(mask) if pp.crop_sector else None
    return to_model(mask, box or (0, h, 0, w), pp.size)


def run_segmenters(run_dir: Path) -> dict:
    """The run's segmenters by target (``liverscope.segment.unet.segmenters``), loaded once per run; call under the lock."""
    key = str(Path(run_dir).resolve())
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = unet.segmenters(run_dir)
    return _SEGMENTERS[key] or {}


def _mask_on_input(
    segmenter, model_input: np.ndarray, pp, image: np.ndarray | None
) -> tuple[np.ndarray, bool]:
    """A segmenter's mask on the classifier's model input grid. A segmenter with its own preprocessing
    (e.g. a larger input size) segments the original ``image`` preprocessed its way, and the mask is moved
    to the model input's grid (through the original image); without ``image`` it segments the model input.
    Also says whether the segmenter's lesion gate emptied the raw mask."""
    own = segmenter.meta.get("preprocessing")
    seg_pp = Preprocessing.from_dict(own) if own else pp
    on_input = image is None or seg_pp == pp
    seg_input = model_input if on_input else preprocess_array(image, seg_pp)
    masks, suppressed = unet.segment_images(segmenter, [seg_input])  # through the lesion gate, if any
    mask = np.asarray(masks[0], bool)
    if on_input:
        return mask, bool(suppressed)
    return to_model(
        to_original(mask, image.shape[:2], crop_box(image, seg_pp)), crop_box(image, pp), model_input.shape[0]
    ), bool(suppressed)


def outline_masks(
    run_dir: Path | None, model_input: np.ndarray, pp, image: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, bool]]:
    """Every segmenter's mask on the model input grid, by target, with whether its lesion gate emptied
    it (``{}`` without a run or a segmenter)."""
    if run_dir is None:
        return {}
    with _SEGMENTER_LOCK:  # one load per run, and the models are used by one caller at a time
        return {t: _mask_on_input(seg, model_input, pp, image) for t, seg in run_segmenters(run_dir).items()}


def draw_outlines(img: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Each target's mask outlined on ``img`` in its colour (``liverscope.segment.unet.target_colours``)."""
    for t, (colour, _) in unet.target_colours(list(masks)).items():
        img = draw_outline(img, masks[t], colour)
    return img


def segmentation_outline(
    run_dir: Path | None,
    model_input: np.ndarray,
    pp,
    display: np.ndarray | None = None,
    image: np.ndarray | None = None,
    suppressed: list | None = None,
) -> np.ndarray | None:
    """Outlines of every segmenter of the run (one per target, each in its colour), drawn on ``display``
    (default: the model input), or ``None`` when the run holds no segmentation model.

    Args:
        run_dir: the run directory (``None``: no outline).
        model_input: the classifier's preprocessed input (``pp``).
        pp: the classifier's preprocessing.
        display: what the outlines are drawn on (the model input's size).
        image: the decoded original; a segmenter trained with its own preprocessing segments it.
        suppressed: when given, the targets whose outline the lesion gate removed are appended to it.
    """
    found = outline_masks(run_dir, model_input, pp, image)
    if not found:
        return None
    if suppressed is not None:
        suppressed += [t for t, (_, off) in found.items() if off]
    return draw_outlines(model_input if display is None else display, {t: m for t, (m, _) in found.items()})


def outline_legend(run_dir: Path | None) -> str:
    """The outline panel's caption: ``segmented regions (outline)`` and each target with its colour."""
    with _SEGMENTER_LOCK:
        targets = list(run_segmenters(run_dir)) if run_dir is not None else []
    names = ", ".join(f"{t} {name}" for t, (_, name) in unet.target_colours(targets).items())
    return "segmented regions (outline)" + (f": {names}" if names else "")


@dataclass
class Panels:
    """The pictures of one analysed image (RGB uint8; ``None`` where there is none).

    Attributes:
        display: the decoded image as shown (a DICOM's border blanked), at its own size.
        cam: the Grad-CAM overlay of the predicted class on the model input.
        outline: every segmenter's outline on the model input.
        combined: the outlines drawn on the Grad-CAM overlay (a report's one picture per image).
        outline_caption: the outline panel's caption (targets, colours, what the lesion gate removed).
        notes: why a panel is missing.
    """

    display: np.ndarray
    cam: np.ndarray | None = None
    outline: np.ndarray | None = None
    combined: np.ndarray | None = None
    outline_caption: str = "segmented regions (outline)"
    notes: list[str] = field(default_factory=list)


def image_panels(
    predictor, img: np.ndarray, model_input: np.ndarray, label: str, is_dicom: bool, with_cam: bool = True
) -> Panels:
    """The pictures of one image scored by ``predictor`` as ``label``. For a DICOM everything outside the
    scan sector is blanked in every picture (the burned-in patient text ultrasound machines print in the
    border; the run's sector method, so the same box its crop took). A failing heatmap or segmenter costs
    its picture (a note says why), never the others."""
    display, shown_input, model_mask = to_rgb(img), model_input, None
    if is_dicom:
        mask = sector_mask(display, getattr(predictor.pp, "sector", "fan"))
        display = blank_outside_sector(display, mask)
        model_mask = mask_to_model_space(mask, predictor.pp)
        shown_input = blank_outside_sector(model_input, model_mask)
    out = Panels(display)
    if with_cam:
        try:
            out.cam = cam_overlay(predictor.model, model_input, predictor.pp, predictor.labels.index(label))
            if model_mask is not None:
                out.cam = blank_outside_sector(out.cam, model_mask)
        except Exception as exc:  # the prediction stands without its heatmap
            out.notes.append(f"heatmap unavailable ({type(exc).__name__}: {exc})")
    try:
        found = outline_masks(predictor.run_dir, model_input, predictor.pp, img)
        masks = {t: m for t, (m, _) in found.items()}
        if masks:
            out.outline = draw_outlines(shown_input, masks)
        gated = "".join(f"; no {t} outline: {GATED}" for t, (_, off) in found.items() if off)
        out.outline_caption = outline_legend(predictor.run_dir) + gated
    except Exception as exc:
        masks = {}
        out.notes.append(f"segmentation unavailable ({type(exc).__name__}: {exc})")
    base = out.cam if out.cam is not None else shown_input
    out.combined = draw_outlines(base, masks) if masks else base
    return out


__all__ = [
    "GATED",
    "Panels",
    "blank_outside_sector",
    "draw_outlines",
    "image_panels",
    "mask_to_model_space",
    "outline_legend",
    "outline_masks",
    "run_segmenters",
    "segmentation_outline",
]
