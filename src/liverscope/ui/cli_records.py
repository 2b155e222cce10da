"""``liverscope records``: the exam records from the command line (list, show, review, export;
docs/records.md). Registered by :mod:`liverscope.ui.cli` with ``app.add_typer(records_app, name="records")``;
other record commands (the reports') register on :data:`records_app` the same way. Every command takes
``--db``. The store is imported inside the commands, as cli.py does, so ``--help`` loads no SQLAlchemy."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli_options import DbOpt, echo_skipped, fail

records_app = typer.Typer(
    help="Exam records: every recorded analysis, one answer per exam, clinician reviews, a manifest of reviewed cases for training.",
    no_args_is_help=True,
)
DATE = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]


def _store(db: Optional[str]):
    from liverscope.records import open_store

    return open_store(db)


def _utc(t: Optional[datetime]) -> Optional[datetime]:
    return None if t is None else t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def _answer(exam) -> str:
    a = exam.answer
    if a.label is None:
        return "not assessable (all flagged)" if a.n_images else "no analysis"
    return f"{a.label} {a.probabilities[a.label]:.2f} ({a.n_agree}/{a.n_used} agree{f', {a.n_flagged} flagged' if a.n_flagged else ''})"


@records_app.command("list")
def list_cmd(
    db: Optional[str] = DbOpt,
    search: Optional[str] = typer.Option(
        None, "--search", "-s", help="Part of the exam key (or patient pseudonym)."
    ),
    since: Optional[datetime] = typer.Option(
        None, "--since", formats=DATE, help="Exams created on or after this date (UTC)."
    ),
    until: Optional[datetime] = typer.Option(
        None, "--until", formats=DATE, help="Exams created before this date (UTC)."
    ),
    flagged: Optional[bool] = typer.Option(
        None,
        "--flagged/--not-flagged",
        help="Only exams with (without) an image flagged as unlike the training data.",
    ),
    disagreement: Optional[bool] = typer.Option(
        None,
        "--disagreement/--agreement",
        help="Only exams whose review or images disagree with the answer (or not).",
    ),
    reviewed: Optional[bool] = typer.Option(
        None, "--reviewed/--unreviewed", help="Only reviewed (unreviewed) exams."
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many exams, newest first."),
):
    """List exams, newest first: key, date, images, the exam's answer, the review."""
    try:
        with _store(db) as store:
            exams = store.find_exams(search, _utc(since), _utc(until), flagged, disagreement, reviewed, limit)
            url = store.url
    except LiverscopeError as exc:
        fail(exc)
    if not exams:
        typer.echo(
            f"no exams in {url}"
            + (
                " match"
                if any(v is not None for v in (search, since, until, flagged, disagreement, reviewed))
                else ""
            )
        )
        return
    typer.echo("exam\tcreated\timages\tanswer\treview")
    for e in exams:
        review = f"{e.review.verdict} {e.review.label}" if e.review else "-"
        typer.echo(f"{e.key}\t{e.created_at:%Y-%m-%d %H:%M}\t{len(e.images)}\t{_answer(e)}\t{review}")


@records_app.command("show")
def show_cmd(key: str = typer.Argument(..., help="The exam key."), db: Optional[str] = DbOpt):
    """One exam: its answer with every probability, each image's latest analysis, the reviews."""
    try:
        with _store(db) as store:
            e = store.get_exam(key)
    except LiverscopeError as exc:
        fail(exc)
    a = e.answer
    typer.echo(
        f"exam {e.key} ({e.key_source}{', patient ' + e.patient if e.patient else ''}), created {e.created_at:%Y-%m-%d %H:%M} UTC"
    )
    typer.echo(
        f"answer: {_answer(e)}"
        + (f", spread {a.spread:.3f}" if a.spread is not None else "")
        + (f" — model {a.model_id}" if a.model_id else "")
    )
    if a.probabilities:
        typer.echo("  " + "  ".join(f"{c} {p:.3f}" for c, p in a.probabilities.items()))
    if a.endpoints:
        typer.echo("  " + "  ".join(f"P({k}) {p:.3f}" for k, p in a.endpoints.items()))
    typer.echo(f"  ({a.method})")
    for im in e.images:
        x = im.latest
        flag = " FLAGGED (unlike the training data)" if x and x.ood else ""
        said = (
            f"{x.label} {x.probabilities[x.label]:.3f}{flag}, {len(im.analyses)} analysis(es), last {x.created_at:%Y-%m-%d %H:%M} by {x.model_id}"
            if x
            else "no analysis"
        )
        typer.echo(f"image {im.name} sha256 {im.sha256[:12]} {im.size} bytes: {said}")
    for r in e.reviews:
        note = f" — {r.note}" if r.note else ""
        typer.echo(
            f"review {r.created_at:%Y-%m-%d %H:%M} {r.reviewer or ''}: {r.verdict} {r.label} (answer was {r.answer_label}){note}"
        )


@records_app.command("review")
def review_cmd(
    key: str = typer.Argument(..., help="The exam key."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="The right label (a correction)."),
    agree: bool = typer.Option(False, "--agree", help="The exam's answer is right."),
    note: Optional[str] = typer.Option(None, "--note", help="Free text kept with the review."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Who reviews (default: the login name)."),
    db: Optional[str] = DbOpt,
):
    """Review an exam: --agree, or --label L; stored beside the analyses, never changing them."""
    if agree == (label is not None):
        fail(
            UsageError(
                "give either --agree (the exam's answer is right) or --label L (the right label), not both or neither"
            )
        )
    try:
        with _store(db) as store:
            r = store.review(key, label, agree, note, reviewer)
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(f"exam {key}: {r.verdict} — reviewed label {r.label} (answer {r.answer_label})")


@records_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="The manifest to write (path,label,group,source)."),
    db: Optional[str] = DbOpt,
):
    """Write the images of reviewed exams with their reviewed labels: a manifest train/cv read as it is."""
    from liverscope.records import export_manifest

    try:
        with _store(db) as store:
            summary = export_manifest(store, out)
    except LiverscopeError as exc:
        fail(exc)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["labels"].items()))
    typer.echo(
        f"exported {summary['images']} image(s) of {summary['exams']} reviewed exam(s) ({counts or 'none'}) → {summary['out']}"
    )
    echo_skipped(summary["skipped"])
