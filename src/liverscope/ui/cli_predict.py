"""``liverscope predict`` (registered by :mod:`liverscope.ui.cli`): score files, write CSV/JSON, and with
``--record`` keep each analysis in the exam records (``--by`` groups the files into exams and prints
each exam's one answer; docs/records.md). Like cli.py, it imports the torch side inside the command."""

from __future__ import annotations

import enum
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from liverscope.config import check_device, parse_frames
from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli_options import (
    DbOpt,
    check_conflict,
    check_out_format,
    check_processed,
    choice,
    echo_skipped,
    fail,
)
from liverscope.utils import progress


class By(str, enum.Enum):
    """``--by``: how images are grouped into exams (liverscope.records.recorder)."""

    study = "study"
    folder = "folder"
    group = "group"


RECORD_HELP = "Record every analysed image in the exam records (--db), one transaction each: a crash loses nothing recorded before it."
BY_HELP = (
    "Group the images into exams and print each exam's one answer (also FILE_exams.csv): study (DICOM StudyInstanceUID; other images alone), "
    "folder (a folder per exam, named by its key) or group (inputs are CSV manifests; their group column). Without --record, in a throwaway database."
)


def predict(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    paths: List[Path] = typer.Argument(
        ..., help="Image files, DICOM files or folders (searched recursively); CSV manifests with --by group."
    ),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="Output file: .csv or .json."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Images per forward pass (default: sized for the backend)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    backend: choice("predict.backend") = typer.Option(
        "auto",
        "--backend",
        help="auto (ONNX Runtime when RUN_DIR/model.onnx is current, else torch), torch or onnx.",
    ),
    precision: choice("predict.precision") = typer.Option(
        "auto",
        "--precision",
        help="torch backend: auto or fp32 (fp32 on every machine: the same answers everywhere), or bf16 (faster where native, checked against fp32 on the first batch; can change answers: docs/benchmarks.md).",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Decode/preprocess threads (default: CPU count)."
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        min=1,
        help="Model threads on CPU (default: torch times every core against half of them and keeps the faster; ONNX Runtime all).",
    ),
    schedule: choice("predict.schedule") = typer.Option(
        "auto",
        "--schedule",
        help="auto (torch on CPU: alternate; otherwise overlap), alternate (decode a window, then score it with every core) or overlap (decode ahead while the model scores).",
    ),
    pool: choice("predict.pool") = typer.Option(
        "thread",
        "--pool",
        help="Decode workers: thread or process (processes sidestep the GIL when denoising dominates).",
    ),
    frames: str = typer.Option(
        "middle",
        "--frames",
        help="DICOM cine loops: middle, all or every:N frames, averaged into one result per file (column frames).",
    ),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Score with RUN_DIR/model.int8.onnx (liverscope export --int8): ONNX Runtime, int8.",
    ),
    tta: choice("predict.tta") = typer.Option(
        "none",
        "--tta",
        help="Test-time augmentation: none, or flip (average each image's logits with its mirror's; twice the model time, a little more accurate: docs/benchmarks.md).",
    ),
    record: bool = typer.Option(False, "--record", help=RECORD_HELP),
    db: Optional[str] = DbOpt,
    by: Optional[By] = typer.Option(None, "--by", help=BY_HELP),
):
    """Predict the stage/class of new images; bad files are listed as skipped and the rest finish (exit 1 when none could be read)."""
    from liverscope.inference.predict import Predictor, write_results

    by = by.value if by else None
    try:
        check_out_format(out), check_device(device), parse_frames(frames)
        check_conflict(
            ("--int8", int8),
            ("--backend torch", backend.value == "torch"),
            hint="int8 scores with ONNX Runtime: --backend onnx or auto",
        )
        onnx = "--int8" if int8 else "--backend onnx" if backend.value == "onnx" else None
        check_conflict(
            ("--precision " + precision.value, precision.value != "auto"),
            (onnx, onnx is not None),
            hint="--precision sets the torch backend's number format",
        )
        if db is not None and not record:
            raise UsageError("--db names where --record writes: add --record (or leave --db out)")
        files, rows = _inputs(paths, by if by or not record else "study")
        total = count_inputs(files)  # counted, not listed: the bar knows its total
        p = Predictor.from_run(
            run_dir,
            backend=backend.value,
            int8=int8,
            device=device,
            batch_size=batch_size,
            precision=precision.value,
            workers=workers,
            threads=threads,
            schedule=schedule.value,
            pool=pool.value,
            tta=tta.value,
        )
        typer.echo(p.describe(), err=True)
        with _recording(p, record, db, by, rows) as recorder:
            results = p.predict_paths(files, frames=frames)
            summary = write_results(
                progress(recorder.wrap(results) if recorder else results, "predicting", total=total),
                p.labels,
                out,
            )
            if recorder:
                _echo_recorded(recorder, out, by, record)
    except LiverscopeError as exc:
        fail(exc)
    rate = summary["predicted"] / summary["seconds"] if summary["seconds"] > 0 else 0.0
    typer.echo(
        f"predicted {summary['predicted']} image(s) in {summary['seconds']:.1f}s ({rate:.1f} images/s, {p.backend} {p.precision}) → {summary['out']}"
    )
    if summary["flagged"]:
        typer.echo(
            f"{summary['flagged']} image(s) unlike the images this model was trained on (ood = true): do not rely on their predictions"
        )
    echo_skipped(summary["skipped"])
    check_processed(summary["predicted"], summary["skipped"], "predicted")


