"""The report commands: ``liverscope records report KEY --pdf FILE --dicom DIR`` (a stored exam's one-page
PDF and its DICOM Secondary Captures + Structured Report) and ``liverscope pacs RUN_DIR STUDY`` (pull a
study from Orthanc, analyse it, push the report back). Registered by :mod:`liverscope.ui.cli` in two lines;
the work is :mod:`liverscope.reports` (docs/records.md, "Reports"). Heavy imports stay inside the
commands, as in cli.py, so that ``liverscope --help`` answers at once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli_options import DbOpt, echo_skipped, fail


def _echo_outputs(pdf: Optional[Path], outputs) -> None:
    if pdf is not None:
        typer.echo(f"PDF → {pdf}")
    if outputs is not None:
        refs = (
            f", referencing {len(outputs.referenced)} source instance(s) of study {outputs.study_instance_uid}"
            if outputs.referenced
            else ""
        )
        typer.echo(
            f"DICOM → {outputs.sr} (Structured Report) and {len(outputs.captures)} Secondary Capture(s){refs}"
        )


def report(
    key: str = typer.Argument(..., help="The exam's key (liverscope records list)."),
    pdf: Optional[Path] = typer.Option(None, "--pdf", help="Write the exam's one-page PDF here."),
    dicom: Optional[Path] = typer.Option(
        None,
        "--dicom",
        help="Write the DICOM Secondary Captures (one per overlay) and the Structured Report into this folder.",
    ),
    run: Optional[Path] = typer.Option(
        None,
        "--run",
        help="The run that made the analyses, to draw the overlays (default: the run directory the analyses recorded).",
    ),
    db: Optional[str] = DbOpt,
):
    """A stored exam's report: a one-page PDF (--pdf) and/or DICOM objects for a PACS (--dicom); both flags write both."""
    from liverscope.inference.predict import Predictor
    from liverscope.records import open_store
    from liverscope.records.runinfo import run_fingerprint
    from liverscope.reports.build import from_exam
    from liverscope.reports.dicom import write_dicom
    from liverscope.reports.pdf import write_pdf

    try:
        if pdf is None and dicom is None:
            raise UsageError("say what to write: --pdf FILE, --dicom DIR, or both")
        with open_store(db) as store:
            exam = store.get_exam(key)
        run_dir = run or next(
            (
                Path(a.run_dir)
                for im in exam.images
                for a in im.analyses
                if a.run_fingerprint == exam.answer.run_fingerprint and a.run_dir
            ),
            None,
        )
        predictor = None
        if run_dir is not None and run_dir.is_dir():
            predictor = Predictor.from_run(run_dir, backend="torch")
        else:
            typer.echo(
                f"the run that made exam {key}'s analyses is not at hand ({run_dir or 'not recorded'}): no overlays (give --run RUN_DIR)",
                err=True,
            )
        rep = from_exam(exam, predictor, run_fingerprint(run_dir) if predictor is not None else None)
        written = write_pdf(rep, pdf) if pdf is not None else None
        outputs = write_dicom(rep, dicom) if dicom is not None else None
    except LiverscopeError as exc:
        fail(exc)
    for im in rep.images:
        if im.overlay_note:
            typer.echo(f"{im.name}: {im.overlay_note}", err=True)
    _echo_outputs(written, outputs)


def pacs(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    study: str = typer.Argument(..., help="The study: Orthanc's study ID or its Study Instance UID."),
    url: Optional[str] = typer.Option(
        None,
        "--url",
        help="Orthanc's address (default $LIVERSCOPE_ORTHANC_URL, else http://127.0.0.1:8042); a login comes from $LIVERSCOPE_ORTHANC_USER / $LIVERSCOPE_ORTHANC_PASSWORD.",
    ),
    out: Path = typer.Option(
        Path("pacs-report"), "--out", "-o", help="Folder for the DICOM objects written (and pushed)."
    ),
    pdf: Optional[Path] = typer.Option(None, "--pdf", help="Also write the exam's one-page PDF here."),
    push: bool = typer.Option(
        True,
        "--push/--no-push",
        help="Store the Structured Report and the Secondary Captures in Orthanc (default) or only write them.",
    ),
):
    """Pull a study from an Orthanc PACS, analyse its images, and push the Structured Report and the overlays' Secondary Captures back into the study."""
    from liverscope.inference.predict import Predictor
    from liverscope.reports.pacs import round_trip
    from liverscope.reports.pdf import write_pdf

    try:
        predictor = Predictor.from_run(run_dir, backend="torch")
        result = round_trip(predictor, study, out, url, push)
        written = write_pdf(result.report, pdf) if pdf is not None else None
    except LiverscopeError as exc:
        fail(exc)
    a = result.report.answer
    typer.echo(f"exam {result.report.key}: {a.label or 'not assessable'} ({a.agreement()})")
    _echo_outputs(written, result.outputs)
    if result.pushed:
        typer.echo(f"stored {len(result.pushed)} instance(s) in Orthanc study {result.study_id}")
    echo_skipped(result.skipped)


__all__ = ["pacs", "report"]
