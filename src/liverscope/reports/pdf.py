"""The one-page PDF of an exam (``liverscope records report KEY --pdf FILE``, the app's download).

Drawn with fpdf2: a maintained, pure-Python PDF writer (no system libraries, unlike WeasyPrint's
Pango/cairo; smaller than ReportLab and without its C extensions) that embeds PNGs from memory and
subsets a Unicode TrueType font, which the report needs for "≥F2". The font is DejaVu Sans from
matplotlib's own data folder (a dependency already), so nothing is downloaded and every machine draws
the same page.

What the page holds, top to bottom: the exam key and date, the decision-support notice (the app's and
the HTML report's text), the exam's answer (stage, calibrated probabilities, endpoints, how many images
agree, flagged images left out), each image's overlay (heatmap and outlines) with its class and flag,
a table of every image's numbers, the review when there is one, and the model card (training data,
held-out figures with their intervals, versions). No file name and no DICOM header value is printed:
images are named by number and digest.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from liverscope.evaluate.notices import NOT_ASSESSABLE, UNLIKE_TRAINING
from liverscope.reports.content import ExamReport, ReportImage
from liverscope.utils import atomic_path, import_optional

#: Images drawn on the page (the table lists up to :data:`MAX_ROWS`); more are counted.
MAX_PICTURES = 8
MAX_ROWS = 12
_MARGIN = 12.0
_FONT = "dejavu"


def _font_files() -> tuple[str, str]:
    import matplotlib

    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    return os.path.join(folder, "DejaVuSans.ttf"), os.path.join(folder, "DejaVuSans-Bold.ttf")


def _pct(p: float | None) -> str:
    return "" if p is None else f"{p:.1%}"


def _stage_line(report: ExamReport) -> str:
    a = report.answer
    if a.label is None:
        return f"Exam result: {NOT_ASSESSABLE} (every image is {UNLIKE_TRAINING})"
    return f"Exam result: {a.label} (calibrated probability {_pct(a.probabilities.get(a.label))})"


class _Page:
    """One A4 page drawn top to bottom; ``y`` is where the next block starts."""

    def __init__(self, report: ExamReport):
        fpdf = import_optional("fpdf", "reports", "PDF reports")
        self.pdf = fpdf.FPDF(format="A4", unit="mm")
        self.pdf.set_auto_page_break(False)  # one page: every block is sized to fit
        self.pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
        regular, bold = _font_files()
        self.pdf.add_font(_FONT, "", regular)
        self.pdf.add_font(_FONT, "B", bold)
        self.pdf.set_title(f"liverscope exam report {report.key}")
        self.pdf.set_creator(f"liverscope {report.card.reported_with}")
        self.pdf.add_page()
        self.width = self.pdf.w - 2 * _MARGIN

    def text(
        self,
        text: str,
        size: float = 9,
        bold: bool = False,
        fill: tuple[int, int, int] | None = None,
        gap: float = 1.5,
    ) -> None:
        self.pdf.set_font(_FONT, "B" if bold else "", size)
        if fill:
            self.pdf.set_fill_color(*fill)
        self.pdf.set_x(_MARGIN)
        self.pdf.multi_cell(
            self.width,
            size * 0.45,
            text,
            align="L",
            fill=bool(fill),
            padding=1.2 if fill else 0,
            new_x="LMARGIN",
            new_y="NEXT",
        )
        self.pdf.ln(gap)

    def pictures(self, images: list[ReportImage], height: float) -> None:
        shown = images[:MAX_PICTURES]
        if not shown:
            return
        per_row = min(4, len(shown))
        rows = -(-len(shown) // per_row)
        side = min((self.width - 3 * (per_row - 1)) / per_row, height / rows - 5)
        y0 = self.pdf.get_y()
        for k, im in enumerate(shown):
            x, y = _MARGIN + (k % per_row) * (side + 3), y0 + (k // per_row) * (side + 5)
            if im.overlay_png:
                self.pdf.image(io.BytesIO(im.overlay_png), x=x, y=y, w=side, h=side)
            else:
                self.pdf.set_draw_color(160, 160, 160)
                self.pdf.rect(x, y, side, side)
            self.pdf.set_font(_FONT, "", 7)
            self.pdf.set_xy(x, y + side + 0.5)
            caption = (
                f"{im.index}: {NOT_ASSESSABLE} (flagged)"
                if im.ood
                else f"{im.index}: {im.label} {_pct(im.probabilities.get(im.label))}"
            )
            self.pdf.cell(side, 3.5, caption)
        self.pdf.set_y(y0 + rows * (side + 5) + 1)
        extra = len(images) - len(shown)
        notes = sorted({im.overlay_note for im in shown if im.overlay_note})
        if extra or notes:
            self.text("; ".join(([f"{extra} more image(s) not drawn"] if extra else []) + notes), size=7)

    def table(self, header: list[str], rows: list[list[str]], widths: list[float]) -> None:
        self.pdf.set_font(_FONT, "B", 7.5)
        for h, w in zip(header, widths):
            self.pdf.cell(w, 4.2, h, border="B")
        self.pdf.ln(4.2)
        self.pdf.set_font(_FONT, "", 7.5)
        for row in rows:
            for v, w in zip(row, widths):
                self.pdf.cell(w, 4.0, v)
            self.pdf.ln(4.0)
        self.pdf.ln(1.5)


def _image_rows(report: ExamReport) -> tuple[list[str], list[list[str]]]:
    labels = report.labels
    endpoints = list(
        report.answer.endpoints or next((im.endpoints for im in report.images if im.endpoints), None) or {}
    )
    header = ["image", "class", *labels, *endpoints, "OOD", "flag"]
    rows = []
    for im in report.images[:MAX_ROWS]:
        ep = im.endpoints or {}
        rows.append(
            [
                im.name,
                im.label or "",
                *[_pct(im.probabilities.get(c)) for c in labels],
                *[_pct(ep.get(k)) for k in endpoints],
                "" if im.ood_score is None else f"{im.ood_score:.3g}",
                "not assessable" if im.ood else "",
            ]
        )
    if len(report.images) > MAX_ROWS:
        rows.append([f"... {len(report.images) - MAX_ROWS} more", *[""] * (len(header) - 1)])
    return header, rows


def _card_lines(report: ExamReport) -> list[str]:
    c = report.card
    lines = [
        f"Model: {c.architecture}, run {c.run}, model id {c.model_id}; labels {', '.join(c.labels)}; calibration {c.calibration}",
        c.trained_on,
        *c.notices,
        f"Figures on {c.figures_source}: " + ("; ".join(c.figures) if c.figures else "none"),
        f"Versions: {c.trained_with}; report by liverscope {c.reported_with}",
    ]
    return lines


def write_pdf(report: ExamReport, out: str | Path) -> Path:
    """Write the exam's one-page PDF (atomically) and return its path."""
    page = _draw(report)
    out = Path(out)
    with atomic_path(out) as tmp:
        page.pdf.output(str(tmp))
    return out


