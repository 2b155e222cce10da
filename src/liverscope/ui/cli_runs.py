"""The commands on a trained run: ``liverscope evaluate`` (metrics, report.html, ``--compare``),
``explain`` (CAMs), ``export`` (ONNX, ``--int8``) and ``serve`` (the Streamlit app, ui/app.py).
Registered by :mod:`liverscope.ui.cli` with ``app.command()(fn)``, in the order ``liverscope --help``
lists them. Like cli.py, it imports the torch side inside the commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from liverscope.config import check_device
from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli_options import (
    LAYERS_HELP,
    DbOpt,
    as_usage,
    check_conflict,
    check_processed,
    choice,
    echo_skipped,
    fail,
)
from liverscope.ui.cli_predict import count_inputs


def evaluate(
    run_dir: Path = typer.Argument(
        ..., help="A trained run directory (train or cv); only read unless --in-run."
    ),
    data: Optional[Path] = typer.Argument(
        None, help="Labelled folder or manifest to score; omit to rebuild the run's own report."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder (default: eval/RUN_NAME/DATA_NAME, or eval/RUN_NAME/report for the run's own report).",
    ),
    in_run: bool = typer.Option(
        False,
        "--in-run",
        help="Write into the run directory instead: RUN_DIR/eval/NAME, or RUN_DIR/report.html.",
    ),
    name: Optional[str] = typer.Option(
        None,
        "--name",
        help="With --in-run: the sub-folder under RUN_DIR/eval/ (default: the data folder's name).",
    ),
    compare: Optional[Path] = typer.Option(
        None, "--compare", help="Another cv run: paired t-test of fold-wise scores."
    ),
    metric: str = typer.Option("balanced_accuracy", "--metric", help="Fold-wise metric for --compare."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    tta: choice("predict.tta") = typer.Option(
        "none",
        "--tta",
        help="With DATA: none, or flip (score each image averaged with its mirror, as predict --tta flip).",
    ),
    ablation: Optional[List[str]] = typer.Option(
        None,
        "--ablation",
        help="With DATA, the shortcut check: re-score with the scan sector's tissue and/or periphery blanked (tissue, periphery; repeatable or a comma list).",
    ),
):
    """Evaluate a run: metrics with CIs, per-source table, calibration and report.html (written outside the run unless --in-run)."""
    from liverscope import rundir
    from liverscope.evaluate.report import write_report
    from liverscope.training.external import evaluate_on_data

    try:
        check_device(device)
        check_conflict(("--out", out is not None), ("--in-run", in_run), hint="choose where the results go")
        if data is None and ablation:
            raise UsageError(
                "--ablation re-scores the images of DATA: give DATA (labelled images the model did not train on)"
            )
        if tta.value != "none" and data is None:
            raise UsageError(
                f"--tta {tta.value} scores the images of DATA; without DATA the run's own report is rebuilt from its stored predictions: give DATA or drop --tta"
            )
        run_name = run_dir.resolve().name
        if data is not None:
            if out is None and not in_run:
                out = Path("eval") / run_name / (name or data.resolve().stem)
            out = evaluate_on_data(run_dir, data, name, device, out=out, tta=tta.value, ablation=ablation)
            report = out / rundir.REPORT_HTML
        else:
            if not (run_dir / rundir.METRICS).exists():
                raise LiverscopeError(f"{run_dir}: no {rundir.METRICS} — not a trained run directory")
            report = (
                run_dir / rundir.REPORT_HTML
                if in_run
                else (out or Path("eval") / run_name / "report") / rundir.REPORT_HTML
            )
            write_report(run_dir, out=report)
            out = run_dir
        if compare is not None:
            _compare_runs(run_dir, compare, metric)
    except LiverscopeError as exc:
        fail(exc)
    t = rundir.read_metrics(out).get("test") or {}
    if t:
        typer.echo(
            f"accuracy {t['accuracy']:.3f}, balanced accuracy {t['balanced_accuracy']:.3f}, macro F1 {t['macro_f1']:.3f}, macro AUC {t.get('macro_auc') or float('nan'):.3f}"
        )
    sc = rundir.read_metrics(out).get("shortcut") or {}
    if sc:
        skills = ", ".join(
            f"{c} {(sc['overall'].get(c) or {}).get('skill', float('nan')):+.3f}"
            for c in ("plain", *sc["regions"])
        )
        typer.echo(f"shortcut check, skill above chance: {skills}: {sc['message']}")
    typer.echo(f"→ {report}")


def _compare_runs(a: Path, b: Path, metric: str) -> None:
    from liverscope import rundir
    from liverscope.evaluate.stats import paired_ttest

    sa, sb = rundir.fold_scores(a, metric), rundir.fold_scores(b, metric)
    if len(sa) != len(sb):
        raise LiverscopeError(
            f"fold counts differ ({len(sa)} vs {len(sb)}): compare runs with the same folds"
        )
    r = paired_ttest(sa, sb)
    typer.echo(
        f"paired t-test on fold-wise {metric} ({a.name} − {b.name}, n={r['n']}): mean difference {r['mean_diff']:+.4f}, "
        f"95% CI [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}], t={r['t']:.3f}, p={r['p']:.4f}"
    )


def explain(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    paths: List[Path] = typer.Argument(
        ..., help="Image files, DICOM files or folders (searched recursively)."
    ),
    method: str = typer.Option(
        "gradcam", "--method", help="CAM method: gradcam, gradcam++, hirescam, eigencam or layercam."
    ),
    class_label: Optional[str] = typer.Option(
        None, "--class", help="Explain this class (a label of the run) instead of the predicted one."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder (default: explain/RUN_NAME in the current folder; never inside RUN_DIR unless you name it).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per CAM batch."),
    flip_average: bool = typer.Option(
        False, "--flip-average", help="Average each map with the map of the horizontally flipped image."
    ),
    faithfulness: bool = typer.Option(
        False,
        "--faithfulness",
        help="Also score each map: deletion AUC and ROAD (slower: many forward passes per image).",
    ),
    sector: bool = typer.Option(
        True,
        "--sector/--no-sector",
        help="Restrict maps to the scan sector (text and borders outside the fan are not tissue).",
    ),
    full_size: bool = typer.Option(
        False,
        "--full-size",
        help="Draw overlays at the original size however large (default: at most 2048 px on the longer side).",
    ),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
):
    """Class activation maps: heatmap and overlay PNGs, raw maps (.npy) and cams.csv; bad files are skipped and listed (exit 1 when none could be read)."""
    from liverscope import rundir
    from liverscope.explain.cams import method_key
    from liverscope.explain.files import ExplainOptions, explain_paths

    try:
        check_device(device)
        method = as_usage(method_key, method)
        labels = rundir.read_model_meta(run_dir)["labels"]
        if class_label is not None and class_label not in labels:
            raise UsageError(f"--class {class_label}: not a label of {run_dir} (labels: {', '.join(labels)})")
        count_inputs(paths)
        summary = explain_paths(
            run_dir,
            paths,
            out_dir=out or Path("explain") / run_dir.resolve().name,
            options=ExplainOptions(
                method=method,
                class_label=class_label,
                batch_size=batch_size,
                flip_average=flip_average,
                with_faithfulness=faithfulness,
                restrict_to_sector=sector,
                layers=layers,
                **({"overlay_side": None} if full_size else {}),
            ),
            device=device,
        )
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(
        f"explained {summary['explained']} image(s) with {summary['method']} in {summary['seconds']:.1f}s → {summary['out']}"
    )
    for key, value in summary.get("means", {}).items():
        label = MEAN_LABELS.get(key, key.replace("_", " "))
        typer.echo(f"  mean {label}: {value:.4f}")
    echo_skipped(summary["skipped"])
    check_processed(summary["explained"], summary["skipped"], "explained")


def export(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    atol: float = typer.Option(
        1e-3, "--atol", help="Largest accepted |logit difference| between ONNX Runtime and torch."
    ),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Also write RUN_DIR/model.int8.onnx: static int8 quantisation calibrated on the run's validation images, reported against fp32 on its test images.",
    ),
    calibration: int = typer.Option(
        128, "--calibration", min=1, help="--int8: largest number of validation images to calibrate on."
    ),
    sensitive: int = typer.Option(
        0,
        "--int8-sensitive",
        min=0,
        help="--int8: keep this many more convolutions in fp32, those int8 damages most (measured).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="--int8: write the int8 model even when it does not keep the labels (agreement < 0.99 or balanced accuracy 0.005 below fp32).",
    ),
):
    """Export RUN_DIR/model.onnx (dynamic batch) and verify it against the torch model; --int8 adds a quantised model, only if it keeps the labels."""
    from liverscope.inference.export import export_onnx
    from liverscope.inference.quantize import export_int8

    try:
        info = export_onnx(run_dir, opset=opset, atol=atol)
        q = export_int8(run_dir, calibration=calibration, sensitive=sensitive, force=force) if int8 else None
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(
        f"wrote {run_dir / info['file']} ({info['bytes'] / 2**20:.1f} MB, opset {info['opset']}, input {info['input_shape']})"
    )
    typer.echo(
        f"verified against torch on batches {info['checked_batches']}: max |logit difference| {info['max_abs_logit_diff']:.2e} (limit {info['atol']:.0e})"
    )
    typer.echo(
        "`liverscope predict` and `liverscope serve` now time ONNX Runtime against torch on this machine and use the faster (--backend to choose)"
    )
    if q:
        typer.echo(
            f"wrote {run_dir / q['file']} ({q['bytes'] / 2**20:.1f} MB, calibrated on {q['calibration_images']} validation images); "
            f"on {q['n']} {q['compared_on']} images: label agreement with fp32 {q['label_agreement']:.3f}, max probability difference "
            f"{q['max_prob_diff']:.3f}, balanced accuracy {q['balanced_accuracy_int8']:.3f} (fp32 {q['balanced_accuracy_fp32']:.3f})"
        )
        if q["forced"]:
            typer.secho(
                "WARNING: this int8 model does not keep the fp32 labels (written because of --force); predict uses it only with --int8",
                fg=typer.colors.YELLOW,
                err=True,
            )


def serve(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to bind. Anything but localhost exposes the app, which has NO authentication.",
    ),
    port: int = typer.Option(8501, "--port", help="Port."),
    backend: choice("predict.backend") = typer.Option("auto", "--backend", help="auto, torch or onnx."),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", help="Largest accepted upload in MB."),
    int8: bool = typer.Option(
        False, "--int8", help="Score with RUN_DIR/model.int8.onnx (liverscope export --int8)."
    ),
    tta: choice("predict.tta") = typer.Option(
        "none", "--tta", help="Test-time augmentation: none, or flip (each image averaged with its mirror)."
    ),
    db: Optional[str] = DbOpt,
    record: bool = typer.Option(
        True,
        "--record/--no-record",
        help="Record every analysis in the exam records (--db; docs/records.md).",
    ),
):
    """Start the clinician web app (Streamlit) for a run."""
    from liverscope import rundir

    try:
        if max_upload_mb < 1:
            raise UsageError(
                f"--max-upload-mb {max_upload_mb}: the upload limit is a whole number of MB, at least 1 (default 50)"
            )
        check_conflict(
            ("--int8", int8),
            ("--backend torch", backend.value == "torch"),
            hint="int8 scores with ONNX Runtime: --backend onnx or auto",
        )
        rundir.read_model_meta(run_dir)
    except (LiverscopeError, ValueError) as exc:
        fail(exc)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(
            f"warning: binding to {host}: the app has no authentication — anyone who can reach {host}:{port} can upload "
            "images and read results. Put it behind the hospital's authenticating reverse proxy (HTTPS + login).",
            fg=typer.colors.YELLOW,
            err=True,
        )
    app_path = Path(__file__).with_name("app.py")
    env = dict(
        os.environ,
        LIVERSCOPE_RUN_DIR=str(run_dir.resolve()),
        LIVERSCOPE_BACKEND=backend.value,
        LIVERSCOPE_INT8="1" if int8 else "0",
        LIVERSCOPE_TTA=tta.value,
        LIVERSCOPE_MAX_UPLOAD_MB=str(max_upload_mb),
        LIVERSCOPE_RECORD="1" if record else "0",
        **({"LIVERSCOPE_DB": db} if db else {}),
    )
    # flags outrank Streamlit's config files and STREAMLIT_* variables: the server refuses larger uploads (413), XSRF stays on
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(max_upload_mb),
        "--server.enableXsrfProtection",
        "true",
        "--server.enableCORS",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    typer.echo(f"liverscope app for {run_dir} on http://{host}:{port} (Ctrl-C stops it)", err=True)
    if os.name == "posix":
        sys.stdout.flush(), sys.stderr.flush()
        os.execve(
            sys.executable, cmd, env
        )  # become the server: one process to stop, signals go straight to it
    raise typer.Exit(subprocess.call(cmd, env=env))


#: How ``explain`` names a mean it prints where the key alone would mislead.
MEAN_LABELS = {
    "energy_outside_sector": "share of the unrestricted map's energy outside the scan sector (the saved maps are cut to it with --sector)",
}
