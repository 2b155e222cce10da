"""Typed configuration of ``segment train``: defaults < a YAML file (``--config``) < flags < ``--set``.

:class:`SegmentConfig` is to a segmenter what :class:`liverscope.config.RunConfig` is to a classifier:
the targets (``target``, ``masks``, ``real_masks``), and four sections — ``pseudo`` (how CAMs become
pseudo-masks), ``network`` (the architecture), ``train`` (the fit) and ``engine`` (liverscope's own
Lightning fit or nnU-Net). Values given as text are read with the classifier's rules
(:func:`liverscope.config.apply_section`); enumerated settings (:data:`CHOICES`) and ranges are checked
by :func:`checked` before any work. Some defaults depend on whether ``masks`` is given
(:data:`~liverscope.segment.unet.MASKS_DEFAULTS` / :data:`~liverscope.segment.unet.PSEUDO_DEFAULTS`):
those settings default to ``None`` and :func:`checked` fills them in. The resolved configuration is
saved in the segmenter's ``.json`` (key ``config``), which ``--config`` reads back.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from liverscope.config import CHOICES as RUN_CHOICES
from liverscope.config import apply_section, check_device, nested_settings, yaml_mapping
from liverscope.errors import LiverscopeError, UsageError
from liverscope.explain.cams import method_key
from liverscope.segment.nnunet import ENGINES, NnunetOptions
from liverscope.segment.pseudo import PseudoOptions
from liverscope.segment.rules import RULES
from liverscope.segment.unet import (
    ARCHS,
    DEFAULT_CHANNELS,
    DEFAULT_TARGET,
    LOSSES,
    MASKS_DEFAULTS,
    PSEUDO_DEFAULTS,
    check_size,
    make_arch,
    segmenter_defaults,
    segmenter_files,
)

#: Settings of ``segment train`` whose value is one of a fixed set (the modules' own tuples).
CHOICES: dict[str, tuple[str, ...]] = {
    "pseudo.rule": RULES,
    "network.arch": ARCHS,
    "train.loss": LOSSES,
    "train.precision": RUN_CHOICES["train.precision"],
    "engine.name": ENGINES,
}


@dataclass
class PseudoConfig(PseudoOptions):
    """CAM pseudo-masks (without ``masks``): :class:`~liverscope.segment.pseudo.PseudoOptions` and what
    ``segment train`` does with the masks."""

    positive: list[str] | None = (
        None  # classes with something to outline: another predicted class gets an empty mask
    )
    confident: list[float] | None = None  # [LOW, HIGH]: train on confident CAM pixels only
    within: str | None = None  # a target of the run: CAMs are cut inside its predicted mask


@dataclass
class NetworkConfig:
    arch: str | None = (
        None  # attention-unet | unet-lite0/1/2; None: unet-lite0 with masks, attention-unet on pseudo-masks
    )
    channels: list[int] = field(
        default_factory=lambda: list(DEFAULT_CHANNELS)
    )  # Attention U-Net channels per level
    in_channels: int = 1  # Attention U-Net input: 1 (grey) or 3


@dataclass
class FitConfig:
    """The segmenter's fit (liverscope's engine; with nnU-Net only ``size``, ``seed``, ``device`` and the
    split apply, and ``epochs`` becomes nnU-Net's when ``engine.epochs`` is not given)."""

    loss: str | None = None  # bce | bce+dice; None: bce+dice with masks, bce on pseudo-masks
    epochs: int | None = None  # None: 30
    size: int | None = None  # U-Net input size; None: 192 with masks, else the classifier's input size
    batch_size: int = 8
    lr: float = 1e-3  # Adam
    patience: int | None = None  # early stopping on the validation Dice (None: train every epoch)
    seed: int = 0  # split, initialisation, shuffling and flips
    max_steps: int | None = None  # stop after this many optimiser steps (quick checks)
    precision: str = "auto"  # Lightning precision; auto as the classifier's
    flip: bool = True  # random horizontal flips of the training pairs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    test_frac: float = 0.2
    val_frac: float = 0.2


@dataclass
class EngineConfig(NnunetOptions):
    """Who trains: ``liverscope`` (Lightning) or ``nnunet`` with its
    :class:`~liverscope.segment.nnunet.NnunetOptions`."""

    name: str = "liverscope"


