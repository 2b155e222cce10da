"""The words a reader sees beside liverscope's figures, one text for the app and the report: the
decision-support notice, where the figures come from (the data the model was trained on, said plainly
when they were the built-in synthetic phantoms), and what a flagged image shows instead of its stage.

Plain text (no Markdown, no HTML): the app and the report each escape it their own way.
"""

from __future__ import annotations

from typing import Mapping

#: The decision-support notice: at the top of the app and of every report.
DECISION_SUPPORT = (
    "Decision support, not a diagnosis. liverscope estimates a fibrosis stage / class from one ultrasound image with a model "
    "trained on a limited dataset. It can be wrong, and it has not been cleared as a medical device. Interpret every result "
    "together with the clinical picture, elastography, laboratory values and, where indicated, histology; the responsible "
    "clinician makes the diagnosis."
)
#: Said wherever the figures of a model trained on :func:`liverscope.data.datasets.make_phantoms`' images appear.
PHANTOMS = (
    "This model was trained on the built-in synthetic phantoms (generated images, not patients' ultrasound): its figures show "
    "that the software works end to end, and nothing about how well it stages real livers."
)
#: What a flagged image shows instead of its stage.
NOT_ASSESSABLE = "not assessable"
#: The report gallery's caption of a flagged image.
NOT_ASSESSABLE_FLAGGED = "not assessable (flagged)"
#: Why an image is flagged.
UNLIKE_TRAINING = "unlike the images this model was trained on"
#: Most acquisition sources named in one line (the rest are counted).
MAX_SOURCES = 4


def trained_on(info: Mapping | None) -> str:
    """One line naming the data a model was trained on (``model.json["training_data"]``, see
    :func:`liverscope.data.datasets.describe_data`): path, number of images, the audit's acquisition sources."""
    if not info:
        return "Trained on: not recorded in this run."
    images = info.get("images")
    text = f"Trained on {info.get('path') or 'an unrecorded path'}: " + (
        f"{images} images" if images is not None else "number of images not recorded"
    )
    sources = dict(info.get("sources") or {})
    if sources:
        named = "; ".join(f"{name} ({n})" for name, n in list(sources.items())[:MAX_SOURCES])
        more = f"; {len(sources) - MAX_SOURCES} more" if len(sources) > MAX_SOURCES else ""
        text += f" from {len(sources)} acquisition source{'s' if len(sources) != 1 else ''} ({named}{more})"
    if info.get("synthetic_phantoms"):
        text += ", the built-in synthetic phantoms"
    return text + "."


def is_phantoms(info: Mapping | None) -> bool:
    """Whether a model was trained on the built-in synthetic phantoms (``None`` and unknown: no)."""
    return bool(info and info.get("synthetic_phantoms"))


def flag_reason(score: float | None, threshold: float | None, ensemble: bool = False) -> str:
    """Why an image is not assessed: it is unlike the training images, by how much, and where its numbers are."""
    if score is None or threshold is None:
        by = ""
    elif ensemble:
        by = f" (the fold models' median out-of-distribution score is {score:.4g} above their thresholds)"
    else:
        by = f" (its out-of-distribution score {score:.4g} is above the run's threshold {threshold:.4g})"
    return (
        f"Not assessable: this image is {UNLIKE_TRAINING}{by}, so the model's stage for it cannot be relied on. Check that it is "
        "a B-mode liver ultrasound of the kind the model was trained on. The model's output is behind 'Show anyway', and the "
        "CSV download keeps every number."
    )


__all__ = [
    "DECISION_SUPPORT",
    "PHANTOMS",
    "NOT_ASSESSABLE",
    "NOT_ASSESSABLE_FLAGGED",
    "UNLIKE_TRAINING",
    "trained_on",
    "is_phantoms",
    "flag_reason",
]
