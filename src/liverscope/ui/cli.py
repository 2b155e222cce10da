"""The ``liverscope`` command line (Typer).

Commands import the torch-side parts of liverscope (training, prediction, CAMs, segmentation: torch,
Lightning, timm, MONAI) inside their bodies: ``liverscope --help`` and a mistyped command answer in a
fraction of a second instead of the seconds those libraries take to load. Everything else is imported
at the top.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

from liverscope.config import check_device, load_config
from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli_options import (
    LAYERS_HELP,
    RECIPES_HELP,
    DbOpt,
    EngineOpt,
    NnunetTrainerOpt,
    RecipeOpt,
    as_usage,
    check_choice,
    check_conflict,
    check_processed,
    choice,
    echo_skipped,
    fail,
    numbers,
    recipe_options,
    show_version,
    train_overrides,
)
from liverscope.ui.cli_predict import count_inputs, predict
from liverscope.ui.cli_records import records_app
from liverscope.ui.cli_reports import pacs, report
from liverscope.utils import configure_logging, set_progress

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main_options(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Warnings and results only: no progress messages or bars."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages."),
):
    """liverscope — liver ultrasound fibrosis staging / disease classification with explanations,
    weakly supervised segmentation and leakage-safe evaluation.

    Exit codes (the README's table): 0 success, 1 a failure while running (also: nothing to process, every
    input failed), 2 a usage error (before any work starts).
    """
    configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    set_progress(not quiet)


@app.command("train")
@recipe_options
def train_cmd(
    data: Path = typer.Argument(
        ..., help="Class-per-folder tree or CSV manifest (path,label[,group][,source])."
    ),
    recipe: Optional[str] = RecipeOpt,
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run (same --name) from its last checkpoint."
    ),
    overrides: Optional[dict] = None,
):
    """Train a classifier on a labelled folder or manifest; writes runs/NAME/.

    One device by default; --devices N --strategy ddp trains on N GPUs (or CPU processes), --num-nodes
    on several machines, and the same command runs under torchrun or srun (docs/scaling.md)."""
    from liverscope.training.lightning_module import global_rank
    from liverscope.training.run import fit

    try:
        cfg = _checked_config(recipe, overrides)
        run_dir = fit(cfg, resume=resume)
    except LiverscopeError as exc:
        fail(exc)
    if global_rank() == 0:  # the other processes of a distributed run say nothing
        _print_run_summary(run_dir)


def _checked_config(recipe: Optional[str], overrides: Optional[dict]):
    """The resolved configuration, with the model name checked against the registry before any work
    (the audit and the preprocessing cache take minutes on a large set)."""
    from liverscope.models import is_model, list_models

    cfg = load_config(recipe, overrides)
    if not is_model(cfg.model.name):
        raise UsageError(
            f"model '{cfg.model.name}' is not registered; choose one of: {', '.join(list_models())} (`liverscope models` describes them)"
        )
    return cfg


def _print_run_summary(run_dir: Path) -> None:
    from liverscope import rundir

    test = rundir.read_metrics(run_dir).get("test") or {}
    if test:
        typer.echo(
            f"test: accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}, n={test.get('n', '?')}"
        )
    typer.echo(f"run directory: {run_dir}")
    for f in rundir.SUMMARY_FILES:
        if (run_dir / f).exists():
            typer.echo(f"  {run_dir / f}")


app.command()(predict)


@app.command("models")
def models_cmd():
    """List the registered model names."""
    from liverscope.models import get_spec, list_models

    names = list_models()
    width = max(map(len, names))
    for name in names:
        spec = get_spec(name)
        typer.echo(f"{name:{width}s}  {spec.description}{'  [CPU-friendly]' if spec.small else ''}")


@app.command()
def demo(
    data: Optional[Path] = typer.Option(
        None, "--data", help="Run on a real class-per-folder tree instead of the built-in phantoms."
    ),
    recipe: str = typer.Option("cpu-quick", "--recipe", "-r", help=RECIPES_HELP),
    name: str = typer.Option("demo", "--name", "-n", help="Run name."),
    out_dir: Path = typer.Option(Path("runs"), "--out-dir", "-o", help="Folder for run directories."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs (default: the recipe's)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Replace an earlier demo run of the same name."),
):
    """The main job: phantoms (or --data) → train the quick recipe → evaluate → predict a few images."""
    import shutil
    import time

    from liverscope import rundir
    from liverscope.data.datasets import make_phantoms
    from liverscope.inference.predict import Predictor, write_results
    from liverscope.training.run import fit

    t0 = time.perf_counter()
    try:
        phantoms = data is None
        data = out_dir / "phantoms" if phantoms else data
        cfg = _checked_config(
            recipe, train_overrides(name=name, out_dir=out_dir, data=data, epochs=epochs, device=device)
        )  # before any work
        if phantoms:
            typer.echo(f"generating the synthetic phantom set (F0..F4, 60 each) in {data} ...")
            make_phantoms(data, n_per_class=60, size=128, seed=0)
        if fresh and cfg.run_dir.exists():
            shutil.rmtree(cfg.run_dir)
        typer.echo(
            f"training recipe '{recipe}' ({cfg.model.name}, {cfg.data.image_size}px, {cfg.train.epochs} epochs) on {data} ..."
        )
        run_dir = fit(cfg)
        _print_run_summary(run_dir)
        samples, assignment, _ = rundir.read_split(run_dir / rundir.SPLIT)
        by_label: dict = {}
        for s, a in zip(samples, assignment):
            if a == "test":
                by_label.setdefault(s.label, []).append(s.path)
        few = [paths[i] for i in range(2) for paths in by_label.values() if i < len(paths)]  # two per class
        p = Predictor.from_run(run_dir, device=device or "auto")
        results = list(p.predict_paths(few))
        write_results(results, p.labels, run_dir / rundir.DEMO_PREDICTIONS)
        truth = {str(s.path): s.label for s in samples}
        typer.echo("predictions on a few test images:")
        for r in results:
            typer.echo(
                f"  {Path(r.path).name:18s} true {truth.get(r.path, '?'):4s} predicted {r.label:4s} (p={r.confidence:.2f})"
            )
        typer.echo(f"  → {run_dir / rundir.DEMO_PREDICTIONS}")
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(f"demo finished in {time.perf_counter() - t0:.0f}s")


@app.command()
def audit(
    data: Path = typer.Argument(..., help="Class-per-folder tree or CSV manifest to audit."),
    out: Path = typer.Option(Path("audit"), "--out", "-o", help="Folder for audit.json and audit.html."),
    near_threshold: Optional[int] = typer.Option(
        None, "--near-threshold", help="Largest dHash Hamming distance counted as a near-duplicate."
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Exit with status 1 when leakage risks are found (duplicates, label conflicts, source confounding).",
    ),
):
    """Find duplicates, near-duplicates, label conflicts, acquisition sources, confounding and bad files."""
    from liverscope.data.audit import audit_path
    from liverscope.data.audit_report import format_summary, write_audit

    try:
        kwargs = {} if near_threshold is None else {"near_threshold": near_threshold}
        result = audit_path(data, **kwargs)
        json_path, html_path = write_audit(result, out)
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(format_summary(result))
    typer.echo(f"→ {json_path}\n→ {html_path}")
    s = result["summary"]
    risky = s["files"] > s["groups"] or s["label_conflicts"] > 0 or s["confounded"]
    if strict and risky:
        raise typer.Exit(1)


@app.command()
@recipe_options
def cv(
    data: Optional[Path] = typer.Argument(
        None, help="Class-per-folder tree or CSV manifest (or set data.path in the recipe)."
    ),
    k: int = typer.Option(
        5, "--k", min=2, help="Number of folds (a run that has its split.csv keeps its own)."
    ),
    test_frac: float = typer.Option(
        0.2, "--test-frac", help="Share held out as the ensemble's test set (0 = CV only)."
    ),
    fold: Optional[List[int]] = typer.Option(
        None,
        "--fold",
        help="Train only this fold (repeatable): e.g. one array task of a cluster job, into the shared run directory.",
    ),
    gpus: int = typer.Option(
        0,
        "--gpus",
        min=0,
        help="Train the folds in parallel, one fold process per GPU at a time (0 = one after another).",
    ),
    prepare: bool = typer.Option(
        False,
        "--prepare",
        help="Audit the data and write the run's split.csv and config.yaml, train nothing (the step before --fold array tasks).",
    ),
    aggregate: bool = typer.Option(
        False,
        "--aggregate",
        help="Build the ensemble, out-of-fold figures and report from the trained folds of the run, train nothing.",
    ),
    auto_aggregate: bool = typer.Option(
        True,
        "--auto-aggregate/--no-auto-aggregate",
        help="Aggregate when the last fold is trained, whichever process trained it.",
    ),
    recipe: Optional[str] = RecipeOpt,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue interrupted folds from their last checkpoints, also in --gpus fold processes (finished folds are always kept).",
    ),
    overrides: Optional[dict] = None,
):
    """Grouped stratified k-fold CV with a hold-out test set and a logit-averaging fold ensemble.

    On a cluster: `cv DATA --name X --prepare`, then `cv --recipe runs/X/config.yaml --fold I` as array
    tasks (the last one to finish aggregates; or `cv --recipe runs/X/config.yaml --aggregate`); see docs/scaling.md."""
    from liverscope import rundir
    from liverscope.training.cv import aggregate_run, cross_validate, cross_validate_on_devices, visible_gpus
    from liverscope.training.lightning_module import global_rank

    try:
        if sum([prepare, aggregate, gpus > 1, bool(fold)]) > 1:
            raise UsageError(
                "--prepare, --aggregate, --gpus and --fold exclude each other: choose one way to run the folds"
            )
        if not 0 <= test_frac < 1:
            raise UsageError(
                f"--test-frac {test_frac}: the held-out share is at least 0 and below 1 (0 = CV only)"
            )
        cfg = _checked_config(recipe, overrides)
        if aggregate:
            aggregate_run(cfg.run_dir)
            run_dir = cfg.run_dir
        elif gpus > 1:
            run_dir = cross_validate_on_devices(cfg, k, test_frac, visible_gpus(gpus), resume=resume)
        else:
            run_dir = cross_validate(
                cfg,
                k=k,
                test_frac=test_frac,
                folds=[] if prepare else (fold or None),
                resume=resume,
                aggregate=auto_aggregate,
            )
    except LiverscopeError as exc:
        fail(exc)
    if global_rank() != 0:  # the other processes of a distributed run say nothing
        return
    m = rundir.read_metrics(run_dir)
    if "oof" in m:
        o = m["oof"]
        typer.echo(
            f"out-of-fold ({m['k']} folds): balanced accuracy {o['balanced_accuracy']:.3f}, macro AUC {o.get('macro_auc') or float('nan'):.3f}, accuracy {o['accuracy']:.3f}"
        )
    if "ensemble" in m:
        e = m["ensemble"]
        typer.echo(
            f"ensemble on hold-out test: balanced accuracy {e['balanced_accuracy']:.3f}, macro AUC {e.get('macro_auc') or float('nan'):.3f}, accuracy {e['accuracy']:.3f}"
        )
    if m.get("ensemble_vs_oof"):
        typer.echo(
            "ensemble - out-of-fold: "
            + ", ".join(
                f"{k.replace('_', ' ')} {v['gap']:+.3f}"
                for k, v in m.get("ensemble_vs_oof", {}).get("overall", {}).items()
                if isinstance(v, dict)
            )
        )
    typer.echo(f"run directory: {run_dir}")


@app.command()
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


@app.command()
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
    from liverscope.explain.files import explain_paths

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
            method=method,
            class_label=class_label,
            batch_size=batch_size,
            flip_average=flip_average,
            with_faithfulness=faithfulness,
            restrict_to_sector=sector,
            device=device,
            layers=layers,
            **({"overlay_side": None} if full_size else {}),
        )
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(
        f"explained {summary['explained']} image(s) with {summary['method']} in {summary['seconds']:.1f}s → {summary['out']}"
    )
    for key, value in summary.get("means", {}).items():
        typer.echo(f"  mean {key.replace('_', ' ')}: {value:.4f}")
    echo_skipped(summary["skipped"])
    check_processed(summary["explained"], summary["skipped"], "explained")


@app.command()
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


@app.command()
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


app.add_typer(records_app, name="records")  # liverscope records list|show|review|export (cli_records.py)
records_app.command("report")(report)  # records report KEY --pdf/--dicom, and pacs (cli_reports.py)
app.command("pacs")(pacs)

segment_app = typer.Typer(
    help="Weakly supervised segmentation: CAM pseudo-masks, an Attention U-Net, IoU/Dice scores.",
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")

RuleOpt = typer.Option(
    "threshold",
    "--rule",
    help="Pseudo-mask rule: threshold (CAM >= 0.5, the study's), otsu (Otsu over the sector), top (top q% of the sector) or grabcut (the threshold mask refined by OpenCV's GrabCut on the image).",
)
LayersOpt = typer.Option(None, "--layers", help=LAYERS_HELP)
QOpt = typer.Option(20.0, "--q", min=0.0, max=100.0, help="Percentage of sector pixels kept by --rule top.")
FlipOpt = typer.Option(
    False,
    "--flip-average/--no-flip-average",
    help="Average each CAM with the CAM of the mirrored image before thresholding.",
)
MethodOpt = typer.Option("gradcam", "--method", help="CAM method (see `liverscope explain --help`).")


@segment_app.command("pseudo")
def segment_pseudo(
    run_dir: Path = typer.Argument(
        ..., help="A trained run directory (a `cv` run averages the CAMs of its fold models)."
    ),
    data: Path = typer.Argument(
        ..., help="Image folder (searched recursively, masks/ skipped) or image file."
    ),
    rule: str = RuleOpt,
    q: float = QOpt,
    flip_average: bool = FlipOpt,
    method: str = MethodOpt,
    layers: Optional[str] = LayersOpt,
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder (default: pseudo-masks/RUN_NAME in the current folder); mirrors DATA's relative paths. Never DATA itself.",
    ),
):
    """CAM pseudo-masks (PNG, 0/255, at each image's original size) for the images of DATA (exit 1 when none could be made)."""
    from liverscope.segment import write_pseudo_masks

    try:
        method = _check_cam_options(rule, method)
        summary = write_pseudo_masks(
            run_dir,
            data,
            out=out or Path("pseudo-masks") / run_dir.resolve().name,
            rule=rule,
            q=q,
            flip_average=flip_average,
            method=method,
            layers=layers,
        )
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(f"wrote {summary['written']} pseudo-mask(s) ({summary['rule']}) → {summary['out']}")
    echo_skipped(summary["skipped"])
    check_processed(summary["written"], summary["skipped"], "given a pseudo-mask")


def _check_cam_options(rule: str, method: str) -> str:
    """The CAM method's key, once the pseudo-mask rule and the method are known to be valid (a UsageError otherwise)."""
    from liverscope.explain.cams import method_key
    from liverscope.segment.rules import RULES

    check_choice(rule, RULES, "--rule")
    return as_usage(method_key, method)


SEGMENT_CONFIG_HELP = (
    "A YAML file of segment settings (target, masks, pseudo:, network:, train:, engine:), "
    "or a segmenter's .json (reruns its saved config); the flags given and --set "
    "override it (docs/segment.md)."
)
SEGMENT_SET_HELP = (
    "Any segment setting as KEY=VALUE (dotted, e.g. train.lr=3e-4, pseudo.threshold=0.4, "
    "engine.iterations=50); repeatable; overrides the flags."
)


def _is_default(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` kept its default (was not given); Typer ships its own click, so its
    ParameterSource is compared by name."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "DEFAULT"


@segment_app.command("train")
def segment_train(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A trained run directory: the segmenter is saved into it."),
    data: Path = typer.Argument(..., help="Class-per-folder tree or CSV manifest of the images to segment."),
    masks: Optional[Path] = typer.Option(
        None,
        "--masks",
        help="Train on these masks (same relative path or file name as the image) instead of CAM pseudo-masks.",
    ),
    real_masks: Optional[Path] = typer.Option(
        None,
        "--real-masks",
        help="Expert masks (same file name, 0 = background, 255 = foreground): the held-out images are scored against them (default: the --masks themselves).",
    ),
    target: str = typer.Option(
        "lesion",
        "--target",
        help="What the masks outline (a lower-case name: lesion, liver, ...); a run holds one segmenter per target.",
    ),
    arch: Optional[str] = typer.Option(
        None,
        "--arch",
        help="attention-unet (the study's), unet-lite0/1/2 (a U-Net on an ImageNet EfficientNet-Lite encoder). Default: unet-lite0 with --masks, attention-unet on pseudo-masks.",
    ),
    loss: Optional[str] = typer.Option(
        None,
        "--loss",
        help="bce (the study's) or bce+dice. Default: bce+dice with --masks, bce on pseudo-masks.",
    ),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", min=1, help="Training epochs (the best validation Dice is kept). Default: 30."
    ),
    size: Optional[int] = typer.Option(
        None,
        "--size",
        help="U-Net input size (a multiple of 8, of 32 for unet-lite*; default: 192 with --masks, else the classifier's input size); larger than the classifier's, the images are preprocessed at this size.",
    ),
    channels: str = typer.Option(
        "8,16,32,64", "--channels", help="U-Net channels per level, comma-separated."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Batch size."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (Adam)."),
    rule: str = RuleOpt,
    q: float = QOpt,
    flip_average: bool = FlipOpt,
    method: str = MethodOpt,
    layers: Optional[str] = LayersOpt,
    positive: Optional[str] = typer.Option(
        None,
        "--positive",
        help="Comma-separated classes that have something to outline (e.g. benign,malignant): an image predicted as another class gets an empty pseudo-mask.",
    ),
    confident: Optional[str] = typer.Option(
        None,
        "--confident",
        help="LOW,HIGH: train only on confident pixels of the CAM (>= HIGH foreground, <= LOW background, the rest ignored), e.g. 0.3,0.6.",
    ),
    within: Optional[str] = typer.Option(
        None,
        "--within",
        help="A target of the run (e.g. liver, from an earlier `segment train --masks ... --target liver`): CAMs are cut inside its predicted mask instead of the whole scan sector.",
    ),
    seed: int = typer.Option(0, "--seed", help="Split and training seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    patience: Optional[int] = typer.Option(
        None,
        "--patience",
        min=1,
        help="Stop after this many epochs without a better validation Dice (default: train all epochs).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted segmenter training from its last checkpoint."
    ),
    engine: str = EngineOpt,
    nnunet_trainer: str = NnunetTrainerOpt,
    config: Optional[Path] = typer.Option(None, "--config", help=SEGMENT_CONFIG_HELP),
    settings: Optional[List[str]] = typer.Option(None, "--set", help=SEGMENT_SET_HELP),
):
    """Train a segmenter on --masks (default: a U-Net on an ImageNet encoder) or on CAM pseudo-masks (the
    study's Attention U-Net) with a grouped split; scores (against targets, expert masks and trivial
    baselines) go to the run's report. The resolved settings are saved in the segmenter's .json (config)."""
    from liverscope.segment import train_segmenter
    from liverscope.segment.config import FLAGS, load_segment_config

    try:  # defaults < --config < the flags given < --set
        given = {k: v for k, v in ctx.params.items() if k in FLAGS and not _is_default(ctx, k)}
        if "channels" in given:
            given["channels"] = numbers(channels, int, "--channels", "8,16,32,64")
        if "confident" in given:
            given["confident"] = numbers(confident, float, "--confident", "0.3,0.6") if confident else None
        if "positive" in given:
            given["positive"] = [c.strip() for c in positive.split(",") if c.strip()] if positive else None
        cfg = load_segment_config(config, given, settings or ())
        result = train_segmenter(run_dir, data, cfg, resume=resume)
    except ValueError as exc:
        fail(exc)
    for line in result["summary_lines"]:
        typer.echo(line)


@segment_app.command("predict")
def segment_predict(
    run_dir: Path = typer.Argument(
        ..., help="A run directory holding a segmenter (liverscope segment train)."
    ),
    paths: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(
        Path("segmentations"),
        "--out",
        "-o",
        help="Output folder: NAME_mask.png (lesion), NAME_T_mask.png (target T; 0/255) and NAME_outline.png at the original size.",
    ),
):
    """Segment new images with every U-Net of the run (one per target); bad files are listed as skipped and the rest finish."""
    from liverscope.segment import write_segmentations

    try:
        count_inputs(paths)
        summary = write_segmentations(run_dir, paths, out)
    except LiverscopeError as exc:
        fail(exc)
    typer.echo(
        f"segmented {summary['written']} image(s) → {summary['out']}; outlines: "
        + ", ".join(f"{t} {c}" for t, c in summary["colours"].items())
    )
    for t, n in summary.get("suppressed", {}).items():
        typer.echo(f"{t} gate: no outline on {n} image(s) whose raw mask held only a small or unsure region")
    echo_skipped(summary["skipped"])
    check_processed(summary["written"], summary["skipped"], "segmented")


@segment_app.command("score")
def segment_score(
    pred_dir: Path = typer.Argument(..., help="Predicted masks (PNG, lesion > 127)."),
    true_dir: Path = typer.Argument(
        ..., help="True masks: same relative path or file name (a NAME_mask.png also matches NAME.png)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Also write the per-image scores to this CSV."
    ),
):
    """IoU and Dice of every predicted mask against its true mask, and their means."""
    from liverscope.segment import score_mask_dirs

    try:
        result = score_mask_dirs(pred_dir, true_dir, out=out)
    except LiverscopeError as exc:
        fail(exc)
    for r in result["images"]:
        typer.echo(f"{r['name']}\tIoU {r['iou']:.3f}\tDice {r['dice']:.3f}")
    typer.echo(
        f"mean over {result['n']} image(s): IoU {result['mean_iou']:.3f}, Dice {result['mean_dice']:.3f}"
    )
    echo_skipped(result["skipped"])


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