@dataclass
class SegmentConfig:
    target: str = DEFAULT_TARGET  # what the segmenter outlines (names its files)
    masks: str | None = None  # train on these masks instead of CAM pseudo-masks
    real_masks: str | None = None  # expert masks the held-out images are scored against
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: FitConfig = field(default_factory=FitConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = ("pseudo", "network", "train", "engine")

#: ``segment train``'s flags (and the keywords ``train_segmenter`` took before this config) → settings.
FLAGS: dict[str, str] = {
    "target": "target",
    "masks": "masks",
    "real_masks": "real_masks",
    **{
        k: f"pseudo.{k}"
        for k in (
            "rule",
            "threshold",
            "q",
            "flip_average",
            "method",
            "layers",
            "ensemble",
            "positive",
            "confident",
            "within",
        )
    },
    **{k: f"network.{k}" for k in ("arch", "channels", "in_channels")},
    **{
        k: f"train.{k}"
        for k in (
            "loss",
            "epochs",
            "size",
            "batch_size",
            "lr",
            "patience",
            "seed",
            "max_steps",
            "precision",
            "device",
            "test_frac",
            "val_frac",
        )
    },
    "engine": "engine.name",
    "nnunet_trainer": "engine.trainer",
}
_OPTION = {key: "--" + flag.replace("_", "-") for flag, key in FLAGS.items()}


def _example(hint: Any) -> Any:
    """An example value of a setting's type (``int | None`` → 0, ``list[float] | None`` → [0.0]),
    or ``None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if len(args) == 1 else hint
    if typing.get_origin(kind) is list:
        return [_example(typing.get_args(kind)[0])]
    return kind() if kind in (int, float, str, bool) else None


def _kinds() -> dict[str, Any]:
    """Example values of the settings whose default is ``None`` (their type, for text given to them)."""
    out = {}
    for prefix, cls in [("", SegmentConfig)] + [(s, type(getattr(SegmentConfig(), s))) for s in _SECTIONS]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.default is None and _example(hints[f.name]) is not None:
                out[f"{prefix}.{f.name}" if prefix else f.name] = _example(hints[f.name])
    return out


_KINDS = _kinds()


def apply_settings(cfg: SegmentConfig, values: dict[str, Any], origin: str) -> None:
    """Set nested ``values`` (a YAML mapping, or :func:`~liverscope.config.nested_settings` of flags)
    on ``cfg``."""
    if not isinstance(values, dict):
        raise UsageError(f"{origin}: expected a mapping of settings")
    top = {k: v for k, v in values.items() if k not in _SECTIONS}
    apply_section(cfg, top, "", origin, CHOICES, _KINDS)
    for key in _SECTIONS:
        if key in values:
            apply_section(getattr(cfg, key), values[key], key, origin, CHOICES, _KINDS)


def _read_file(path: str | Path) -> dict[str, Any]:
    """The settings of ``--config FILE``: a YAML file, or a segmenter's ``.json`` (its ``config``)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(
            f"--config {path}: no such file (give a YAML file of segment settings or a segmenter's .json)"
        )
    values = yaml_mapping(p.read_text(encoding="utf-8"), str(p))
    if p.suffix.lower() == ".json" and isinstance(values.get("config"), dict):
        return values["config"]
    return values