def pdf_bytes(report: ExamReport) -> bytes:
    """The exam's one-page PDF as bytes (the app's download)."""
    return bytes(_draw(report).pdf.output())


def _draw(report: ExamReport) -> _Page:
    page = _Page(report)
    a = report.answer
    page.text("liverscope — liver ultrasound exam report", size=14, bold=True, gap=0.5)
    page.text(
        f"Exam {report.key}   ·   {report.created:%Y-%m-%d %H:%M} UTC   ·   {len(report.images)} image(s)",
        size=9,
    )
    page.text(report.notice, size=8, fill=(255, 243, 205))
    page.text(_stage_line(report), size=12, bold=True, gap=0.5)
    if a.label is not None:
        probs = ", ".join(f"{c} {_pct(p)}" for c, p in a.probabilities.items())
        ends = (
            "; endpoints " + ", ".join(f"{k} {_pct(p)}" for k, p in a.endpoints.items())
            if a.endpoints
            else ""
        )
        page.text(f"Probabilities {probs}{ends}", size=9, gap=0.5)
    page.text(f"{a.agreement()}. Pooled by {a.method}.", size=8)
    if report.review:
        page.text(f"Review: {report.review}", size=9, bold=True)
    card = _card_lines(report)
    header, rows = _image_rows(report)
    reserve = 4.2 + 4.0 * len(rows) + 6 + 4.2 * sum(1 + len(line) // 120 for line in card) + 8
    page.pictures(report.images, max(30.0, page.pdf.h - _MARGIN - page.pdf.get_y() - reserve))
    middle = (page.width - 36.0 - 12.0 - 14.0 - 20.0) / (len(header) - 4)
    widths = [36.0, 12.0] + [middle] * (len(header) - 4) + [14.0, 20.0]
    page.table(header, rows, widths)
    page.text("Model card", size=10, bold=True, gap=0.5)
    for line in card:
        page.text(line, size=7.5, gap=0.6)
    return page


__all__ = ["MAX_PICTURES", "MAX_ROWS", "pdf_bytes", "write_pdf"]
