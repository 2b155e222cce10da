"""The report's classification figures: training curves, confusion matrix, ROC curves, the per-class and
clinical-endpoint tables, calibration (ECE/NLL table and reliability diagram), the out-of-distribution
flag, results by acquisition source and the class activation map gallery. Each ``section_*`` returns HTML,
or ``None`` when its data is absent; :mod:`.report` puts them in page order.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping

from liverscope.evaluate.figures import write_confusion, write_curves, write_reliability, write_roc
from liverscope.evaluate.html import fmt, fmt_ci, image_html, note, table_html
from liverscope.evaluate.notices import NOT_ASSESSABLE_FLAGGED, UNLIKE_TRAINING
from liverscope.evaluate.stats import expected_calibration_error, negative_log_likelihood
from liverscope.rundir import GALLERY
from liverscope.rundir.bundle import RunData
from liverscope.utils import softmax

#: Most CAM gallery images embedded in one report (each adds its bytes x 4/3 to the HTML).
MAX_GALLERY_IMAGES = 60


def section_training(run: RunData) -> str | None:
    if not run.history:
        return None
    path = write_curves(
        run.plots, run.history if len(run.history) > 1 or "" not in run.history else run.history[""]
    )
    what = "each fold's training (one colour per fold)" if len(run.history) > 1 else "training"
    return image_html(
        path, "training curves", f"Loss, validation accuracy and learning rate per epoch of {what}."
    )


def section_confusion(run: RunData) -> str | None:
    cm = run.test.get("confusion_matrix")
    if not cm or not run.class_names:
        return None
    path = write_confusion(run.plots, cm, run.class_names)
    return image_html(
        path,
        "confusion matrix",
        "Rows: true class; columns: predicted class. Cells: fraction of the true class (count).",
        width="34em",
    )


def section_roc(run: RunData) -> str | None:
    pr = run.predictions
    if not pr or len(pr["y"]) == 0:
        return None
    path = write_roc(run.plots, pr["y"], pr["probs"], run.class_names)
    return image_html(path, "ROC curves", f"Test set, n = {len(pr['y'])}.")


def section_per_class(run: RunData) -> str | None:
    pc = run.test.get("per_class")
    if not pc:
        return None
    cols = [
        "support",
        "precision",
        "recall",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "auc",
        "tp",
        "fp",
        "fn",
        "tn",
    ]
    header = [
        "class",
        "n",
        "precision",
        "sensitivity (recall)",
        "specificity",
        "PPV",
        "NPV",
        "F1",
        "AUC",
        "TP",
        "FP",
        "FN",
        "TN",
    ]
    rows = [[name, *[v.get(c) for c in cols]] for name, v in pc.items()]
    t = run.test
    rows.append(
        [
            "macro average",
            t.get("n"),
            t.get("macro_precision"),
            t.get("macro_recall"),
            t.get("macro_specificity"),
            None,
            None,
            t.get("macro_f1"),
            t.get("macro_auc"),
            None,
            None,
            None,
            None,
        ]
    )
    return table_html(header, rows) + note(
        "One class against the rest. PPV equals precision; — marks a figure that is undefined (no such images or predictions)."
    )


def section_endpoints(run: RunData) -> str | None:
    ep = run.test.get("endpoints")
    if not ep:
        return None
    rows = []
    for key, e in ep.items():
        rows.append(
            [
                html.escape(f"{key} {e.get('name', '')}"),
                html.escape(", ".join(e.get("positive", []))),
                f"{e.get('n_positive', '—')} / {e.get('n', '—')}",
                fmt_ci(e.get("auc"), e.get("auc_ci95")),
                *[fmt(e.get(c)) for c in ("sensitivity", "specificity", "ppv", "npv")],
            ]
        )
    header = [
        "endpoint",
        "positive stages",
        "positive / n",
        "AUC (95% CI)",
        "sensitivity",
        "specificity",
        "PPV",
        "NPV",
    ]
    return table_html(header, rows, raw=True) + note(
        "Endpoint probability = sum of the probabilities of its stages (used for the AUC); sensitivity and specificity are "
        "at the model's own decision (the most probable stage)."
    )


def section_calibration(run: RunData) -> str | None:
    pr = run.predictions
    t = run.test
    if not pr and t.get("ece") is None:
        return None
    parts = []
    temperature = run.temperature
    if pr and pr["logits"] is not None:
        raw = softmax(pr["logits"])
        rows = [
            [
                "uncalibrated (T = 1)",
                expected_calibration_error(raw, pr["y"]),
                negative_log_likelihood(pr["logits"], pr["y"]),
            ]
        ]
        cal = None
        if temperature and abs(temperature - 1.0) > 1e-9:
            cal = softmax(pr["logits"], temperature)
            rows.append(
                [
                    f"temperature-scaled (T = {temperature:.3f})",
                    expected_calibration_error(cal, pr["y"]),
                    negative_log_likelihood(pr["logits"], pr["y"], temperature),
                ]
            )
        parts.append(table_html(["test-set probabilities", "ECE (15 bins)", "NLL"], rows))
        path = write_reliability(run.plots, raw, pr["y"], calibrated=cal)
    elif pr:
        parts.append(
            table_html(
                ["test-set probabilities", "ECE (15 bins)"],
                [["as predicted", expected_calibration_error(pr["probs"], pr["y"])]],
            )
        )
        path = write_reliability(run.plots, pr["probs"], pr["y"])
    else:
        path = None
        rows = [["uncalibrated", t.get("ece_uncalibrated")], ["temperature-scaled", t.get("ece")]]
        parts.append(
            table_html(["test-set probabilities", "ECE (15 bins)"], [r for r in rows if r[1] is not None])
        )
    if path is not None:
        parts.append(
            image_html(
                path,
                "reliability diagram",
                "Points: mean confidence and accuracy of the images in each confidence bin; below: how many images fall in each bin.",
                width="30em",
            )
        )
    fit = run.model.get("temperature_fit") or run.metrics.get("temperature_fit") or {}
    if fit.get("at_edge"):
        parts.append(note(f"Temperature not applied: {fit.get('warning')}", "warn"))
    parts.append(
        note(
            "Temperature scaling (Guo et al., 2017) divides the logits by one T fitted on held-out logits (the validation set; "
            "a fold ensemble's out-of-fold predictions); it changes confidences, never the predicted class."
            + (
                f" A fold ensemble's T is the out-of-fold one ({fit['fitted']:.3f}) times {fit['ensemble_spread_ratio']:.3f}, "
                "how much averaging the fold models shrinks their logits on the hold-out images."
                if fit.get("ensemble_spread_ratio")
                else ""
            )
            if temperature and abs(temperature - 1.0) > 1e-9
            else "No temperature is applied to this model's probabilities."
        )
    )
    return "".join(parts)


#: Share of a data set flagged as unlike the training images above which the report warns (a run's
#: own validation images are flagged at about 5% by construction).
OOD_WARN_SHARE = 0.25


def section_ood(run: RunData) -> str | None:
    ood = run.metrics.get("ood") or {}
    info = run.model.get("ood") or {}
    if not ood and not info:
        return None
    external = "flagged" in ood  # `liverscope evaluate` on other data: one share for the whole set
    rows = [
        ["score", ood.get("method") or info.get("method")],
        ["threshold", fmt(ood["threshold"] if "threshold" in ood else info.get("threshold"))],
    ]
    if info.get("quantile"):
        rows.append(
            [
                "threshold set so that at least this share of images like the validation images pass (conformal)",
                f"{info['quantile']:.1%}",
            ]
        )
    sets = (
        [("", "images of this data set flagged", ood)]
        if external
        else [(k, f"{k} images flagged", ood.get(k) or info.get(k) or {}) for k in ("validation", "test")]
    )
    for _, label, summary in sets:
        if summary.get("n"):
            rows.append([label, f"{summary['flagged']} of {summary['n']} ({summary['share']:.1%})"])
    if ood.get("ensemble"):
        rows.append(["fold ensemble", ood["ensemble"]])
    parts = [table_html(None, rows)]
    if external and ood.get("n") and ood["share"] > OOD_WARN_SHARE:
        parts.append(
            note(
                f"{ood['share']:.0%} of these images are unlike the images the model was trained on (about 5% of its own validation "
                "images are): the model does not transfer to this data, and its figures here should not be relied on.",
                "warn",
            )
        )
    parts.append(
        note(
            "Each prediction carries an out-of-distribution score (higher = more unlike the training images; Mahalanobis distance "
            "of the pooled features to the nearest class, Lee et al. 2018, or the energy of the logits, Liu et al. 2020) and is "
            "flagged above the threshold, which is fitted on the run's own validation images."
        )
    )
    return "".join(parts)


def _group_table(groups: Mapping[str, Mapping[str, Any]]) -> str:
    keys = [
        ("n", "n"),
        ("accuracy", "accuracy"),
        ("balanced_accuracy", "balanced acc."),
        ("macro_f1", "macro F1"),
        ("macro_auc", "macro AUC"),
        ("quadratic_kappa", "QW kappa"),
    ]
    present = [(k, name) for k, name in keys if any(g.get(k) is not None for g in groups.values())]
    return table_html(
        ["source", *[name for _, name in present]],
        [[name, *[g.get(k) for k, _ in present]] for name, g in groups.items()],
    )


def section_by_source(run: RunData) -> str | None:
    blocks = [
        (k, label)
        for k, label in (
            ("test_by_source", "hold-out test"),
            ("oof_by_source", "out-of-fold (cross-validation)"),
        )
        if (run.metrics.get(k) or {}).get("groups")
    ]
    if not blocks:
        return None
    parts = []
    for key, label in blocks:
        res = run.metrics[key]
        parts.append(f"<h3>{html.escape(label)}</h3>" + _group_table(res["groups"]))
        if res.get("note"):
            parts.append(note(res["note"]))
    parts.append(
        note(
            "A figure that holds in the pooled data but not within each source may be learning the scanner, not the liver."
        )
    )
    return "".join(parts)


def _gallery_tile(path: Path, caption: str, flagged: bool | None) -> str:
    """A gallery tile; a flagged image's shows "not assessable (flagged)", its stage only behind "show anyway"."""
    if not flagged:
        return image_html(path, path.stem, caption)
    why = f'<b class="flag">{html.escape(NOT_ASSESSABLE_FLAGGED)}</b>: {html.escape(UNLIKE_TRAINING)}'
    return image_html(
        path,
        path.stem,
        caption_html=f"{why}<details><summary>show anyway</summary>{html.escape(caption)}</details>",
    )


def section_gallery(run: RunData) -> str | None:
    if not run.gallery:
        return None
    shown = run.gallery[:MAX_GALLERY_IMAGES]
    cells = "".join(_gallery_tile(*tile) for tile in shown)
    more = (
        note(f"{len(run.gallery) - len(shown)} more images in {GALLERY}/.")
        if len(run.gallery) > len(shown)
        else ""
    )
    if run.model.get("ood") and any(flagged is None for _, _, flagged in shown):
        more += note(
            "This gallery does not record which of its images were flagged as unlike the training images (it was made "
            "by an older liverscope).",
            "warn",
        )
    return f'<div class="gallery">{cells}</div>{more}'
