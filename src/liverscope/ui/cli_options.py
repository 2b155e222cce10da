"""The command line's shared option machinery: exit codes, the version, choices as enums, and the one
table of recipe options that ``train`` and ``cv`` share (``@recipe_options``). Imported by :mod:`.cli`;
it loads nothing torch-side."""

from __future__ import annotations

import enum
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from liverscope import __version__
from liverscope.config import CHOICES, recipe_names
from liverscope.errors import LiverscopeError, UsageError

#: Exit codes: 0 success, 1 a failure while running (bad data, a run directory that is not one, a
#: failed export; ``audit --strict`` with leakage risks), 2 a usage error found before any work
#: (an unknown option or setting, a value outside its choices, a missing recipe).
EXIT_FAILURE, EXIT_USAGE = 1, 2


def fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE)


def as_usage(check: Callable, *args, **kwargs):
    """``check(*args, **kwargs)``, a check of an option's value that raises :class:`LiverscopeError`
    (a CAM method, a pseudo-mask rule, a device), with the error raised as a :class:`UsageError`: the
    command line calls it before any work, so a bad value exits 2."""
    try:
        return check(*args, **kwargs)
    except UsageError:
        raise
    except LiverscopeError as exc:
        raise UsageError(str(exc)) from None


def check_choice(value: str, choices, option: str) -> str:
    """``value`` when it is one of ``choices``; otherwise a UsageError that lists them."""
    if value not in choices:
        raise UsageError(f"{option} {value!r}: choose one of: {', '.join(choices)}")
    return value


def check_conflict(*given: tuple[str | None, bool], hint: str = "") -> None:
    """A UsageError when more than one of ``(option, given)`` is given: options that exclude each other
    (``hint`` says why)."""
    names = [str(name) for name, on in given if on]
    if len(names) > 1:
        raise UsageError(
            f"{' and '.join(names)} exclude each other{f' ({hint})' if hint else ''}: choose one"
        )


#: The formats of ``predict --out``, by the output file's extension. (Parquet would need pandas and
#: pyarrow, which liverscope does not depend on.)
OUT_FORMATS = (".csv", ".json")


def check_out_format(out: Path) -> Path:
    """``out`` when its extension names a format of :data:`OUT_FORMATS`, else a UsageError (a file
    named ``x.txt`` is never silently written as CSV)."""
    if out.suffix.lower() not in OUT_FORMATS:
        raise UsageError(
            f"--out {out}: the format follows the extension; name a {' or '.join(OUT_FORMATS)} file (e.g. --out {out.with_suffix('.csv')})"
        )
    return out


def check_processed(done: int, skipped: list, what: str) -> None:
    """A command that processed nothing fails (exit 1), so a script can tell: ``done`` inputs were
    processed, ``skipped`` (``(path, reason)`` pairs, already listed) were not; ``what`` is the past
    participle (``predicted``)."""
    if done == 0:
        why = (
            f"all {len(skipped)} input file(s) failed (listed above with the reason)"
            if skipped
            else "no input file was found"
        )
        fail(LiverscopeError(f"no image {what}: {why}; fix or replace the files and run again"))


def numbers(text: str, kind: type, option: str, example: str) -> tuple:
    """Comma-separated numbers of an option (``--channels 8,16,32``), or a UsageError."""
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option} {text}: expected comma-separated numbers, e.g. {example}") from None


def echo_skipped(skipped) -> None:
    """List the inputs a command skipped, each with its reason."""
    if skipped:
        typer.echo(f"skipped {len(skipped)} file(s):")
        for path, reason in skipped:
            typer.echo(f"  {path}: {reason}")


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"liverscope {__version__}")
        raise typer.Exit()


def choice(setting: str) -> type[enum.Enum]:
    """An Enum of a setting's choices (config.CHOICES): Typer checks the value before the command runs
    and lists the choices in ``--help`` and in the error."""
    name = "".join(part.title() for part in setting.replace("_", ".").split("."))
    return enum.Enum(name, {v: v for v in CHOICES[setting]}, type=str)  # type: ignore[return-value]


