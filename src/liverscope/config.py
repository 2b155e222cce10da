"""Typed run configuration: defaults < YAML recipe < command-line flags.

The resolved configuration is saved as ``config.yaml`` beside every run, so a run can be repeated from
its own directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from liverscope.errors import UsageError

#: The built-in recipes ship inside the package (``liverscope/recipes/*.yaml``) and are read through
#: ``importlib.resources``, so they are found from a wheel, a zip or an editable checkout alike.


#: Input statistics of ImageNet-trained weights (torchvision / timm); a model registers its own when
#: its weights expect others (EfficientNet-Lite: 0.5 / 0.5).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: Settings whose value is one of a fixed set: checked when a recipe or flag is read (before any work
#: starts) and offered as choices by the command line. The modules that act on them keep the same
#: names (tests/test_config.py checks that they agree).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.augment": ("conservative", "ultrasound", "light", "strong", "none"),
    "data.split": ("grouped", "stratified", "random"),
    "data.denoise_at": ("model", "full"),
    "data.denoise_region": ("image", "sector"),
    "model.head": ("seed", "mlp128", "linear"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.scheduler": ("cosine", "step", "plateau", "none"),
    "train.balance": ("none", "sampler", "weighted_ce"),
    "train.precision": ("auto", "32-true", "16-mixed", "bf16-mixed"),
    # Lightning's accelerators and the data-parallel strategies a run directory supports (docs/scaling.md)
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "train.strategy": ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"),
    "train.logger": ("csv", "tensorboard", "mlflow"),
    # the weights a run keeps: best (the epoch with the best train.monitor, chosen on the validation
    # images), last (the final epoch: the validation images choose nothing), auto (last in cv folds,
    # whose validation images are the out-of-fold ones; best otherwise)
    "train.select": ("auto", "best", "last"),
    # `evaluate --ablation`: the part of the scan sector blanked before re-scoring (the shortcut check)
    "evaluate.ablation": ("tissue", "periphery"),
    # options of `predict` / `serve` (not recipe settings): the inference engine and its number format
    "predict.backend": ("auto", "torch", "onnx"),
    "predict.precision": ("auto", "fp32", "bf16"),
    "predict.schedule": ("auto", "alternate", "overlap"),
    "predict.pool": ("thread", "process"),
    "predict.tta": ("none", "flip"),
}


@dataclass
class DataConfig:
    path: str | None = None  # class-per-folder root or CSV manifest (path,label[,group][,source])
    image_size: int = 224
    denoise: bool = True  # non-local-means denoising (seed recipe)
    denoise_strength: float = 10.0  # NLM filter strength h
    denoise_at: str = "model"  # "model": denoise grey at model resolution (fast); "full": at full resolution
    nlm_template: int = 7  # NLM template window (OpenCV's default; odd)
    nlm_search: int = 21  # NLM search window (OpenCV's default; smaller is faster but changes the input: docs/benchmarks.md)
    denoise_region: str = (
        "image"  # image | sector: denoise only the scan sector's box (faster when the fan is small)
    )
    crop_sector: bool = False  # crop to the bounding box of the scan sector before resizing
    augment: str = "conservative"  # conservative | ultrasound | light | none
    train_crop: int = 0  # >0: train on random tissue windows of this size from the image_size input, evaluate on the whole input
    cache_dir: str | None = ".liverscope-cache"  # None disables the preprocessing cache
    split: str = "grouped"  # grouped | stratified | random (random is the leaky legacy split)
    val_frac: float = 0.15
    test_frac: float = 0.15
    allow_leak: bool = False  # warn instead of refusing when a test image has a duplicate in training
    distinct_only: bool = (
        False  # keep one copy of byte-identical files (faster epochs, each image counts once)
    )
    num_workers: int = 0
    frames: str = (
        "middle"  # DICOM cine loops: middle | all | every:N (the frames of a loop that become samples)
    )

    def __setattr__(self, name: str, value: Any) -> None:
        # data.frames is not one of a fixed set (every:N), so it is checked on every assignment
        # (default, recipe, flag) rather than through CHOICES
        if name == "frames":
            parse_frames(value)
        super().__setattr__(name, value)


#: The forms of ``data.frames``: which frames of a DICOM cine loop become samples.
FRAME_FORMS = ("middle", "all", "every:N")


def parse_frames(spec: Any) -> tuple[str, int]:
    """``data.frames`` as ``(kind, step)``: ``middle`` → ``("middle", 1)``, ``all`` → ``("all", 1)``,
    ``every:N`` → ``("every", N)``; anything else is a UsageError listing the valid forms."""
    text = spec.strip().lower() if isinstance(spec, str) else ""
    if text in ("middle", "all"):
        return text, 1
    step = text[len("every:") :].strip() if text.startswith("every:") else ""
    if step.isdigit() and int(step) >= 1:
        return "every", int(step)
    raise UsageError(
        f"data.frames (--frames) is {spec!r}; choose one of: middle (the middle frame of a cine loop, the default), "
        "all (every frame), every:N (every N-th frame, N a whole number >= 1, e.g. every:2)"
    )


@dataclass
class ModelConfig:
    name: str = "resnet18"
    head: str = "seed"  # seed | mlp128 | linear
    pretrained: bool = False  # ImageNet weights through timm (needs internet)
    weights: str | None = None  # local ImageNet/timm checkpoint (.safetensors, .pth)
    freeze_backbone: bool = False
    dropout: float = 0.3
    hidden: int = 256  # width of the seed head's hidden layer


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: str = "cosine"  # cosine | step | plateau | none
    step_size: int = 10  # step scheduler: epochs between decays
    gamma: float = 0.1  # step scheduler factor
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    early_stop_patience: int = 0  # 0 disables early stopping
    monitor: str = "val_balanced_acc"  # metric for early stopping and best checkpoint
    select: str = "auto"  # auto | best | last: the weights kept (CHOICES["train.select"])
    balance: str = "none"  # none | sampler | weighted_ce
    label_smoothing: float = 0.0
    ordinal_weight: float = 0.0  # METAVIR labels: weight of the expected-stage penalty added to cross-entropy
    mixup: float = 0.0  # mixup alpha (timm's Mixup on each training batch; 0 = off)
    cutmix: float = 0.0  # cutmix alpha (with mixup too: one or the other per batch; 0 = off)
    warmup_epochs: int = (
        0  # epochs that train the head only (backbone frozen) before the whole network trains
    )
    backbone_lr_mult: float = (
        1.0  # the backbone's learning rate is lr x this (differential learning rates; the head's is lr)
    )
    ema: float = (
        0.0  # decay of an exponential moving average of the weights, validated and kept (0 = off; e.g. 0.99)
    )
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (one device: the faster of 32-true and bf16-mixed, timed where bf16 is native: speed/training.py) or a Lightning precision: 32-true, 16-mixed, bf16-mixed
    channels_last: bool = True  # NHWC memory layout: faster convolutions (benchmarks/train_speed.py)
    max_train_batches: float | int | None = None  # limit batches per epoch (quick checks)
    progress: bool = True
    # where and on how many devices (Lightning's Trainer arguments; docs/scaling.md): "auto" follows
    # train.device; devices per node: a count, auto, -1 (all) or GPU indices "0,1"
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    devices: str = "1"
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ddp_find_unused_parameters_true
    num_nodes: int = 1
    logger: str = (
        "csv"  # csv (always kept: history.csv) | tensorboard | mlflow (in addition to the CSV logger)
    )
    mlflow_uri: str | None = (
        None  # MLflow tracking URI; None: a local mlruns/ folder in the working directory
    )

    def __setattr__(self, name: str, value: Any) -> None:
        # not one of a fixed set either: checked on every assignment (default, recipe, flag)
        if name == "devices":
            parse_devices(value)
        elif name == "device":
            check_device(value, "train.device (--device)")
        elif name == "num_nodes" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"train.num_nodes (--num-nodes) is {value!r}; give a whole number >= 1")
        elif name in _UNIT_RANGES and not _in_range(value, *_UNIT_RANGES[name]):
            lo, hi = _UNIT_RANGES[name]
            raise UsageError(f"train.{name} is {value!r}; give a number in [{lo}, {hi})")
        elif name == "warmup_epochs" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise UsageError(f"train.warmup_epochs is {value!r}; give a whole number >= 0")
        elif name == "epochs" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            # 0 epochs would write a complete run of an untrained model
            raise UsageError(
                f"train.epochs (--epochs) is {value!r}; give a whole number >= 1 (a run needs at least one epoch of training)"
            )
        super().__setattr__(name, value)


#: Numeric training settings and their range [low, high): mixing alphas, learning-rate multiplier, EMA decay.
_UNIT_RANGES = {
    "mixup": (0.0, 10.0),
    "cutmix": (0.0, 10.0),
    "backbone_lr_mult": (0.0, 100.0),
    "ema": (0.0, 1.0),
}


def _in_range(value: Any, lo: float, hi: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= float(value) < hi


def check_device(spec: Any, option: str = "--device") -> str:
    """A device as the commands take it: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; anything else is a
    UsageError (whether a GPU is there is only known when the command runs)."""
    text = spec if isinstance(spec, str) else ""
    index = text[len("cuda:") :] if text.startswith("cuda:") else ""
    if text in ("auto", "cpu", "cuda") or index.isdigit():
        return text
    raise UsageError(
        f"{option} is {spec!r}; choose one of: auto, cpu, cuda, cuda:N (a GPU index, e.g. cuda:1)"
    )


def parse_devices(spec: Any) -> int | str | list[int]:
    """``train.devices`` as Lightning's Trainer takes it: ``"2"`` → ``2``, ``"-1"`` → ``-1`` (every
    device), ``"auto"``, ``"0,1"`` → ``[0, 1]`` (those GPU indices); anything else is a UsageError."""
    if isinstance(spec, int) and not isinstance(spec, bool) and (spec >= 1 or spec == -1):
        return spec
    text = spec.strip().lower() if isinstance(spec, str) else ""
    if text == "auto":
        return text
    if text.lstrip("-").isdigit() and (int(text) >= 1 or int(text) == -1):
        return int(text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if "," in text and parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    raise UsageError(
        f"train.devices (--devices) is {spec!r}; give a number of devices per node (e.g. 2), -1 for all of them, "
        "auto, or GPU indices separated by commas (e.g. 0,1)"
    )


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _coerce(current: Any, value: Any, key: str, origin: str) -> Any:
    """A value given as text (``--set train.lr=3e-4``) takes the type of the setting it replaces."""
    if not isinstance(value, str) or isinstance(current, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(current, bool):
        if not isinstance(parsed, bool):
            raise UsageError(f"{origin}: '{key}' must be true or false, got '{value}'")
        return parsed
    if isinstance(current, (int, float)) and isinstance(parsed, str):
        try:  # PyYAML reads YAML 1.1, where "1e-3" (no dot) is a string, not a number
            parsed = float(parsed) if any(c in parsed.lower() for c in ".en") else int(parsed)
        except ValueError:
            pass
    if isinstance(current, (int, float)):
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
            raise UsageError(f"{origin}: '{key}' must be a number, got '{value}'")
        return (
            float(parsed)
            if isinstance(current, float)
            else (int(parsed) if float(parsed).is_integer() else parsed)
        )
    if isinstance(current, list) and not isinstance(parsed, list):  # a list as text: "8,16,32"
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        return [_coerce(current[0], v, key, origin) if current else v for v in items]
    return parsed


def check_setting(key: str, value: Any, origin: str, choices: dict[str, tuple] = CHOICES) -> Any:
    """``value`` when ``key`` has no fixed set of ``choices`` or it is one of them; else a UsageError
    that names the setting and lists the choices."""
    allowed = choices.get(key)
    if allowed is not None and value not in allowed:
        raise UsageError(f"{origin}: '{key}' is '{value}'; choose one of: {', '.join(allowed)}")
    return value


_NULLS = (None, "null", "none", "~", "")


def apply_section(
    section: Any,
    values: Any,
    prefix: str,
    origin: str,
    choices: dict[str, tuple] = CHOICES,
    kinds: dict[str, Any] | None = None,
) -> None:
    """Set ``values`` (a mapping read from YAML or the command line) on the dataclass ``section`` whose
    settings are named ``prefix.NAME``: unknown names are errors, text takes the type of the setting
    (:func:`_coerce`) and enumerated settings are checked against ``choices``. ``kinds`` gives an
    example value of each setting whose default is ``None`` (its type; such a setting also takes
    ``null``); without it a ``None`` setting keeps the value as YAML reads it."""
    if not isinstance(values, dict):
        raise UsageError(f"{origin}: '{prefix}' must be a mapping of settings")
    known = {f.name for f in fields(section)}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise UsageError(f"{origin}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
        kind = (kinds or {}).get(key)
        if kind is not None and (v is None or (isinstance(v, str) and v.strip().lower() in _NULLS)):
            setattr(section, k, None)
            continue
        current = getattr(section, k)
        value_k = _coerce(kind if current is None and kind is not None else current, v, key, origin)
        setattr(section, k, check_setting(key, value_k, origin, choices))


def _apply(cfg: RunConfig, values: dict[str, Any], origin: str) -> None:
    for key, value in values.items():
        if key in _SECTIONS:
            apply_section(getattr(cfg, key), value, key, origin)
        elif key in ("name", "out_dir"):
            setattr(cfg, key, value)
        elif key == "recipe":  # informational
            continue
        else:
            raise UsageError(
                f"{origin}: unknown top-level setting '{key}' (use data:, model:, train:, name:)"
            )


def _recipe_dir():
    return resources.files("liverscope").joinpath("recipes")


def recipe_names() -> list[str]:
    """The names of the built-in recipes (``cpu-quick``, ``resnet50-cbam`` …)."""
    return sorted(f.name[: -len(".yaml")] for f in _recipe_dir().iterdir() if f.name.endswith(".yaml"))


def read_recipe(recipe: str | Path) -> tuple[str, str]:
    """The text of a recipe and where it came from: a YAML file the user names, or a built-in recipe
    by name (``cpu-quick`` → ``liverscope/recipes/cpu-quick.yaml``). A user's file wins over a
    built-in of the same name."""
    p = Path(recipe)
    if p.is_file():
        return p.read_text(), str(p)
    name = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    if name in recipe_names() and (p.parent == Path(".") or p.parent.name in ("configs", "recipes")):
        return _recipe_dir().joinpath(f"{name}.yaml").read_text(), f"recipe {name}"
    raise UsageError(
        f"recipe '{recipe}' not found: give a YAML file or one of the built-in recipes: {', '.join(recipe_names())}"
    )


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve a configuration.

    Args:
        recipe: YAML file or the name of a built-in recipe (:func:`recipe_names`); ``None`` for the defaults.
        overrides: dotted keys (``"train.lr"``) or nested dicts from the command line; ``None`` values
            are ignored so unset flags keep the recipe's value.

    Returns:
        The resolved :class:`RunConfig`.
    """
    cfg = RunConfig()
    if recipe is not None:
        _apply_recipe(cfg, recipe, ())
    if overrides:
        _apply(cfg, nested_settings(overrides), "command line")
    return cfg


