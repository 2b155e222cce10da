"""``liverscope segment pseudo|train|predict|score``: weakly supervised segmentation from the command
line (docs/segment.md). Registered by :mod:`liverscope.ui.cli` with
``app.add_typer(segment_app, name="segment")``. Like cli.py, it imports the torch side (the segment
package, CAMs) inside the commands, so ``liverscope --help`` loads none of it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from liverscope.errors import LiverscopeError
from liverscope.ui.cli_options import (
    LAYERS_HELP,
    EngineOpt,
    NnunetTrainerOpt,
    as_usage,
    check_choice,
    check_processed,
    echo_skipped,
    fail,
    numbers,
)
from liverscope.ui.cli_predict import count_inputs

segment_app = typer.Typer(
    help="Weakly supervised segmentation: CAM pseudo-masks, an Attention U-Net, IoU/Dice scores.",
    no_args_is_help=True,
)

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