def _inputs(paths: List[Path], by: Optional[str]):
    """The files to predict and their manifest rows (``--by group``)."""
    if by is None:
        return paths, {}
    from liverscope.records import prediction_inputs

    return prediction_inputs(paths, by)


class _recording:
    """The recorder of ``--record`` (into ``--db``) or of ``--by`` alone (into a throwaway database); ``None`` otherwise."""

    def __init__(self, p, record: bool, db: Optional[str], by: Optional[str], rows: dict):
        self.args = p, record, db, by, rows
        self.store = self.tmp = None

    def __enter__(self):
        from liverscope.records import Recorder, open_store, run_info

        p, record, db, by, rows = self.args
        if not record and by is None:
            return None
        if not record:
            self.tmp = tempfile.TemporaryDirectory(prefix="liverscope-exams-")
            db = str(Path(self.tmp.name) / "exams.sqlite")
        self.store = open_store(db)
        if record:
            typer.echo(f"recording into {self.store.url}", err=True)
        return Recorder(self.store, run_info(p), by or "study", rows)

    def __exit__(self, *exc):
        if self.store is not None:
            self.store.close()
        if self.tmp is not None:
            self.tmp.cleanup()


def _echo_recorded(recorder, out: Path, by: Optional[str], record: bool) -> None:
    """What was recorded (with ``--record``) and each exam's answer (with ``--by``)."""
    from liverscope.records import exam_line, write_exams

    if record:
        ms = sorted(recorder.seconds)
        p95 = f", p95 {1000 * ms[int(0.95 * (len(ms) - 1))]:.1f} ms per image" if ms else ""
        typer.echo(
            f"recorded {len(ms)} analysis(es) in {len(recorder.exams)} exam(s) → {recorder.store.url}{p95}",
            err=True,
        )
    if by is not None:
        exams = recorder.answers()
        for e in exams:
            typer.echo(exam_line(e))
        typer.echo(f"exam answers → {write_exams(out, exams)}")


def count_inputs(paths: List[Path]) -> int:
    """The number of input files, counted before any work (not listed: a folder may hold millions);
    a LiverscopeError when every path is missing or no image file is found."""
    from liverscope.data.io import IMAGE_SUFFIXES, iter_image_files

    missing = [str(p) for p in paths if not p.exists()]
    if missing and len(missing) == len(paths):
        raise LiverscopeError(f"{', '.join(missing)}: does not exist (check the path)")
    total = sum(1 for _ in iter_image_files(paths))
    if total == 0:
        kinds = ", ".join(sorted(s for s in IMAGE_SUFFIXES if s)) + " or no extension (DICOM)"
        raise LiverscopeError(
            f"no image files in {', '.join(map(str, paths))} (searched recursively for {kinds}; masks/ and hidden files are skipped)"
        )
    return total
