"""The audit's outputs: a plain-text summary for the terminal, a self-contained HTML page, and
``audit.json`` + ``audit.html`` written atomically into a folder (a run directory or ``--out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liverscope.utils import atomic_write_json, atomic_write_text

AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"
#: Lists in the HTML page are cut to this many rows (the JSON keeps them all).
HTML_ROWS = 200


def format_summary(result: dict[str, Any]) -> str:
    """Plain-text summary and warnings for the terminal."""
    s = result["summary"]
    lines = [
        f"{s['files']} files, {s['distinct']} byte-distinct, {s['groups']} groups after merging near-duplicates "
        f"(dHash radius {s['near_threshold']}), {s['label_conflicts']} label conflicts, {s['sources']} sources"
        + (f" (Cramer's V {s['cramers_v']:.2f})" if s["cramers_v"] is not None else "")
        + f", {s['unreadable']} unreadable, {s['extension_mismatches']} extension mismatches ({s['seconds']:.1f} s)",
    ]
    lines += [f"WARNING: {w}" for w in result["warnings"]]
    if not result["warnings"]:
        lines.append("No duplicates, conflicts, confounding or bad files found.")
    return "\n".join(lines)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>liverscope audit</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.warn{background:#fff4e5;border-left:4px solid #e67e22;padding:.5em 1em;margin:.5em 0}
.ok{background:#eafaf1;border-left:4px solid #27ae60;padding:.5em 1em}td.num{text-align:right}code{font-size:90%}
</style></head><body>
<h1>Data audit</h1>
<table>{% for k, v in summary.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Warnings</h2>
{% for w in warnings %}<div class="warn">{{ w }}</div>{% else %}<div class="ok">No duplicates, conflicts, confounding or bad files found.</div>{% endfor %}
<h2>Class &times; source</h2>
<table><tr><th>class</th>{% for s in cont.sources %}<th>{{ s }}</th>{% endfor %}</tr>
{% for c in cont.classes %}<tr><th>{{ c }}</th>{% for n in cont.table[loop.index0] %}<td class="num">{{ n }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% if conflicts %}<h2>Label conflicts</h2><table><tr><th>group</th><th>kind</th><th>files by label</th></tr>
{% for c in conflicts[:rows] %}<tr><td>{{ c.group_id }}</td><td>{{ c.kind }}</td><td>{% for lab, ps in c.labels.items() %}<b>{{ lab }}</b>: {{ ps|join(', ') }}<br>{% endfor %}</td></tr>{% endfor %}</table>{% endif %}
{% if exact %}<h2>Byte-identical copies ({{ exact|length }} sets{% if exact|length > rows %}, first {{ rows }}{% endif %})</h2>
<table><tr><th>copies</th><th>labels</th><th>files</th></tr>{% for e in exact[:rows] %}<tr><td class="num">{{ e.count }}</td><td>{{ e.labels|join(', ') }}</td><td><code>{{ e.paths|join(', ') }}</code></td></tr>{% endfor %}</table>{% endif %}
{% if near %}<h2>Near-duplicate groups ({{ near|length }}{% if near|length > rows %}, first {{ rows }}{% endif %})</h2>
<table><tr><th>group</th><th>distinct images</th><th>labels</th><th>files</th></tr>{% for e in near[:rows] %}<tr><td>{{ e.group_id }}</td><td class="num">{{ e.distinct }}</td><td>{{ e.labels|join(', ') }}</td><td><code>{{ e.paths|join(', ') }}</code></td></tr>{% endfor %}</table>{% endif %}
{% if unreadable %}<h2>Unreadable files</h2><table><tr><th>file</th><th>reason</th></tr>{% for e in unreadable[:rows] %}<tr><td><code>{{ e.path }}</code></td><td>{{ e.reason }}</td></tr>{% endfor %}</table>{% endif %}
{% if mismatches %}<h2>Extension does not match content ({{ mismatches|length }})</h2><table><tr><th>file</th><th>content</th></tr>{% for e in mismatches[:rows] %}<tr><td><code>{{ e.path }}</code></td><td>{{ e.format }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Sources</h2><table><tr><th>source</th><th>files</th><th>classes</th><th>sizes</th><th>formats</th></tr>
{% for name, s in sources.items() %}<tr><td>{{ name }}</td><td class="num">{{ s.files }}</td><td>{{ s.classes }}</td><td>{{ s.sizes }}</td><td>{{ s.formats }}</td></tr>{% endfor %}</table>
</body></html>
"""


def render_html(result: dict[str, Any]) -> str:
    """The audit as one self-contained HTML page."""
    import jinja2

    env = jinja2.Environment(autoescape=True)
    return env.from_string(_HTML).render(
        summary=result["summary"],
        warnings=result["warnings"],
        cont=result["contingency"],
        conflicts=result["label_conflicts"],
        exact=result["exact_duplicates"],
        near=result["near_duplicates"],
        unreadable=result["unreadable"],
        mismatches=result["extension_mismatches"],
        sources=result["sources"],
        rows=HTML_ROWS,
    )


def write_audit(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir`` (atomically).

    Returns:
        ``(json_path, html_path)``.
    """
    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / AUDIT_JSON, result)
    html_path = atomic_write_text(out_dir / AUDIT_HTML, render_html(result))
    return json_path, html_path


__all__ = ["AUDIT_JSON", "AUDIT_HTML", "format_summary", "render_html", "write_audit"]
