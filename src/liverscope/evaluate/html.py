"""HTML building blocks of the report, public so other modules build their report sections with them.

Numbers formatted for a table (:func:`fmt`, :func:`fmt_ci`), tables (:func:`table_html`), images
embedded as base64 data URIs (:func:`image_html`), any JSON-like value (:func:`generic_html`), notes
(:func:`note`) and the provenance table of a model (:func:`provenance_html`). Everything is escaped unless a function says it takes HTML.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from liverscope.rundir import SPLIT

IMAGE_SUFFIXES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: floats to ``digits`` decimals, ints as they are, ``None``/NaN as an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "—" if not math.isfinite(value) else f"{value:.{digits}f}"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if f.is_integer() and str(value).strip().lstrip("-").isdigit():
        return str(int(f))
    return "—" if not math.isfinite(f) else f"{f:.{digits}f}"


def key_title(key: Any) -> str:
    """A data key as a column title: ``val_balanced_accuracy`` -> ``val balanced accuracy``."""
    return str(key).replace("_", " ")


def fmt_ci(value: Any, ci: Sequence[float] | None, digits: int = 3) -> str:
    """``0.812 (0.781–0.840)``: a value and its 95% interval."""
    if ci is None or value is None or any(v is None for v in ci):
        return fmt(value, digits)
    return f"{fmt(value, digits)} <span class=ci>({fmt(ci[0], digits)}–{fmt(ci[1], digits)})</span>"


def headline_cell(metrics: Mapping[str, Any], key: str) -> str:
    """A figure of a metrics dict with its 95% interval (``metrics["ci"][key]["ci95"]``) when it has one (HTML)."""
    ci = (metrics.get("ci") or {}).get(key) or {}
    return fmt_ci(metrics.get(key), ci.get("ci95"))


def table_html(
    header: Sequence[str] | None,
    rows: Sequence[Sequence[Any]],
    *,
    raw: bool = False,
    first_col_header: bool = True,
    caption: str | None = None,
) -> str:
    """An HTML table; cells are escaped and numbers formatted unless ``raw`` (cells already HTML).

    Args:
        header: column titles, or ``None`` for a key/value table without a header row.
        rows: the cells, row by row.
        raw: the cells are HTML already (escape them yourself).
        first_col_header: render the first cell of each row as a row header.
        caption: a title above the table.
    """
    out = ['<table class="kv">' if header is None else "<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    if header is not None:
        out.append(
            "<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead>"
        )
    out.append("<tbody>")
    for row in rows:
        cells = []
        for j, v in enumerate(row):
            text = str(v) if raw else (html.escape(fmt(v)) if not isinstance(v, str) else html.escape(v))
            numeric = not isinstance(v, str) or raw
            tag = "th" if j == 0 and first_col_header else "td"
            cls = ' class="num"' if numeric and tag == "td" else ""
            cells.append(f"<{tag}{cls}>{text}</{tag}>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def image_html(
    image: str | Path | bytes,
    alt: str = "",
    caption: str | None = None,
    mime: str = "image/png",
    width: str | None = None,
    caption_html: str | None = None,
) -> str:
    """An image embedded as a base64 data URI (no reference to a local file), in a ``<figure>``; its
    caption is ``caption`` (text, escaped) or ``caption_html`` (HTML, escape it yourself)."""
    if isinstance(image, (str, Path)):
        p = Path(image)
        mime = IMAGE_SUFFIXES.get(p.suffix.lower(), mime)
        data = p.read_bytes()
    else:
        data = bytes(image)
    b64 = base64.b64encode(data).decode("ascii")
    style = f' style="max-width:{html.escape(width)}"' if width else ""
    cap = (
        f"<figcaption>{caption_html if caption_html is not None else html.escape(caption)}</figcaption>"
        if caption or caption_html
        else ""
    )
    return f'<figure><img src="data:{mime};base64,{b64}" alt="{html.escape(alt)}"{style}>{cap}</figure>'


def generic_html(obj: Any) -> str:
    """Any JSON-like value as HTML: a mapping of mappings as a table (rows x keys), a flat mapping as a
    two-column table, a list of mappings as a table, anything else as preformatted text."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Mapping) for v in obj.values()):
        cols: list[str] = []
        for v in obj.values():
            cols += [c for c in v if c not in cols and not isinstance(v[c], (Mapping, list))]
        if cols:
            return table_html(
                ["", *[key_title(c) for c in cols]],
                [[str(k), *[v.get(c) for c in cols]] for k, v in obj.items()],
            )
    if isinstance(obj, Mapping) and obj and all(not isinstance(v, (Mapping, list)) for v in obj.values()):
        return table_html(None, [[key_title(k), v] for k, v in obj.items()])
    if isinstance(obj, list) and obj and all(isinstance(r, Mapping) for r in obj):
        cols = []
        for r in obj:
            cols += [c for c in r if c not in cols]
        return table_html(
            [key_title(c) for c in cols], [[r.get(c) for c in cols] for r in obj], first_col_header=False
        )
    return f"<pre>{html.escape(json.dumps(obj, indent=2, ensure_ascii=False, default=str))}</pre>"


def note(text: str, kind: str = "note") -> str:
    """A short paragraph of plain text; ``kind`` ``warn`` or ``ok`` colours it as a warning or an all-clear."""
    return f'<div class="{kind}">{html.escape(text)}</div>'


def provenance_html(prov: Mapping[str, Any] | None) -> str | None:
    """The ``provenance`` of a ``model.json`` (:func:`liverscope.training.provenance.collect_provenance`) as a
    table: versions, seed, git commit, command line, data fingerprint, time; ``None`` without one."""
    if not prov:
        return None
    git = prov.get("git")
    if git:
        commit = f"{git.get('commit')}" + (" (with uncommitted changes)" if git.get("dirty") else "")
    else:
        commit = "not run from a git checkout"
    command = prov.get("command")
    rows = [[f"{name} version", v or "not installed"] for name, v in (prov.get("versions") or {}).items()]
    rows += [
        ["seed", str(prov.get("seed"))],
        ["git commit", commit],
        [
            "command",
            shlex.join(str(a) for a in command) if isinstance(command, list) else str(command or "—"),
        ],
        [f"{SPLIT} SHA-256", str(prov.get("split_sha256") or "—")],
        ["created", str(prov.get("created") or "—")],
    ]
    return table_html(None, rows) + note(
        f"The {SPLIT} fingerprint names the exact images, labels and splits this model was trained and scored on."
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "fmt",
    "fmt_ci",
    "key_title",
    "table_html",
    "image_html",
    "generic_html",
    "note",
    "provenance_html",
]