def parse_set(item: str) -> tuple[str, str]:
    """``--set KEY=VALUE`` as ``(KEY, VALUE)``, or a UsageError."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    return key.strip(), value.strip()


def load_segment_config(
    path: str | Path | None = None, flags: dict[str, Any] | None = None, settings: Sequence[str] = ()
) -> SegmentConfig:
    """The resolved configuration: defaults < ``path`` (YAML or a segmenter's ``.json``) < ``flags`` (by
    their flag names, :data:`FLAGS`; ``None`` = not given) < ``settings`` (``--set KEY=VALUE`` items),
    checked and with the defaults that depend on ``masks`` filled in (:func:`checked`). An error names
    where the value came from (the file, the flag, the ``--set`` item)."""
    cfg = SegmentConfig()
    if path is not None:
        apply_settings(cfg, _read_file(path), str(path))
    for name, value in (flags or {}).items():
        if name not in FLAGS:
            raise UsageError(f"unknown segment option '{name}' (known: {', '.join(sorted(FLAGS))})")
        apply_settings(cfg, nested_settings({FLAGS[name]: value}), _OPTION[FLAGS[name]])
    for item in settings:
        key, value = parse_set(item)
        apply_settings(cfg, nested_settings({key: value}), f"--set {item}")
    return checked(cfg)


def segment_config(**flags: Any) -> SegmentConfig:
    """:func:`load_segment_config` of keyword flags alone: ``segment_config(masks=DIR, epochs=5)``."""
    return load_segment_config(flags=flags)


def _name(key: str) -> str:
    return f"{key} ({_OPTION[key]})" if key in _OPTION else key


def _whole(value: Any, key: str, low: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{_name(key)} is {value!r}; give a whole number >= {low}")


def _fraction(value: Any, key: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UsageError(f"{_name(key)} is {value!r}; give a number in [{low}, {high}]")


def _as_list(value: Any, kind: type) -> list | None:
    return (
        None
        if value is None
        else [kind(v) for v in ([value] if isinstance(value, (str, int, float)) else value)]
    )


def _normalise(cfg: SegmentConfig) -> None:
    """Paths as text and sequences as lists (what YAML and JSON write), each checked for its kind."""
    try:
        for attr in ("masks", "real_masks"):
            setattr(cfg, attr, None if getattr(cfg, attr) is None else str(getattr(cfg, attr)))
        cfg.network.channels = _as_list(cfg.network.channels, int)
        cfg.pseudo.confident = _as_list(cfg.pseudo.confident, float)
        cfg.pseudo.positive = _as_list(cfg.pseudo.positive, str) or None
        cfg.pseudo.ensemble = _as_list(cfg.pseudo.ensemble, str)
        if isinstance(cfg.pseudo.layers, (list, tuple)):
            cfg.pseudo.layers = list(cfg.pseudo.layers)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"a list setting holds a value of the wrong kind: {exc}") from None


def _check_values(cfg: SegmentConfig) -> None:
    """Choices (a value set directly on the dataclass never passed :func:`apply_settings`), ranges,
    options that exclude each other."""
    for key in CHOICES:
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value not in CHOICES[key]:
            raise UsageError(f"{_name(key)} is {value!r}; choose one of: {', '.join(CHOICES[key])}")
    try:
        cfg.pseudo.method = method_key(cfg.pseudo.method)
    except LiverscopeError as exc:
        raise UsageError(f"{_name('pseudo.method')}: {exc}") from None
    segmenter_files(cfg.target)  # a lower-case name (UsageError)
    check_device(cfg.train.device, _name("train.device"))
    t = cfg.train
    for key, value, optional in (
        ("epochs", t.epochs, True),
        ("batch_size", t.batch_size, False),
        ("patience", t.patience, True),
        ("max_steps", t.max_steps, True),
        ("size", t.size, True),
    ):
        _whole(value, f"train.{key}", optional=optional)
    _fraction(cfg.pseudo.q, "pseudo.q", 0.0, 100.0)
    conf = cfg.pseudo.confident
    if conf is not None and not (len(conf) == 2 and 0 <= conf[0] < conf[1] <= 1):
        raise UsageError(
            f"{_name('pseudo.confident')} is {conf}: "
            "expected LOW,HIGH with 0 <= LOW < HIGH <= 1, e.g. 0.3,0.6"
        )
    if cfg.pseudo.within and cfg.masks is not None:
        raise UsageError(
            f"--within {cfg.pseudo.within} restricts CAM pseudo-masks; "
            "with --masks the targets are given: drop one of the two"
        )


def checked(cfg: SegmentConfig) -> SegmentConfig:
    """A copy of ``cfg`` checked (choices, ranges, options that exclude each other: UsageError, before
    any work) with the defaults that depend on ``masks`` filled in: ``network.arch``, ``train.loss``,
    ``train.epochs`` and ``train.size`` (:data:`MASKS_DEFAULTS` / :data:`PSEUDO_DEFAULTS`; the pseudo-mask
    size stays ``None``, the classifier's input size, until the run is read). With ``engine.name:
    nnunet`` the epochs are nnU-Net's: ``engine.epochs`` defaults to the ``train.epochs`` given, and
    ``train.epochs`` is not filled in. Checking a checked config changes nothing."""
    cfg = copy.deepcopy(cfg)
    _normalise(cfg)
    _check_values(cfg)
    masks = cfg.masks is not None
    arch, loss, epochs = segmenter_defaults(masks, cfg.network.arch, cfg.train.loss, cfg.train.epochs)
    cfg.network.arch, cfg.train.loss = arch, loss
    if cfg.engine.name == "nnunet":
        cfg.engine.epochs = cfg.engine.epochs if cfg.engine.epochs is not None else cfg.train.epochs
    else:
        cfg.train.epochs = epochs
    if masks and cfg.train.size is None:
        cfg.train.size = MASKS_DEFAULTS["size"]
    if cfg.train.size is not None:
        try:
            check_size(cfg.train.size, make_arch(arch, 1, cfg.network.channels)["strides"])
        except UsageError:
            raise
        except LiverscopeError as exc:
            raise UsageError(f"{_name('train.size')}: {exc}") from None
    return cfg


def fit_defaults(fit: FitConfig) -> FitConfig:
    """``fit`` with the loss and epochs of a fit on pseudo-masks where they are ``None``
    (``fit_unet``'s defaults)."""
    return dataclasses.replace(
        fit, loss=fit.loss or PSEUDO_DEFAULTS["loss"], epochs=int(fit.epochs or PSEUDO_DEFAULTS["epochs"])
    )


__all__ = [
    "CHOICES",
    "FLAGS",
    "PseudoConfig",
    "NetworkConfig",
    "FitConfig",
    "EngineConfig",
    "SegmentConfig",
    "apply_settings",
    "parse_set",
    "load_segment_config",
    "segment_config",
    "checked",
    "fit_defaults",
]
