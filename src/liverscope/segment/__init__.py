"""Weakly supervised segmentation: CAM pseudo-masks, an Attention U-Net trained on them, and scores.

The first reference study thresholds each Grad-CAM heatmap at 0.5 of its normalised range, calls the
result a pseudo-mask, trains an Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look
for the Pancreas", MIDL 2018) on those masks with binary cross-entropy and reports IoU 0.43 *against its
own pseudo-masks*. This package does the same by default and adds what makes the figure mean something:

* pseudo-mask rules besides the fixed 0.5 threshold — Otsu's threshold over the scan sector and the top
  q% of sector pixels — all limited to the scan sector (text, calibration marks and the black border
  are not tissue), and CAMs averaged over a cross-validation run's fold models and/or horizontal flips;
* a grouped train / validation / test split (duplicate images never straddle it);
* IoU and Dice against the pseudo-masks of held-out images (the study's figure) *and* against expert
  masks when a mask folder is given, over the whole image and restricted to the scan sector;
* the pointing game: does the CAM's maximum fall inside the lesion?

Where each part lives:

* :mod:`.rules` — pseudo-mask rules (arrays in, boolean masks out);
* :mod:`.pseudo` — CAMs of a run (fold ensemble, flips) → pseudo-masks, their scores, ``segment pseudo``;
* :mod:`.images` — loading a folder's images and masks (model inputs, crop boxes, mask files);
* :mod:`.unet` — the Attention U-Net: build, predict, and the run's saved segmenter;
* :mod:`.training` — fitting it with Lightning (checkpoints, early stopping, resume, devices; MONAI's
  ``DiceCELoss`` for BCE + Dice);
* :mod:`.nnunet` — nnU-Net as the engine of ``segment train --engine nnunet`` (the ``nnunetv2`` package
  plans, preprocesses and trains; its network then serves as the run's segmenter);
* :mod:`.config` — :class:`SegmentConfig`, the typed settings of ``segment train`` (defaults < YAML <
  flags < ``--set``);
* :mod:`.commands` — ``segment train`` (:func:`train_segmenter` and its steps);
* :mod:`.mask_files` — ``segment predict`` (:func:`write_segmentations`) and ``segment score`` on files;
* :mod:`.outline` — a mask's outline drawn on an image;
* the mask metrics (IoU, Dice, pointing game) are pure functions in :mod:`liverscope.evaluate.masks`;
  the mapping between original image and model grid is :mod:`liverscope.data.geometry`.

The segmenter lives in the run directory (``segmenter.safetensors`` + ``segmenter.json``, see
:mod:`liverscope.rundir`). The app calls :func:`load_segmenter`, :func:`predict_mask` and :func:`draw_outline`.
"""

from __future__ import annotations

from liverscope.segment.commands import predicted_regions, segmentation_split, train_segmenter
from liverscope.segment.config import SegmentConfig, load_segment_config, segment_config
from liverscope.segment.images import (
    LoadedImage,
    find_mask,
    list_images,
    load_images,
    load_masks_for,
    read_mask,
)
from liverscope.segment.mask_files import score_mask_dirs, write_segmentations
from liverscope.segment.outline import draw_outline
from liverscope.segment.pseudo import (
    PseudoMasks,
    PseudoOptions,
    pseudo_masks,
    run_cams,
    score_pseudo_masks,
    write_pseudo_masks,
)
from liverscope.segment.rules import (
    IMAGE_RULES,
    RULES,
    confident_targets,
    describe_rule,
    grabcut_mask,
    normalise_map,
    otsu_mask,
    pseudo_mask,
    threshold_mask,
    top_fraction_mask,
)
from liverscope.segment.training import LitSegmenter, fit_unet, segmentation_loss, weighted_segmentation_loss
from liverscope.segment.unet import (
    DEFAULT_CHANNELS,
    LOSSES,
    Segmenter,
    build_unet,
    load_segmenter,
    predict_mask,
    predict_masks_at,
    predict_proba,
    save_segmenter,
    to_unet_input,
    unet_arch,
)

__all__ = [
    "RULES",
    "IMAGE_RULES",
    "LOSSES",
    "DEFAULT_CHANNELS",
    "normalise_map",
    "threshold_mask",
    "otsu_mask",
    "top_fraction_mask",
    "grabcut_mask",
    "pseudo_mask",
    "confident_targets",
    "describe_rule",
    "weighted_segmentation_loss",
    "PseudoMasks",
    "run_cams",
    "pseudo_masks",
    "score_pseudo_masks",
    "write_pseudo_masks",
    "LoadedImage",
    "load_images",
    "list_images",
    "read_mask",
    "find_mask",
    "load_masks_for",
    "build_unet",
    "unet_arch",
    "to_unet_input",
    "fit_unet",
    "LitSegmenter",
    "segmentation_loss",
    "predict_masks_at",
    "Segmenter",
    "load_segmenter",
    "save_segmenter",
    "predict_mask",
    "predict_proba",
    "segmentation_split",
    "train_segmenter",
    "write_segmentations",
    "score_mask_dirs",
    "draw_outline",
    "predicted_regions",
    "SegmentConfig",
    "load_segment_config",
    "segment_config",
    "PseudoOptions",
]
