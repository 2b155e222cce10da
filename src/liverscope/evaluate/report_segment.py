"""The report's *Segmentation* section: one part per segmenter target of the run.

``liverscope segment train`` merges each target's scores into ``metrics.json``: ``"segmentation"`` for
the ``lesion`` target (the key of runs made before targets), ``"segmentation_T"`` for target T (see
``liverscope.rundir.segmenter_files``). Each part shows the training facts, the test images'
figures (:func:`liverscope.evaluate.masks.expert_mask_summary`: Dice/IoU over images with a non-empty
mask, detection rate, false alarms on empty masks) of the U-Net against its targets and the expert masks
beside the trivial baselines, the same per class and per size quartile, and the mean IoU/Dice over all
test images. Keys it does not know (older or hand-made metrics) are shown as they are.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from liverscope.evaluate.html import fmt, generic_html, note, table_html
from liverscope.rundir import SEGMENTATION_KEY, SEGMENTER_TARGET
from liverscope.rundir.bundle import RunData

#: The columns of an :func:`~liverscope.evaluate.masks.expert_mask_summary` group: (key, title).
FIGURES = (
    ("n_lesion", "with a mask"),
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("detection_rate", "detected"),
    ("n_empty", "empty"),
    ("false_positive_rate", "false alarms"),
)
BREAKDOWN = (("dice", "Dice"), ("detection_rate", "detected"), ("false_positive_rate", "false alarms"))
FACTS = (
    ("masks", "trained on"),
    ("expert_masks", "expert masks"),
    ("loss", "loss"),
    ("size", "U-Net input (px)"),
    ("grid", "scored on a grid of (px)"),
    ("n_train", "train images"),
    ("n_val", "validation images"),
    ("n_test", "test images"),
    ("best_epoch", "best epoch"),
    ("best_val_dice", "best validation Dice"),
)
MEANS = (
    ("iou_vs_targets", "IoU vs targets"),
    ("dice_vs_targets", "Dice vs targets"),
    ("iou_vs_targets_sector", "IoU vs targets, in sector"),
    ("dice_vs_targets_sector", "Dice vs targets, in sector"),
)
SUMMARIES = (
    "vs_targets",
    "vs_expert",
    "vs_expert_ungated",
    "gate",
    "pseudo_vs_expert",
    "baselines",
    "unet_vs_real",
    "pseudo_vs_real",
    "test_images",
    "target",
    "real_masks",
)


def segmentation_targets(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The segmenters' scores of a ``metrics.json`` by target: ``lesion`` first, then by name."""
    found = {}
    for key, value in metrics.items():
        if value and (key == SEGMENTATION_KEY or key.startswith(f"{SEGMENTATION_KEY}_")):
            found[SEGMENTER_TARGET if key == SEGMENTATION_KEY else key[len(SEGMENTATION_KEY) + 1 :]] = value
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != SEGMENTER_TARGET, kv[0])))


def _scorers(seg: Mapping[str, Any]) -> tuple[list[tuple[str, Mapping]], str]:
    """``[(row label, expert_mask_summary)]`` in table order, and what the baselines are scored against."""
    base = seg.get("baselines") or {}
    against = next(
        (b.get("against") for b in base.values() if isinstance(b, Mapping) and b.get("against")),
        "expert masks",
    )
    rows = [
        ("U-Net vs its targets", seg.get("vs_targets")),
        ("U-Net vs expert masks", seg.get("vs_expert")),
        ("U-Net without the lesion gate vs expert masks", seg.get("vs_expert_ungated")),
        ("pseudo-masks vs expert masks", seg.get("pseudo_vs_expert")),
        (f"baseline: whole scan sector vs {against}", base.get("sector")),
        (f"baseline: centred disc vs {against}", base.get("centred_disc")),
    ]
    return [(label, s) for label, s in rows if isinstance(s, Mapping)], against


def _short(label: str) -> str:
    return label.replace("baseline: ", "").split(" vs ")[0]


