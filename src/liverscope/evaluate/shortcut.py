"""The shortcut check's figures (issue 23): skill above chance with the scan sector's tissue or its
periphery blanked (:mod:`liverscope.data.ablation`), beside the plain figure, overall and per source.
Pure: labels and predicted classes in, numbers and a verdict out.

Skill above chance is balanced accuracy - 1/K, K the number of classes present among the true labels of
the images scored (what a model that always answers the same class, or at random, gets). A set with fewer
than two classes present has no skill to measure (``None``).

The rule (:func:`verdict`): where the plain skill is at least :data:`MIN_SKILL`, a model whose skill with
the tissue blanked keeps at least :data:`SURVIVES` of the plain skill reads the scanner, not the liver; one
whose skill with the periphery blanked keeps that share (and not with the tissue blanked) reads the liver;
one that keeps it under neither needs the whole frame.

Only a score that survives proves something: blanking also takes a frame away from the frames the model
learned on, so a score can fall for that reason alone. A phantom run whose classes live in the speckle lost
most of its skill when the text and depth scale outside the sector (the same in every class) were blanked:
its answers drifted to one class (docs/benchmarks.md).
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from liverscope.data.ablation import REGIONS

#: The conditions scored: the plain frames, then each blanked region.
CONDITIONS: tuple[str, ...] = ("plain", *REGIONS)
#: Share of the plain skill that, surviving without the tissue, says the model reads the scanner.
SURVIVES = 0.5
#: Below this plain skill there is nothing to explain: no verdict.
MIN_SKILL = 0.05
#: Sources with fewer images are not scored on their own.
MIN_SOURCE = 10
READS_SCANNER = "this model reads the scanner, not the liver"
VERDICTS = {
    "scanner": READS_SCANNER,
    "liver": "this model reads the liver: its skill survives without the scanner's periphery, not without the tissue",
    "whole frame": (
        "neither the tissue nor the periphery alone keeps half of this model's skill: it needs the whole frame, or blanking "
        "moves the frames off those it learned (a lost score is no proof; only a score that survives is)"
    ),
    "no skill": "no skill above chance to explain",
}
RULE = (
    f"skill = balanced accuracy - 1/K (K: classes present); where the plain skill is at least {MIN_SKILL}, "
    f"a tissue-blanked skill of at least {SURVIVES:.0%} of it means the model reads the scanner, not the liver"
)


def skill(y: Sequence[int], pred: Sequence[int]) -> dict | None:
    """``{"balanced_accuracy", "chance", "skill"}`` of predicted classes, or ``None`` with fewer than two classes present."""
    from sklearn.metrics import balanced_accuracy_score

    y, pred = np.asarray(y), np.asarray(pred)
    k = len(np.unique(y))
    if k < 2:
        return None
    with (
        warnings.catch_warnings()
    ):  # a blanked frame's answers may name classes absent from the set: counted as wrong
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(y, pred))
    return {"balanced_accuracy": bacc, "chance": 1.0 / k, "skill": bacc - 1.0 / k}


def verdict(row: Mapping) -> str:
    """One of :data:`VERDICTS`' keys for a row of :func:`skill_row` (the module docstring's rule)."""
    plain = (row.get("plain") or {}).get("skill")
    if plain is None or plain < MIN_SKILL:
        return "no skill"
    kept = {r: (row.get(r) or {}).get("skill") for r in REGIONS}
    if kept.get("tissue") is not None and kept["tissue"] >= SURVIVES * plain:
        return "scanner"
    if kept.get("periphery") is not None and kept["periphery"] >= SURVIVES * plain:
        return "liver"
    return "whole frame" if all(v is not None for v in kept.values()) else "no skill"


def skill_row(y: Sequence[int], preds: Mapping[str, Sequence[int]]) -> dict:
    """Skill of each condition's predictions on one set of images, and the verdict."""
    y = np.asarray(y)
    row: dict = {"n": int(len(y)), "classes": int(len(np.unique(y)))}
    for cond, pred in preds.items():
        row[cond] = skill(y, pred)
    plain = (row.get("plain") or {}).get("skill")
    for region in REGIONS:
        s = (row.get(region) or {}).get("skill")
        if s is not None and plain is not None and plain > 0:
            row[region]["share_of_plain"] = s / plain
    row["verdict"] = verdict(row)
    return row


def shortcut_table(
    y: Sequence[int], preds: Mapping[str, Sequence[int]], sources: Sequence[str | None]
) -> dict:
    """The check's figures: ``overall`` and ``by_source`` rows (:func:`skill_row`), sources under
    :data:`MIN_SOURCE` images listed in ``skipped_sources``; ``reads_scanner`` (the overall verdict) and its sentence.

    Args:
        y: ``(n,)`` true class indices.
        preds: ``{"plain": (n,), "tissue": (n,), "periphery": (n,)}`` predicted classes (any of the regions).
        sources: acquisition source of each image (``None``: ``unknown``).
    """
    y = np.asarray(y)
    preds = {c: np.asarray(preds[c]) for c in CONDITIONS if c in preds}
    src = np.array(["unknown" if s in (None, "") else str(s) for s in sources], dtype=object)
    table: dict = {"rule": RULE, "overall": skill_row(y, preds), "by_source": {}, "skipped_sources": {}}
    if len(set(src.tolist())) > 1:
        for name in sorted(set(src.tolist())):
            sel = src == name
            if sel.sum() < MIN_SOURCE:
                table["skipped_sources"][name] = int(sel.sum())
                continue
            table["by_source"][name] = skill_row(y[sel], {c: p[sel] for c, p in preds.items()})
    table["reads_scanner"] = table["overall"]["verdict"] == "scanner"
    table["message"] = VERDICTS[table["overall"]["verdict"]]
    return table


__all__ = [
    "CONDITIONS",
    "SURVIVES",
    "MIN_SKILL",
    "MIN_SOURCE",
    "READS_SCANNER",
    "VERDICTS",
    "RULE",
    "skill",
    "verdict",
    "skill_row",
    "shortcut_table",
]
