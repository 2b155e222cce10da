"""Two report sections that say how far a run's figures can be trusted (issue 23).

* *Shortcut check* (``metrics.json["shortcut"]``, written by ``liverscope evaluate RUN DATA --ablation``):
  skill above chance with the scan sector's tissue or periphery blanked beside the plain figure, overall
  and per source, the verdict of each row, and the sentence "this model reads the scanner, not the liver"
  where the score survives without the tissue (:mod:`liverscope.evaluate.shortcut`).
* *Out of fold and the fold ensemble* (a cv run's ``metrics.json["ensemble_vs_oof"]`` and
  ``["oof_protocol"]``): the ensemble on the hold-out, the product users run, beside the out-of-fold
  estimate, with the gap, overall and per source; and whether the out-of-fold images chose anything.
"""

from __future__ import annotations

from typing import Any, Mapping

from liverscope.evaluate.html import fmt, note, table_html
from liverscope.evaluate.shortcut import CONDITIONS, READS_SCANNER, RULE, VERDICTS
from liverscope.rundata import RunData

_CONDITION_TITLES = {"plain": "plain", "tissue": "tissue blanked", "periphery": "periphery blanked"}
_GAP_TITLES = (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC"), ("quadratic_kappa", "QW kappa"),
               ("accuracy", "accuracy"), ("macro_f1", "macro F1"))


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
    rows = [("all images", sc.get("overall") or {}), *[(f"source {k}", v) for k, v in (sc.get("by_source") or {}).items()]]
    body = [[name, r.get("n"), fmt(1.0 / r["classes"]) if r.get("classes") else "—", *[_skill_cell(r, c) for c in conds],
             VERDICTS.get(r.get("verdict"), r.get("verdict") or "—")] for name, r in rows]
    header = ["images", "n", "chance", *[f"skill, {_CONDITION_TITLES[c]}" for c in conds], "verdict"]
    parts = []
    if sc.get("reads_scanner"):
        parts.append(note(f"{READS_SCANNER[0].upper()}{READS_SCANNER[1:]}: its skill above chance survives with the tissue of the scan "
                          "sector blanked, so it is reading the scanner, text and geometry of the frame.", "warn"))
    parts.append(table_html(header, body))
    parts.append(note("Skill above chance = balanced accuracy - 1/K. Tissue blanked: the scan sector (found by the run's own method, "
                      f"'{sc.get('sector_method', 'fan')}') set to the frame's background level, so what is left is the scanner's text, "
                      "marks and the frame's geometry. Periphery blanked: everything outside the sector set to that level, so what is "
                      "left is the tissue. Blanked before the run's preprocessing (a run that crops to the sector keeps the original "
                      f"frame's crop). Rule: {RULE}."))
    if sc.get("no_sector"):
        parts.append(note(f"{sc['no_sector']} image(s) had no scan sector found: the whole frame counts as the sector "
                          "(tissue blanking blanks everything, periphery blanking nothing).", "warn"))
    if sc.get("skipped_sources"):
        parts.append(note("Sources with too few images to score on their own: "
                          + ", ".join(f"{k} ({v})" for k, v in sc["skipped_sources"].items()) + "."))
    return "".join(parts)


def _gap_rows(row: Mapping[str, Any], label: str) -> list[list[str]]:
    out = []
    for key, title in _GAP_TITLES:
        v = row.get(key)
        if isinstance(v, Mapping):
            out.append([label, title, fmt(v.get("oof")), fmt(v.get("ensemble")), f"{v['gap']:+.3f}" if v.get("gap") is not None else "—"])
            label = ""
    return out


def section_oof_vs_ensemble(run: RunData) -> str | None:
    table, protocol = run.metrics.get("ensemble_vs_oof"), run.metrics.get("oof_protocol")
    if not table and not protocol:
        return None
    parts = []
    if table:
        overall = table.get("overall") or {}
        rows = _gap_rows(overall, "all images")
        for src, r in (table.get("by_source") or {}).items():
            rows += _gap_rows({k: v for k, v in r.items() if k == "balanced_accuracy"}, f"source {src}")
        n = f"out-of-fold n = {overall.get('n_oof')}, ensemble n = {overall.get('n_ensemble')}"
        parts.append(table_html(["images", "figure", "out of fold", "fold ensemble, hold-out", "gap"], rows,
                                caption=f"The fold ensemble on the hold-out (what users run) beside the out-of-fold estimate ({n})."))
        parts.append(note("The gap is ensemble minus out-of-fold: averaging the fold models usually gains a little; "
                          "the two sets are different images, so part of the gap is sampling."))
    if protocol:
        if protocol.get("honest"):
            parts.append(note("Out of fold means out of fold: every fold model kept its last epoch (train.select last), so its "
                              "out-of-fold images chose nothing; their probabilities take temperatures fitted on the other folds."))
        else:
            parts.append(note(protocol.get("warning") or "", "warn"))
    return "".join(parts)


__all__ = ["section_shortcut", "section_oof_vs_ensemble"]
