"""The ``liverscope`` command line (Typer).

Commands import the torch-side parts of liverscope (training, prediction, CAMs, segmentation: torch,
Lightning, timm, MONAI) inside their bodies: ``liverscope --help`` and a mistyped command answer in a
fraction of a second instead of the seconds those libraries take to load. Everything else is imported
at the top.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from liverscope.config import load_config
from liverscope.errors import LiverscopeError, UsageError
from liverscope.ui.cli_options import (
    RECIPES_HELP,
    RecipeOpt,
    fail,
    recipe_options,
    show_version,
    train_overrides,
)
from liverscope.ui.cli_predict import predict
from liverscope.ui.cli_records import records_app
from liverscope.ui.cli_reports import pacs, report
from liverscope.ui.cli_runs import evaluate, explain, export, serve
from liverscope.ui.cli_segment import segment_app
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
    folds_per_gpu: int = typer.Option(
        1,
        "--folds-per-gpu",
        min=1,
        help="With --gpus: fold processes sharing each GPU at a time (a small network leaves a large GPU idle; e.g. 5 trains all folds at once on one GPU).",
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
        if folds_per_gpu > 1 and gpus < 1:
            raise UsageError("--folds-per-gpu shares GPUs between folds: give --gpus N too")
        queued = gpus > 1 or folds_per_gpu > 1  # a fold queue (folds_per_gpu > 1 implies --gpus)
        if sum([prepare, aggregate, queued, bool(fold)]) > 1:
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
        elif queued:
            run_dir = cross_validate_on_devices(
                cfg, k, test_frac, visible_gpus(gpus, folds_per_gpu), resume=resume
            )
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


app.command()(evaluate)  # evaluate, explain, export, serve: the commands on a trained run (cli_runs.py)
app.command()(explain)
app.command()(export)
app.command()(serve)
app.add_typer(records_app, name="records")  # liverscope records list|show|review|export (cli_records.py)
records_app.command("report")(report)  # records report KEY --pdf/--dicom, and pacs (cli_reports.py)
app.command("pacs")(pacs)
app.add_typer(segment_app, name="segment")  # liverscope segment pseudo|train|predict|score (cli_segment.py)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
