"""The report's *Shortcut check* section (issue 23), from ``metrics.json["shortcut"]`` (written by
``liverscope evaluate RUN DATA --ablation``): skill above chance with the scan sector's tissue or periphery
blanked beside the plain figure, overall and per source, the verdict of each row, and the sentence "this
model reads the scanner, not the liver" where the score survives without the tissue
(:mod:`liverscope.evaluate.shortcut`).
"""

from __future__ import annotations

from typing import Any, Mapping

from liverscope.evaluate.html import fmt, note, table_html
from liverscope.evaluate.shortcut import CONDITIONS, READS_SCANNER, RULE, VERDICTS
from liverscope.rundir.bundle import RunData

_CONDITION_TITLES = {"plain": "plain", "tissue": "tissue blanked", "periphery": "periphery blanked"}


def _skill_cell(row: Mapping[str, Any], cond: str) -> str:
    s = row.get(cond)
    if not s:
        return "—"
    share = s.get("share_of_plain")
    return fmt(s.get("skill")) + (f" ({share:.0%} of plain)" if share is not None else "")


def section_shortcut(run: RunData) -> str | None:
    sc = run.metrics.get("shortcut")
    if not sc:
        return None
    conds = [c for c in CONDITIONS if c == "plain" or c in (sc.get("regions") or [])]
    rows = [
        ("all images", sc.get("overall") or {}),
        *[(f"source {k}", v) for k, v in (sc.get("by_source") or {}).items()],
    ]
    body = [
        [
            name,
            r.get("n"),
            fmt(1.0 / r["classes"]) if r.get("classes") else "—",
            *[_skill_cell(r, c) for c in conds],
            VERDICTS.get(r.get("verdict"), r.get("verdict") or "—"),
        ]
        for name, r in rows
    ]
    header = ["images", "n", "chance", *[f"skill, {_CONDITION_TITLES[c]}" for c in conds], "verdict"]
    parts = []
    if sc.get("reads_scanner"):
        parts.append(
            note(
                f"{READS_SCANNER[0].upper()}{READS_SCANNER[1:]}: its skill above chance survives with the tissue of the scan "
                "sector blanked, so it is reading the scanner, text and geometry of the frame.",
                "warn",
            )
        )
    parts.append(table_html(header, body))
    parts.append(
        note(
            "Skill above chance = balanced accuracy - 1/K, K the classes present among these images' true labels; "
            "a negative skill (down to -1/K) means the images go to wrong classes more often than chance would, e.g. all "
            "to a class these images never have: no skill either. Tissue blanked: the scan sector (found by the run's own method, "
            f"'{sc.get('sector_method', 'fan')}') set to the frame's background level, so what is left is the scanner's text, "
            "marks and the frame's geometry. Periphery blanked: everything outside the sector set to that level, so what is "
            "left is the tissue. Blanked before the run's preprocessing (a run that crops to the sector keeps the original "
            f"frame's crop). Rule: {RULE}."
        )
    )
    if sc.get("no_sector"):
        parts.append(
            note(
                f"{sc['no_sector']} image(s) had no scan sector found: the whole frame counts as the sector "
                "(tissue blanking blanks everything, periphery blanking nothing).",
                "warn",
            )
        )
    if sc.get("skipped_sources"):
        parts.append(
            note(
                "Sources with too few images to score on their own: "
                + ", ".join(f"{k} ({v})" for k, v in sc["skipped_sources"].items())
                + "."
            )
        )
    return "".join(parts)


__all__ = ["section_shortcut"]