def _apply_recipe(cfg: RunConfig, recipe: str | Path, below: tuple[str, ...]) -> None:
    """Apply a recipe on ``cfg``, after the recipe its ``base:`` names (a built-in's name, or a YAML
    file, relative to the recipe's own folder first), so a recipe states only what it changes.
    ``below`` holds the recipes that named this one, to refuse a loop."""
    text, origin = read_recipe(recipe)
    values = yaml_mapping(text, origin)
    base = values.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise UsageError(
                f"{origin}: 'base' names one recipe (a built-in's name or a YAML file), got {base!r}"
            )
        if origin in below:
            raise UsageError(f"{origin}: its 'base' chain comes back to it ({' → '.join((*below, origin))})")
        beside = Path(origin).parent / base
        _apply_recipe(cfg, beside if Path(origin).is_file() and beside.is_file() else base, (*below, origin))
    _apply(cfg, values, origin)


def yaml_mapping(text: str, origin: str) -> dict[str, Any]:
    """The settings of a YAML text: a mapping at the top level (empty text: none), else a UsageError."""
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{origin}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{origin}: expected a mapping at the top level")
    return values


def nested_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys (``{"train.lr": 3e-4}``) as the nested mapping a YAML file gives; ``None`` values
    (a flag not given) are left out."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:
            section, sub = key.split(".", 1)
            nested.setdefault(section, {})[sub] = value
        else:
            nested[key] = value
    return nested


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    _apply(cfg, values, "config")
    return cfg