#: The recipe settings that ``train`` and ``cv`` take as flags: (parameter, dotted setting, type, flags, help).
#: One table, so the two commands cannot drift apart; ``--set KEY=VALUE`` reaches every other setting.
RECIPE_OPTIONS: list[tuple[str, str, Any, tuple[str, ...], str]] = [
    ("name", "name", Optional[str], ("--name", "-n"), "Run name: outputs go to OUT_DIR/NAME."),
    (
        "out_dir",
        "out_dir",
        Optional[Path],
        ("--out-dir", "-o"),
        "Folder for run directories (default runs/).",
    ),
    ("model", "model.name", Optional[str], ("--model", "-m"), "Model name (see `liverscope models`)."),
    ("head", "model.head", Optional[choice("model.head")], ("--head",), "Head: seed, mlp128 or linear."),
    (
        "pretrained",
        "model.pretrained",
        Optional[bool],
        ("--pretrained/--no-pretrained",),
        "ImageNet weights from the timm hub (needs internet).",
    ),
    (
        "weights",
        "model.weights",
        Optional[Path],
        ("--weights",),
        "Local backbone weights (.safetensors or .pth of the same timm architecture).",
    ),
    (
        "freeze_backbone",
        "model.freeze_backbone",
        Optional[bool],
        ("--freeze-backbone/--train-backbone",),
        "Train the head only.",
    ),
    ("image_size", "data.image_size", Optional[int], ("--image-size",), "Model input size in pixels."),
    ("denoise", "data.denoise", Optional[bool], ("--denoise/--no-denoise",), "Non-local-means denoising."),
    (
        "augment",
        "data.augment",
        Optional[choice("data.augment")],
        ("--augment",),
        "Augmentation preset: conservative, ultrasound, light, none.",
    ),
    (
        "split",
        "data.split",
        Optional[choice("data.split")],
        ("--split",),
        "grouped (default: duplicates never straddle splits), stratified, or random (the leaky legacy split).",
    ),
    (
        "allow_leak",
        "data.allow_leak",
        Optional[bool],
        ("--allow-leak",),
        "Warn instead of refusing a split in which a test image has a duplicate in training.",
    ),
    ("epochs", "train.epochs", Optional[int], ("--epochs",), "Maximum epochs."),
    ("batch_size", "train.batch_size", Optional[int], ("--batch-size",), "Batch size."),
    ("lr", "train.lr", Optional[float], ("--lr",), "Learning rate."),
    ("weight_decay", "train.weight_decay", Optional[float], ("--weight-decay",), "Weight decay."),
    (
        "optimizer",
        "train.optimizer",
        Optional[choice("train.optimizer")],
        ("--optimizer",),
        "adam, adamw or sgd.",
    ),
    (
        "scheduler",
        "train.scheduler",
        Optional[choice("train.scheduler")],
        ("--scheduler",),
        "cosine, step, plateau or none.",
    ),
    (
        "balance",
        "train.balance",
        Optional[choice("train.balance")],
        ("--balance",),
        "none, sampler (inverse-frequency sampler) or weighted_ce.",
    ),
    ("seed", "train.seed", Optional[int], ("--seed",), "Random seed."),
    ("device", "train.device", Optional[str], ("--device",), "auto, cpu or cuda."),
    (
        "precision",
        "train.precision",
        Optional[choice("train.precision")],
        ("--precision",),
        "auto (bf16-mixed on GPUs with bf16, else 32-true), or a Lightning precision: 32-true, 16-mixed, bf16-mixed.",
    ),
    (
        "early_stop",
        "train.early_stop_patience",
        Optional[int],
        ("--early-stop",),
        "Early-stopping patience in epochs (0 = off).",
    ),
    (
        "monitor",
        "train.monitor",
        Optional[str],
        ("--monitor",),
        "Validation metric for early stopping and best epoch.",
    ),
    ("num_workers", "data.num_workers", Optional[int], ("--num-workers",), "DataLoader worker processes."),
    ("cache_dir", "data.cache_dir", Optional[str], ("--cache-dir",), "Preprocessing cache folder."),
    (
        "max_train_batches",
        "train.max_train_batches",
        Optional[int],
        ("--max-train-batches",),
        "Limit training batches per epoch (quick checks).",
    ),
    (
        "distinct_only",
        "data.distinct_only",
        Optional[bool],
        ("--distinct-only/--all-copies",),
        "Keep one file per duplicate group (the audit's groups).",
    ),
    (
        "crop_sector",
        "data.crop_sector",
        Optional[bool],
        ("--crop-sector/--no-crop-sector",),
        "Crop each image to its scan sector before resizing.",
    ),
    (
        "frames",
        "data.frames",
        Optional[str],
        ("--frames",),
        "DICOM cine loops: middle (default), all, or every:N frames as samples; a loop's frames never straddle a split.",
    ),
    (
        "accelerator",
        "train.accelerator",
        Optional[choice("train.accelerator")],
        ("--accelerator",),
        "Lightning accelerator: auto (follows --device), cpu, gpu, cuda or mps.",
    ),
    (
        "devices",
        "train.devices",
        Optional[str],
        ("--devices",),
        "Devices per node: a number (2), -1 for all, auto, or GPU indices (0,1); more than one trains with DDP, one process each (docs/scaling.md).",
    ),
    (
        "strategy",
        "train.strategy",
        Optional[choice("train.strategy")],
        ("--strategy",),
        "Lightning strategy: auto, ddp (one process per device; also under torchrun or srun), ddp_spawn, ddp_find_unused_parameters_true.",
    ),
    (
        "num_nodes",
        "train.num_nodes",
        Optional[int],
        ("--num-nodes",),
        "Machines of a multi-node DDP run (the same command on each, or srun / torchrun).",
    ),
    (
        "logger",
        "train.logger",
        Optional[choice("train.logger")],
        ("--logger",),
        "Experiment tracking besides logs/csv and history.csv: csv (nothing more), tensorboard (logs/tensorboard/), mlflow (./mlruns unless --mlflow-uri).",
    ),
    (
        "mlflow_uri",
        "train.mlflow_uri",
        Optional[str],
        ("--mlflow-uri",),
        "MLflow tracking URI (a server or a folder); default: a local mlruns/ folder in the working directory.",
    ),
]
_SETTING = {name: key for name, key, *_ in RECIPE_OPTIONS} | {"data": "data.path"}
SetOpt = typer.Option(
    None,
    "--set",
    help="Any recipe setting as KEY=VALUE (dotted, e.g. train.label_smoothing=0.1); repeatable.",
)
RECIPES_HELP = f"A YAML recipe file, or the name of a built-in recipe ({', '.join(recipe_names())})."
RecipeOpt = typer.Option(None, "--recipe", "-r", help=RECIPES_HELP)


