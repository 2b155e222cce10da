"""The names of the files of a run directory: one constant per file (and the segmenter's names per
target), read by every module that touches a run; :mod:`liverscope.rundir` re-exports them all, so
``rundir.CURVES_PNG`` is the one spelling. ``tests/test_rundir_names.py`` fails on a run file named anywhere else."""

from __future__ import annotations

import re

from liverscope.data.audit_report import AUDIT_HTML, AUDIT_JSON  # noqa: F401  the data layer's names (below rundir), re-exported
from liverscope.errors import UsageError

CONFIG = "config.yaml"
MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
SPLIT = "split.csv"
SKIPPED = "skipped.csv"
PREDICTIONS_VAL = "predictions_val.csv"
PREDICTIONS_TEST = "predictions_test.csv"
OOF_PREDICTIONS = "oof_predictions.csv"
METRICS = "metrics.json"
HISTORY = "history.csv"
CV_FOLDS = "cv_folds.csv"
FOLDS = "folds"
CHECKPOINTS = "checkpoints"
#: Lightning's checkpoints inside ``checkpoints/`` (and a segmenter's checkpoint folder).
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
#: The training precision ``train.precision: auto`` chose by measurement, kept so that a resumed run trains as it
#: began (beside, not inside, ``checkpoints/``: Lightning warns of a checkpoint folder that is not empty when a run starts).
TRAINING_PRECISION = "training_precision.json"
LOGS = "logs"
# AUDIT_JSON, AUDIT_HTML (imported above): named and written by liverscope.data.audit_report, in the data
# layer below this one; every other module reads them from here.
GALLERY = "cam_gallery"
GALLERY_CAPTIONS = "captions.json"
GALLERY_FLAGGED = "flagged.json"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
OOD_STATS = "ood.safetensors"
EVAL = "eval"
#: The report and its figures (written by :mod:`liverscope.evaluate.figures` and :mod:`liverscope.evaluate.report`).
REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_curves.png"
RELIABILITY_PNG = "reliability.png"
#: ``liverscope demo``'s predictions on a few test images.
DEMO_PREDICTIONS = "demo_predictions.csv"
#: ``liverscope explain``'s default folder in a run, with its table and summary (:mod:`liverscope.explain.files`).
EXPLAIN = "explain"
CAMS_CSV = "cams.csv"
CAMS_SUMMARY = "cams_summary.json"
#: The segmenter of the default target (names of another target T: :func:`segmenter_files`).
SEGMENTER_TARGET = "lesion"
#: What a target may be called: a lower-case name (it becomes part of file names and of a metrics key).
TARGET_NAME = re.compile(r"[a-z][a-z0-9_-]*")
SEGMENTER_WEIGHTS = "segmenter.safetensors"
SEGMENTER_META = "segmenter.json"
SEGMENTER_SPLIT = "seg_split.csv"
SEGMENTER_CHECKPOINTS = "segmenter_checkpoints"
SEGMENTATION_KEY = "segmentation"
PSEUDO_MASKS = "pseudo_masks"
PSEUDO_MASKS_SUMMARY = "pseudo_masks.json"
#: The nnU-Net engine's own files in its folder of a run (``nnunet_dir``; nnU-Net's raw/preprocessed/results below it).
NNUNET_CONFIG = "config.json"
NNUNET_TRAINED = "trained.json"
NNUNET_WEIGHTS = "weights.safetensors"
NNUNET_LOG = "log.txt"
NNUNET_CASES = "cases.csv"  # which raw case is which image, and its split (ours, beside nnU-Net's files)

#: What ``liverscope train`` and ``demo`` list after training (those that exist).
SUMMARY_FILES = (
    MODEL_WEIGHTS,
    MODEL_META,
    METRICS,
    HISTORY,
    CURVES_PNG,
    CONFUSION_PNG,
    PREDICTIONS_TEST,
    REPORT_HTML,
)
#: The files whose presence makes a folder a run directory (a report is refused elsewhere).
RUN_FILES = (METRICS, MODEL_META, HISTORY, SPLIT, AUDIT_JSON, PREDICTIONS_TEST, CV_FOLDS)


def check_target(target: str) -> str:
    """``target`` when it is a valid segmentation target name (``[a-z][a-z0-9_-]*``: it becomes part of
    file names and of a ``metrics.json`` key).

    Raises:
        UsageError: any other name (the command line exits with code 2).
    """
    if not isinstance(target, str) or not TARGET_NAME.fullmatch(target):
        raise UsageError(
            f"segmentation target {target!r}: expected a lower-case name such as lesion or liver "
            "(letters a-z, digits, '_' and '-', starting with a letter)"
        )
    return target


def segmenter_files(target: str = SEGMENTER_TARGET) -> dict[str, str]:
    """The names, inside a run directory, of everything that belongs to the segmenter of ``target``.

    ``lesion`` keeps the names of runs made before targets: ``segmenter.safetensors``, ``segmenter.json``,
    ``seg_split.csv``, ``segmenter_checkpoints/``, ``pseudo_masks/`` and the ``metrics.json`` key
    ``segmentation``. Another target T adds ``-T`` to each file name (``segmenter-T.json``,
    ``seg_split-T.csv``, ``segmenter-T_checkpoints/``, ``pseudo_masks-T/``) and ``_T`` to the key
    (``segmentation_T``).

    Returns:
        ``{"weights", "meta", "split", "checkpoints", "pseudo", "metrics"}``.

    Raises:
        UsageError: ``target`` is not a valid name (:func:`check_target`).
    """
    check_target(target)
    s = "" if target == SEGMENTER_TARGET else f"-{target}"

    def tagged(name: str) -> str:
        stem, dot, ext = name.partition(".")
        return f"{stem}{s}{dot}{ext}"

    return {
        "weights": tagged(SEGMENTER_WEIGHTS),
        "meta": tagged(SEGMENTER_META),
        "split": tagged(SEGMENTER_SPLIT),
        "checkpoints": SEGMENTER_CHECKPOINTS.replace("_", f"{s}_", 1),
        "pseudo": f"{PSEUDO_MASKS}{s}",
        "metrics": SEGMENTATION_KEY + (f"_{target}" if s else ""),
    }


__all__ = [k for k in dir() if k.isupper()] + ["check_target", "segmenter_files"]