def _breakdown(scored: Sequence[tuple[str, Mapping]], part: str, title: str, caption: str) -> str | None:
    """A per-group table (``by_class`` / ``by_size_quartile``): each scorer's Dice, detection and false alarms."""
    groups: list[str] = []
    for _, s in scored:
        groups += [g for g in (s.get(part) or {}) if g not in groups]
    if not groups:
        return None
    keys = [
        (k, t) for k, t in BREAKDOWN if any(k in g for _, s in scored for g in (s.get(part) or {}).values())
    ]
    rows = []
    for g in groups:
        cells = [((s.get(part) or {}).get(g) or {}) for _, s in scored]
        first = next((c for c in cells if c), {})
        share = [
            v for v in first.get("area_share") or [] if isinstance(v, (int, float))
        ]  # an empty quartile has none (null)
        name = (
            f"{g} ({fmt(100 * share[0], 1)}–{fmt(100 * share[1], 1)}% of the sector)"
            if len(share) == 2
            else str(g)
        )
        rows.append([name, first.get("n"), *[c.get(k) for c in cells for k, _ in keys]])
    header = [title, "n", *[f"{_short(label)}: {t}" for label, _ in scored for _, t in keys]]
    return table_html(header, rows, caption=caption)


def _target_html(target: str, seg: Mapping[str, Any]) -> str:
    parts = [f"<h3>Target: {html.escape(str(seg.get('target') or target))}</h3>"]
    facts = [[t, seg[k]] for k, t in FACTS if seg.get(k) is not None]
    gate = seg.get("gate")
    if isinstance(gate, Mapping):  # what the gate suppresses: its rule here, its effect in the tables below
        facts.append(
            [
                "lesion gate (fitted on the validation images)",
                f"largest region only, at least {100 * gate['min_area']:.2f}% of the grid, "
                f"peak probability at least {gate['min_peak']:.2f}; the row without the gate shows what it removed",
            ]
        )
    if facts:
        parts.append(table_html(None, [[t, v if isinstance(v, (int, float)) else str(v)] for t, v in facts]))
    scored, against = _scorers(seg)
    if scored:
        rows = [[label, *[(s.get("overall") or {}).get(k) for k, _ in FIGURES]] for label, s in scored]
        parts.append(table_html(["held-out test images", *[t for _, t in FIGURES]], rows, caption="Overall"))
        disc = (seg.get("baselines") or {}).get("centred_disc") or {}
        parts.append(
            note(
                "Dice and IoU are averaged over the test images whose mask is not empty; detected: at least one predicted "
                "pixel inside the mask; false alarms: the share of images with an empty mask that get any predicted pixel. "
                "The baselines see no mask of a test image: the whole scan sector, and a disc at the sector's centroid "
                f"whose area ({fmt(disc.get('area_px'), 0)} px) is the median non-empty target area of the training images. "
                f"Baselines are scored against the {against}."
            )
        )
        # per group: the U-Net against the experts when there are any (else its targets), beside the baselines
        main = [
            x
            for x in scored
            if not (x[0] == "U-Net vs its targets" and isinstance(seg.get("vs_expert"), Mapping))
        ]
        for part, title, caption in (
            ("by_class", "class", "Per class"),
            ("by_size_quartile", "mask size", "Per size quartile (share of the scan sector)"),
        ):
            table = _breakdown(main, part, title, caption)
            if table:
                parts.append(table)
    means = [[t, seg.get(k)] for k, t in MEANS if seg.get(k) is not None]
    for key, name in (
        ("unet_vs_real", "U-Net vs expert masks"),
        ("pseudo_vs_real", "pseudo-masks vs expert masks"),
    ):
        r = seg.get(key)
        if isinstance(r, Mapping):
            means += [
                [f"{m} {name}" + (", in sector" if k.endswith("_sector") else ""), r.get(k)]
                for k, m in (("iou", "IoU"), ("dice", "Dice"), ("iou_sector", "IoU"), ("dice_sector", "Dice"))
                if r.get(k) is not None
            ]
    if means:
        parts.append(table_html(None, means, caption="Means over all test images (two empty masks score 1)"))
    rest = {
        k: v for k, v in seg.items() if k not in SUMMARIES and k not in dict(FACTS) and k not in dict(MEANS)
    }
    flat = {k: v for k, v in rest.items() if not isinstance(v, (Mapping, list))}
    if flat:
        parts.append(generic_html(flat))
    for k, v in rest.items():
        if isinstance(v, (Mapping, list)):
            parts.append(f"<h4>{html.escape(str(k).replace('_', ' '))}</h4>" + generic_html(v))
    images = seg.get("test_images")
    if images:
        parts.append(
            f"<details><summary>per test image ({len(images)})</summary>{generic_html(images)}</details>"
        )
    return "".join(parts)


def section_segmentation(run: RunData) -> str | None:
    """Every segmenter target's scores (``None`` when the run has none)."""
    targets = segmentation_targets(run.metrics)
    if not targets:
        return None
    return "".join(
        _target_html(t, seg) if isinstance(seg, Mapping) else generic_html(seg) for t, seg in targets.items()
    )


__all__ = ["segmentation_targets", "section_segmentation"]