def train_overrides(**kw) -> dict:
    """CLI flags → dotted config keys (``None`` = not given, keep the recipe's value); ``settings``
    holds the ``--set KEY=VALUE`` items."""
    settings = kw.pop("settings", None) or []
    out = {}
    for k, v in kw.items():
        if v is None:
            continue
        out[_SETTING[k]] = str(v) if isinstance(v, Path) else v.value if isinstance(v, enum.Enum) else v
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LiverscopeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.label_smoothing=0.1")
        out[key.strip()] = value.strip()
    return out


def recipe_options(fn: Callable) -> Callable:
    """Give a command every option of :data:`RECIPE_OPTIONS` and ``--set``; the command receives them
    resolved as one ``overrides`` dict (for :func:`liverscope.config.load_config`)."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "overrides"]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, *flags, help=text),
            annotation=typ,
        )
        for name, _, typ, flags, text in RECIPE_OPTIONS
    ]
    added.append(
        inspect.Parameter(
            "settings", inspect.Parameter.KEYWORD_ONLY, default=SetOpt, annotation=Optional[List[str]]
        )
    )
    names = [p.name for p in added]

    @functools.wraps(fn)
    def command(**kwargs):
        flags = {n: kwargs.pop(n) for n in names}
        data = kwargs.get("data")
        try:
            overrides = train_overrides(data=data, **flags)
        except LiverscopeError as exc:
            fail(exc)
        return fn(**kwargs, overrides=overrides)

    command.__signature__ = inspect.Signature(own + added)
    command.__annotations__ = {
        **{k: v for k, v in fn.__annotations__.items() if k != "overrides"},
        **{p.name: p.annotation for p in added},
    }
    return command


#: ``--layers`` of ``explain`` and ``segment``: where the CAM is taken (liverscope.explain.cams.resolve_layers).
LAYERS_HELP = (
    "Layer(s) the CAM is taken at, comma-separated: 'last' (default: the final feature map), a stage name of the "
    "backbone (e.g. layer3) or an index (-2 = the second-to-last stage); several are averaged (a multi-scale CAM)."
)

#: ``segment train --engine`` (:data:`liverscope.segment.nnunet.ENGINES`, repeated: this module loads nothing torch-side).
ENGINES = ("liverscope", "nnunet")
EngineOpt = typer.Option(
    "liverscope",
    "--engine",
    help="liverscope (its own U-Nets, Lightning) or nnunet (nnU-Net plans, preprocesses and trains "
    "on the same images and split; needs the nnunet extra, meant for a GPU; its folders go to RUN_DIR/nnunet/). "
    "With nnunet, --epochs overrides the nnU-Net trainer's (1000 of 250 iterations); --arch, --loss, --lr, --batch-size, "
    "--channels and --patience do not apply.",
)
NnunetTrainerOpt = typer.Option(
    "nnUNetTrainer",
    "--nnunet-trainer",
    help="With --engine nnunet: the nnU-Net trainer class by name (e.g. nnUNetTrainer_250epochs).",
)
DbOpt = typer.Option(
    None,
    "--db",
    help="Records database: a file path or a URL (postgresql+psycopg://user@host/db); default $LIVERSCOPE_DB, "
    "else records.sqlite in the user's data folder (docs/records.md).",
)
