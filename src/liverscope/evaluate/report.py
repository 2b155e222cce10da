"""The self-contained HTML report of a run directory.

:func:`write_report` reads whatever a run directory holds (``metrics.json``, ``model.json``,
``config.yaml``, ``history.csv``, ``split.csv``, ``predictions_test.csv``, ``audit.json``,
``cv_folds.csv``, ``folds/*/history.csv``, ``cam_gallery/``; see :class:`liverscope.rundir.bundle.RunData`) and
renders one ``report.html`` with a section for each kind of result that is present; every image is
embedded as base64, so the single file still works when it is mailed. Other modules add their own
sections without editing this one::

    write_report(run_dir, sections={
        "Segmentation examples": run_dir / "seg_examples.png",      # an image file
        "Notes": "<p>trained on the <b>night</b> queue</p>",         # trusted HTML
        "Timing": {"train s": 812.4, "eval s": 3.1},                 # a mapping: a table
        "Faithfulness": lambda run: build_html(run.metrics),         # a builder: RunData -> any of these
        "ROC curves": None,                                          # drop a built-in section
    })

The plots come from :mod:`.plots`, the HTML building blocks from :mod:`.html`; the classification figures
sections (plots, metrics tables, calibration, OOD flag, per-source results, CAM gallery) live in
:mod:`.report_figures`, the cross-validation, segmentation and shortcut sections in :mod:`.report_cv`,
:mod:`.report_segment` and :mod:`.report_shortcut`.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from liverscope import __version__
from liverscope.errors import LiverscopeError
from liverscope.evaluate.html import (
    IMAGE_SUFFIXES,
    fmt,
    generic_html,
    headline_cell,
    image_html,
    note,
    provenance_html,
    table_html,
)
from liverscope.evaluate.notices import DECISION_SUPPORT, PHANTOMS, is_phantoms, trained_on
from liverscope.evaluate.report_cv import section_ensemble, section_folds, section_oof_vs_ensemble
from liverscope.evaluate.report_figures import (
    section_by_source,
    section_calibration,
    section_confusion,
    section_endpoints,
    section_gallery,
    section_ood,
    section_per_class,
    section_roc,
    section_training,
)
from liverscope.evaluate.report_segment import section_segmentation
from liverscope.evaluate.report_shortcut import section_shortcut
from liverscope.rundir import CONFIG, REPORT_HTML, RUN_FILES
from liverscope.rundir.bundle import RunData
from liverscope.utils import atomic_write_text

# --------------------------------------------------------------------------------------------------
# the built-in sections: each returns HTML, or None when its data is absent
# --------------------------------------------------------------------------------------------------

_HEADLINE_ROWS = (
    ("n", "images"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
    ("macro_auc", "macro AUC (one vs rest)"),
    ("quadratic_kappa", "quadratic-weighted kappa"),
    ("ece_uncalibrated", "calibration error before temperature scaling"),
    ("ece", "expected calibration error"),
)

_EVAL_SETS = (
    ("test", "hold-out test"),
    ("oof", "out-of-fold (cross-validation)"),
    ("validation", "validation"),
)


def section_summary(run: RunData) -> str | None:
    if not run.metrics and not run.model:
        return None
    parts = []
    arch = run.model.get("architecture") or {}
    facts = [
        ("run", run.run_dir.name),
        ("model", " / ".join(str(arch[k]) for k in ("name", "head") if arch.get(k)) or None),
        ("weights", run.model.get("weights_source")),
        ("labels", ", ".join(run.class_names) or None),
        ("split", run.metrics.get("split")),
        ("evaluated on", run.metrics.get("data")),
        ("fold models in the ensemble", len(run.model["ensemble"]) if run.model.get("ensemble") else None),
        (
            "temperature",
            "none applied (the fit stopped at the edge of its range)"
            if (run.model.get("temperature_fit") or {}).get("at_edge")
            else fmt(run.temperature)
            if run.temperature
            else None,
        ),
        ("liverscope", run.model.get("liverscope_version")),
        (
            "numeric precision",
            ", ".join(
                sorted(
                    {
                        str(run.metrics[k]["precision"])
                        for k, _ in _EVAL_SETS
                        if (run.metrics.get(k) or {}).get("precision")
                    }
                )
            )
            or None,
        ),
    ]
    parts.append(table_html(None, [[k, str(v)] for k, v in facts if v not in (None, "")]))
    sets = [(key, label) for key, label in _EVAL_SETS if run.metrics.get(key)]
    if sets:
        rows = []
        for key, label in _HEADLINE_ROWS:
            if any(run.metrics[s].get(key) is not None for s, _ in sets):
                rows.append([label, *[headline_cell(run.metrics[s], key) for s, _ in sets]])
        parts.append(
            table_html(
                ["figure", *[label for _, label in sets]],
                [[html.escape(r[0]), *r[1:]] for r in rows],
                raw=True,
            )
        )
        if any(run.metrics[s].get("ci") for s, _ in sets):
            method = (
                next(
                    (run.metrics[s].get("ci_method") for s, _ in sets if run.metrics[s].get("ci_method")), {}
                )
                or {}
            )
            parts.append(
                note(
                    f"In brackets: 95% confidence intervals, percentile bootstrap over images ({method.get('n_boot', 1000)} resamples). "
                    "Images of one patient or duplicate group are not independent, so these intervals are if anything too narrow."
                )
            )
    if run.metrics.get("split") == "random":
        parts.append(
            note(
                "Random split: copies and near-copies of an image can sit in both training and test, so these figures overstate "
                "performance on new patients. Use the grouped split for honest figures.",
                "warn",
            )
        )
    if run.audit and (run.audit.get("summary") or {}).get("confounded"):
        parts.append(
            note(
                "The audit found the class predictable from the acquisition source: check the per-source results.",
                "warn",
            )
        )
    if run.metrics.get("n_skipped"):
        parts.append(note(f"{run.metrics['n_skipped']} file(s) could not be read and were left out.", "warn"))
    return "".join(parts)


def section_audit(run: RunData) -> str | None:
    if not run.audit:
        return None
    s = run.audit.get("summary") or {}
    labels = [
        ("files", "files"),
        ("distinct", "byte-distinct images"),
        ("groups", "independent groups (after merging near-duplicates)"),
        ("duplicate_files", "redundant byte-identical copies"),
        ("max_copies", "most copies of one image"),
        ("near_duplicate_files", "files in near-duplicate groups"),
        ("label_conflicts", "label conflicts"),
        ("sources", "acquisition sources"),
        ("cramers_v", "class–source association (Cramér's V)"),
        ("confounded", "class predictable from source"),
        ("unreadable", "unreadable files"),
        ("extension_mismatches", "extension does not match content"),
    ]
    parts = [table_html(None, [[label, s.get(k)] for k, label in labels if k in s])]
    for w in run.audit.get("warnings") or []:
        parts.append(note(w, "warn"))
    if not run.audit.get("warnings"):
        parts.append(note("No duplicates, label conflicts, confounding or bad files found.", "ok"))
    cont = run.audit.get("contingency") or {}
    if cont.get("table") and len(cont.get("sources") or []) > 1:
        rows = [[c, *r] for c, r in zip(cont["classes"], cont["table"])]
        parts.append(
            table_html(
                ["class \\ source", *cont["sources"]], rows, caption="Images per class and acquisition source"
            )
        )
    return "".join(parts)


def section_split(run: RunData) -> str | None:
    if not run.split:
        return None
    rows = run.split
    labels = run.class_names or sorted({r["label"] for r in rows})
    labels += sorted({r["label"] for r in rows} - set(labels))
    has_fold = "fold" in rows[0]

    def part_of(r: dict) -> str:
        if (
            has_fold
            and r.get("split") != "test"
            and str(r.get("fold", "")).lstrip("-").isdigit()
            and int(r["fold"]) >= 0
        ):
            return f"fold {r['fold']}"
        return r.get("split") or "?"

    order = {"train": 0, "val": 1, "dev": 2, "test": 9}
    parts_ = sorted({part_of(r) for r in rows}, key=lambda s: (order.get(s, 5), s))
    count: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (part_of(r), r["label"])
        count[key] = count.get(key, 0) + 1
    body = [
        [p, *[count.get((p, c), 0) for c in labels], sum(count.get((p, c), 0) for c in labels)]
        for p in parts_
    ]
    body.append(["total", *[sum(count.get((p, c), 0) for p in parts_) for c in labels], len(rows)])
    out = [table_html(["split", *labels, "total"], body, caption="Images per split and class")]
    sources = sorted({r.get("source") or "unknown" for r in rows})
    if len(sources) > 1:
        sc: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (part_of(r), r.get("source") or "unknown")
            sc[key] = sc.get(key, 0) + 1
        out.append(
            table_html(
                ["split", *sources],
                [[p, *[sc.get((p, s), 0) for s in sources]] for p in parts_],
                caption="Images per split and acquisition source",
            )
        )
    if rows and "group" in rows[0] and any(r.get("group") for r in rows):
        sides: dict[str, set] = {}
        for r in rows:
            if r.get("group"):
                sides.setdefault(r["group"], set()).add("test" if r.get("split") == "test" else part_of(r))
        straddle = sum(1 for v in sides.values() if len(v) > 1)
        n_groups = len(sides)
        if straddle:
            out.append(
                note(
                    f"{straddle} of {n_groups} duplicate/patient groups have images on more than one side of the split: "
                    "those test images have copies in training.",
                    "warn",
                )
            )
        else:
            out.append(
                note(
                    f"{n_groups} duplicate/patient groups; none has images on more than one side of the split.",
                    "ok",
                )
            )
    return "".join(out)


def section_config(run: RunData) -> str | None:
    if not run.config_text:
        return None
    return f"<details><summary>{CONFIG} (the resolved recipe of this run)</summary><pre>{html.escape(run.config_text)}</pre></details>"


#: The built-in sections in page order: (title, builder). A builder returns HTML or ``None`` (no data).
SECTIONS: tuple[tuple[str, Callable[[RunData], str | None]], ...] = (
    ("Summary", section_summary),
    ("Data audit", section_audit),
    ("Data split", section_split),
    ("Training curves", section_training),
    ("Confusion matrix", section_confusion),
    ("ROC curves", section_roc),
    ("Per-class metrics", section_per_class),
    ("Clinical endpoints", section_endpoints),
    ("Calibration", section_calibration),
    ("Out-of-distribution flag", section_ood),
    ("Results by acquisition source", section_by_source),
    ("Shortcut check", section_shortcut),
    ("Cross-validation folds", section_folds),
    ("Fold ensemble", section_ensemble),
    ("Out of fold and the fold ensemble", section_oof_vs_ensemble),
    ("Class activation maps", section_gallery),
    ("Segmentation", section_segmentation),
    ("Provenance", lambda run: provenance_html(run.model.get("provenance"))),
    ("Configuration", section_config),
)


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2330;background:#f4f6f9;margin:0;line-height:1.45;font-size:15px}
header{background:#17324d;color:#fff;padding:1.4em 2em 1.1em}
header h1{margin:0;font-size:1.6em;font-weight:600}header p{margin:.3em 0 0;color:#c9d6e3;font-size:.92em}
nav{background:#fff;border-bottom:1px solid #dde3ea;padding:.5em 2em;position:sticky;top:0;z-index:2;font-size:.88em}
nav a{color:#17324d;text-decoration:none;margin-right:1.1em;white-space:nowrap;display:inline-block}nav a:hover{text-decoration:underline}
main{max-width:1180px;margin:0 auto;padding:1em 2em 3em}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:.6em 1.5em 1.2em;margin:1.2em 0;overflow-x:auto}
h2{font-size:1.25em;color:#17324d;border-bottom:2px solid #e6ecf2;padding-bottom:.3em}h3{font-size:1.02em;color:#2b4a6b;margin-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}caption{text-align:left;font-weight:600;padding:.2em 0;color:#2b4a6b;white-space:nowrap}
table.kv tbody th{color:#4a5866}
th,td{border:1px solid #dfe5ec;padding:.3em .65em;text-align:left;vertical-align:top}
thead th{background:#eef3f8;color:#17324d}tbody tr:nth-child(even){background:#f9fbfd}tbody th{font-weight:500;background:#fbfcfe}
td.num{text-align:right;font-variant-numeric:tabular-nums}span.ci{color:#5d6b7a;font-size:.9em}
figure{margin:.8em 0;display:inline-block;vertical-align:top}figure img{max-width:100%;border:1px solid #e3e8ee;border-radius:4px;background:#fff}
figcaption{font-size:.85em;color:#5d6b7a;margin-top:.3em;max-width:60em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:.8em}.gallery figure{margin:0}
.note{color:#4a5866;font-size:.88em;margin:.4em 0}
.warn{background:#fff4e5;border-left:4px solid #e67e22;padding:.5em 1em;margin:.6em 0}
.ok{background:#eafaf1;border-left:4px solid #27ae60;padding:.5em 1em;margin:.6em 0}
header p.phantoms{background:#b03a2e;color:#fff;padding:.4em .8em;border-radius:4px;font-weight:600}b.flag{color:#b03a2e}
.notice{background:#fff4e5;border:1px solid #e67e22;border-radius:6px;padding:.6em 1.2em;margin:1.2em 0;font-size:.92em}
pre{background:#f6f8fa;border:1px solid #e3e8ee;padding:.8em;overflow-x:auto;font-size:.85em}
footer{color:#7a8794;font-size:.8em;text-align:center;padding:1em}
"""

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<header><h1>{{ title }}</h1><p>{{ subtitle }}</p><p class="trained">{{ trained_on }}</p>
{% if phantoms %}<p class="phantoms">{{ phantoms }}</p>{% endif %}</header>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
<div class="notice" id="decision-support">{{ notice }}</div>
{% for p in problems %}<div class="warn">Could not read {{ p }}</div>{% endfor %}
{% for s in sections %}
<section id="{{ s.id }}"><h2>{{ s.title }}</h2>
{{ s.html | safe }}
</section>
{% endfor %}
</main>
<footer>liverscope {{ version }} · generated {{ generated }} · self-contained: every image is embedded in this file</footer>
</body>
</html>
"""


@dataclass
class Section:
    """One rendered section of the report."""

    title: str
    html: str
    id: str


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def _render_extra(value: Any, run: RunData) -> str | None:
    """An entry of ``sections``: HTML text, an image file, bytes of a PNG, a mapping/list (a table) or a
    builder ``RunData -> any of these``."""
    if callable(value):
        value = value(run)
    if value is None:
        return None
    if isinstance(value, Path) or (
        isinstance(value, str)
        and len(value) < 4096
        and "<" not in value
        and Path(value).suffix.lower() in IMAGE_SUFFIXES
    ):
        path = Path(value)
        if not path.is_absolute() and not path.exists():
            path = run.run_dir / path
        if not path.exists():
            raise LiverscopeError(f"report section image {path} does not exist")
        return image_html(path, path.stem)
    if isinstance(value, (bytes, bytearray)):
        return image_html(bytes(value))
    if isinstance(value, str):
        return value
    return generic_html(value)


def render_report(run: RunData, sections: Mapping[str, Any] | None = None, title: str | None = None) -> str:
    """The report of ``run`` as an HTML string (see :func:`write_report`)."""
    import jinja2

    extra = dict(sections or {})
    built: list[tuple[str, str]] = []
    for name, builder in SECTIONS:
        if name in extra:
            body = _render_extra(
                extra.pop(name), run
            )  # a caller's entry replaces (or with None drops) a built-in
        else:
            try:
                body = builder(run)
            except Exception as exc:  # one failing plot must not cost the whole report
                run.problems.append(f"the data of section {name!r}: {type(exc).__name__}: {exc}")
                body = None
        if body:
            built.append((name, body))
    for name, value in extra.items():
        body = _render_extra(value, run)
        if body:
            built.append((str(name), body))
    taken: set[str] = set()
    rendered = [Section(t, b, _slug(t, taken)) for t, b in built]
    arch = (run.model.get("architecture") or {}).get("name")
    subtitle = " · ".join(x for x in (str(run.run_dir.resolve()), arch, ", ".join(run.class_names)) if x)
    env = jinja2.Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(
        title=title or f"liverscope report — {run.run_dir.resolve().name}",
        subtitle=subtitle,
        trained_on=trained_on(run.training_data),
        phantoms=PHANTOMS if is_phantoms(run.training_data) else None,
        notice=DECISION_SUPPORT,
        css=_CSS,
        sections=rendered,
        problems=run.problems,
        version=__version__,
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )


def write_report(
    run_dir: str | Path,
    sections: Mapping[str, Any] | None = None,
    *,
    title: str | None = None,
    out: str | Path | None = None,
) -> Path:
    """Write the self-contained ``report.html`` of a run directory.

    Each built-in section (:data:`SECTIONS`) appears only when its data is in the run directory: audit,
    split, training curves, confusion matrix, ROC curves, per-class table, clinical endpoints,
    calibration, per-source results, fold table, fold ensemble, CAM gallery, segmentation scores,
    configuration. The plots are also written beside it as PNGs (``curves.png``,
    ``confusion_matrix.png``, ``roc_curves.png``, ``reliability.png``).

    Args:
        run_dir: a run directory (``train``, ``cv`` or ``evaluate`` output).
        sections: extra sections, ``{title: value}`` appended in order; ``value`` is HTML text, an image
            path (relative paths are looked up in ``run_dir``), PNG bytes, a mapping or list of mappings
            (rendered as a table), or a callable ``RunData -> any of these``. A title equal to a built-in
            one replaces that section; ``None`` drops it.
        title: page title (default: the run's name).
        out: output file (default ``run_dir/report.html``); the plots are written beside it.

    Returns:
        The path of the report.

    Raises:
        LiverscopeError: ``run_dir`` is not a directory or holds none of the files of a run.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LiverscopeError(f"{run_dir}: not a directory (expected a liverscope run directory)")
    if not any((run_dir / f).exists() for f in RUN_FILES):
        # refuse rather than litter an arbitrary folder (say the repository root) with an empty page
        raise LiverscopeError(
            f"{run_dir}: none of {', '.join(RUN_FILES)} found — not a liverscope run directory"
        )
    run = RunData.load(run_dir)
    target = Path(out) if out else run_dir / REPORT_HTML
    target.parent.mkdir(parents=True, exist_ok=True)
    run.plot_dir = target.parent  # the plots go beside the report, never into a run that is only read
    text = render_report(run, sections, title)
    return atomic_write_text(target, text)


__all__ = ["write_report", "render_report", "SECTIONS"]
