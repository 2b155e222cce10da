"""The report's cross-validation sections: the fold table with the out-of-fold figures, the fold
ensemble on the hold-out beside each fold model, and (issue 23) *Out of fold and the fold ensemble*: the
ensemble on the hold-out, the product users run, beside the out-of-fold estimate with the gap, overall and
per source (``metrics.json["ensemble_vs_oof"]``), and whether the out-of-fold images chose anything
(``["oof_protocol"]``).
"""

from __future__ import annotations

import html
import math
from typing import Any, Mapping

import numpy as np

from liverscope.evaluate.html import fmt, headline_cell, key_title, note, table_html
from liverscope.rundir.bundle import RunData

_GAP_TITLES = (
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_auc", "macro AUC"),
    ("quadratic_kappa", "QW kappa"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
)


def _mean_sd(values: list[Any]) -> str:
    xs = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            xs.append(f)
    if not xs:
        return "—"
    digits = 1 if all(x.is_integer() for x in xs) else 3  # counts (n_val) need no three decimals
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.{digits}f}"


def section_folds(run: RunData) -> str | None:
    if not run.folds:
        return None
    cols = [c for c in run.folds[0] if c != "fold"]
    rows = [[f"fold {r.get('fold', i)}", *[r.get(c) for c in cols]] for i, r in enumerate(run.folds)]
    rows = [[html.escape(str(r[0])), *[html.escape(fmt(v)) for v in r[1:]]] for r in rows]
    rows.append(["<b>mean ± sd</b>", *[_mean_sd([r.get(c) for r in run.folds]) for c in cols]])
    parts = [table_html(["", *[key_title(c) for c in cols]], rows, raw=True)]
    oof = run.metrics.get("oof")
    if oof:
        parts.append(
            note(
                f"Out-of-fold (every development image scored by the fold model that did not train on it, n = {oof.get('n')}): "
                f"balanced accuracy {fmt(oof.get('balanced_accuracy'))}, macro AUC {fmt(oof.get('macro_auc'))}"
                + (
                    f", QW kappa {fmt(oof.get('quadratic_kappa'))}"
                    if oof.get("quadratic_kappa") is not None
                    else ""
                )
                + "."
            )
        )
    return "".join(parts)


def section_ensemble(run: RunData) -> str | None:
    ens = run.metrics.get("ensemble")
    if not ens:
        return None
    keys = [
        ("accuracy", "accuracy"),
        ("balanced_accuracy", "balanced acc."),
        ("macro_f1", "macro F1"),
        ("macro_auc", "macro AUC"),
        ("quadratic_kappa", "QW kappa"),
    ]
    keys = [(k, name) for k, name in keys if ens.get(k) is not None]
    rows = []
    fold_rows = run.folds or []
    for i, r in enumerate(fold_rows):
        if any(r.get(f"test_{k}") not in (None, "") for k, _ in keys):
            rows.append(
                [
                    html.escape(f"fold {r.get('fold', i)} model"),
                    *[html.escape(fmt(r.get(f"test_{k}"))) for k, _ in keys],
                ]
            )
    if rows:
        rows.append(
            ["mean of the fold models", *[_mean_sd([r.get(f"test_{k}") for r in fold_rows]) for k, _ in keys]]
        )
    rows.append(
        [f"<b>ensemble</b> (n = {ens.get('n')})", *[f"<b>{headline_cell(ens, k)}</b>" for k, _ in keys]]
    )
    return table_html(["model (hold-out test)", *[name for _, name in keys]], rows, raw=True) + note(
        "The ensemble averages the fold models' logits, then applies softmax."
    )


def _gap_rows(row: Mapping[str, Any], label: str) -> list[list[str]]:
    out = []
    for key, title in _GAP_TITLES:
        v = row.get(key)
        if isinstance(v, Mapping):
            out.append(
                [
                    label,
                    title,
                    fmt(v.get("oof")),
                    fmt(v.get("ensemble")),
                    f"{v['gap']:+.3f}" if v.get("gap") is not None else "—",
                ]
            )
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
        parts.append(
            table_html(
                ["images", "figure", "out of fold", "fold ensemble, hold-out", "gap"],
                rows,
                caption=f"The fold ensemble on the hold-out (what users run) beside the out-of-fold estimate ({n}).",
            )
        )
        parts.append(
            note(
                "The gap is ensemble minus out-of-fold: averaging the fold models usually gains a little; "
                "the two sets are different images, so part of the gap is sampling."
            )
        )
    if protocol:
        if protocol.get("honest"):
            parts.append(
                note(
                    "Out of fold means out of fold: every fold model kept its last epoch (train.select last), so its "
                    "out-of-fold images chose nothing; their probabilities take temperatures fitted on the other folds."
                )
            )
        else:
            parts.append(note(protocol.get("warning") or "", "warn"))
    return "".join(parts)


__all__ = ["section_folds", "section_ensemble", "section_oof_vs_ensemble"]
