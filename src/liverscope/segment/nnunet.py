"""nnU-Net as the segmenter's engine: ``segment train --engine nnunet`` (the ``liverscope[nnunet]`` extra).

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021) plans, preprocesses and trains a U-Net from a dataset alone; it is the
published reference on liver-lesion ultrasound (lesion Dice 0.65 on a GPU). liverscope does not imitate it:
it calls the ``nnunetv2`` package and keeps only the glue.

* :func:`write_raw_dataset`: the segmenter's inputs and targets (the same images, grid and grouped split
  as any other segmenter) as an nnU-Net raw dataset: ``DatasetXXX_Name/imagesTr/NAME_0000.png`` (grey),
  ``labelsTr/NAME.png`` (0/1), the held-out test images in ``imagesTs``/``labelsTs``, ``dataset.json`` and
  ``cases.csv`` (case → image path → split); :func:`write_splits` puts the run's train/val split into
  ``splits_final.json`` as fold 0, so nnU-Net never validates on a duplicate of a training image.
* :func:`fit_nnunet` runs nnU-Net's fingerprint, planning (``ExperimentPlanner``), preprocessing (``2d``)
  and training with one of its own trainer classes (``nnUNetTrainer`` by default; ``epochs`` /
  ``iterations`` make a subclass, as nnU-Net's ``nnUNetTrainer_Xepochs`` variants are, for short runs),
  then nnU-Net's own validation. It runs in a child process: nnU-Net reads ``nnUNet_raw``,
  ``nnUNet_preprocessed`` and ``nnUNet_results`` once, when it is imported, and they point inside the run
  (``RUN_DIR/nnunet[-TARGET]/``). Its output goes to ``nnunet/log.txt``.
* :class:`NnUNetNetwork` is the trained network as a liverscope segmenter: a torch module whose weights
  (the final checkpoint's, nnU-Net's default for inference) are saved as ``segmenter.safetensors`` like
  any other segmenter, with plans and ``dataset.json`` in ``segmenter.json``; its ``forward`` hands each
  image to nnU-Net's ``nnUNetPredictor`` (its preprocessing, sliding window and mirroring) and returns
  the foreground logit, so ``segment predict``, the app and the report use it unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from liverscope.data.io import to_grey
from liverscope.errors import LiverscopeError, UsageError
from liverscope.rundir import (
    NNUNET_CASES,
    NNUNET_CONFIG,
    NNUNET_LOG,
    NNUNET_TRAINED,
    NNUNET_WEIGHTS,
    load_weights,
)
from liverscope.segment.nnunet_network import (
    CONFIGURATION,
    NNUNET_ARCH,
    PIXELS,
    NnUNetNetwork,
    build_nnunet,
    nnunet_arch,
    nnunet_version,
    unique_tensors,
)
from liverscope.utils import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_png,
    import_optional,
    log,
    read_json,
)

#: ``segment train --engine``: liverscope's own U-Nets (Lightning) or nnU-Net.
ENGINES = ("liverscope", "nnunet")
#: nnU-Net's dataset number: one dataset per run and target, each in its own folder, so one number serves.
DATASET_ID = 501
FOLD = 0
DEFAULT_TRAINER = "nnUNetTrainer"
#: The lines of nnU-Net's output that are worth showing while it trains (all of it goes to log.txt).
_SHOWN = re.compile(
    r"Epoch \d+|Pseudo dice|train_loss|val_loss|Epoch time|New best|Mean Validation Dice|Traceback|Error"
)


def nnunet_dir(target: str) -> str:
    """The folder of the nnU-Net engine inside a run: ``nnunet`` (lesion), ``nnunet-T`` (target T)."""
    return "nnunet" if target == "lesion" else f"nnunet-{target}"


def dataset_name(target: str) -> str:
    """nnU-Net's name of the dataset of ``target``: ``Dataset501_lesion``."""
    return f"Dataset{DATASET_ID:03d}_{target}"


def check_engine(engine: str, *, confident=None) -> str:
    """``engine`` when it is known and usable (before any work): nnU-Net needs its extra and trains on
    whole masks (no per-pixel weights).

    Raises:
        UsageError: an unknown engine, or ``--confident`` with nnU-Net.
        LiverscopeError: ``nnunet`` without the ``nnunetv2`` package (names ``pip install 'liverscope[nnunet]'``).
    """
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if engine == "nnunet":
        if confident is not None:
            raise UsageError(
                "--confident trains on confident pixels only; nnU-Net trains on whole masks: drop --confident or use --engine liverscope"
            )
        import_optional("nnunetv2", "nnunet", "--engine nnunet")
    return engine


# --------------------------------------------------------------------------------------------------
# the raw dataset
# --------------------------------------------------------------------------------------------------


def grey_at(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 image as the grey ``size x size`` picture the segmenter sees (as ``to_unet_input`` makes it)."""
    im = np.asarray(image)
    if im.shape[0] != size or im.shape[1] != size:
        im = cv2.resize(
            im, (size, size), interpolation=cv2.INTER_AREA if min(im.shape[:2]) > size else cv2.INTER_LINEAR
        )
    return to_grey(im)


def write_raw_dataset(
    folder: str | Path,
    images: Sequence[np.ndarray],
    masks: np.ndarray,
    split: Sequence[str],
    paths: Sequence[str],
    label: str,
    size: int,
) -> dict:
    """The segmenter's images and targets as an nnU-Net raw dataset in ``folder`` (``DatasetXXX_Name``).

    Train and validation images go to ``imagesTr`` (``case_NNNN_0000.png``, grey) and ``labelsTr``
    (``case_NNNN.png``, 0 background / 1 ``label``); test images to ``imagesTs``/``labelsTs``, never seen by
    nnU-Net's planning or training. ``cases.csv`` maps each case to its image and split.

    Returns:
        ``{"folder", "cases", "splits"}``: case names in input order, nnU-Net's ``splits_final.json`` content.
    """
    folder, split = Path(folder), np.asarray(split).astype(str)
    if not (len(images) == len(masks) == len(split) == len(paths)):
        raise LiverscopeError(
            f"{len(images)} images, {len(masks)} masks, {len(split)} split labels and {len(paths)} paths: they must match"
        )
    cases = [f"case_{i:04d}" for i in range(len(images))]
    for case, im, m, s in zip(cases, images, masks, split):
        sub = "Ts" if s == "test" else "Tr"
        atomic_write_png(folder / f"images{sub}" / f"{case}_0000.png", grey_at(im, size))
        atomic_write_png(
            folder / f"labels{sub}" / f"{case}.png",
            cv2.resize(np.asarray(m, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST),
        )
    n_train = int(np.isin(split, ("train", "val")).sum())
    atomic_write_json(
        folder / "dataset.json",
        {
            "channel_names": {"0": "ultrasound"},
            "labels": {"background": 0, label: 1},
            "numTraining": n_train,
            "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO",
            "name": folder.name,
            "description": f"liverscope segmenter inputs ({size} px, grey) and '{label}' masks; test images in imagesTs",
        },
    )
    atomic_write_csv(folder / NNUNET_CASES, ["case", "path", "split"], zip(cases, paths, split))
    return {"folder": folder, "cases": cases, "splits": nnunet_splits(cases, split)}


def nnunet_splits(cases: Sequence[str], split: Sequence[str]) -> list[dict]:
    """nnU-Net's ``splits_final.json``: one fold (fold 0) whose train and val are the run's; test cases are in neither."""
    split = np.asarray(split).astype(str)
    fold = {
        "train": [c for c, s in zip(cases, split) if s == "train"],
        "val": [c for c, s in zip(cases, split) if s == "val"],
    }
    if not fold["train"] or not fold["val"]:
        raise LiverscopeError(
            f"nnU-Net needs training and validation images: the split has {len(fold['train'])} train and {len(fold['val'])} val"
        )
    return [fold]


def write_splits(preprocessed: str | Path, splits: list[dict]) -> Path:
    """``splits_final.json`` where nnU-Net reads it (``nnUNet_preprocessed/DatasetXXX_Name/``)."""
    path = Path(preprocessed) / "splits_final.json"
    atomic_write_json(path, splits)
    return path


# --------------------------------------------------------------------------------------------------
# planning, preprocessing and training (in a child process)
# --------------------------------------------------------------------------------------------------


def short_trainer(
    base: type, epochs: int | None = None, iterations: int | None = None, val_iterations: int | None = None
) -> type:
    """A subclass of nnU-Net trainer ``base`` with fewer epochs and/or iterations per epoch (as nnU-Net's own
    ``nnUNetTrainer_Xepochs`` are); ``base`` when nothing changes."""
    if not (epochs or iterations or val_iterations):
        return base
    changes = {
        "num_epochs": epochs,
        "num_iterations_per_epoch": iterations,
        "num_val_iterations_per_epoch": val_iterations,
    }

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        for key, value in changes.items():
            if value:
                setattr(self, key, int(value))

    name = base.__name__ + "".join(
        f"_{int(v)}{k}"
        for k, v in (("epochs", epochs), ("iters", iterations), ("valiters", val_iterations))
        if v
    )
    return type(name, (base,), {"__init__": __init__, "__module__": __name__})


def _history(logging: dict) -> list[dict]:
    """Per epoch: nnU-Net's train and val loss and its pseudo Dice (and moving average) on validation patches."""
    n = min(len(logging.get(k, [])) for k in ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice"))
    return [
        {
            "epoch": i + 1,
            "loss": float(logging["train_losses"][i]),
            "val_loss": float(logging["val_losses"][i]),
            "val_dice": float(logging["mean_fg_dice"][i]),
            "val_dice_ema": float(logging["ema_fg_dice"][i]),
        }
        for i in range(n)
    ]


def run_worker(config_path: str) -> None:
    """The child process of :func:`fit_nnunet`: nnU-Net's planning, preprocessing, training and validation
    with the settings of ``config_path`` (JSON); the final weights go to ``weights.safetensors`` and what
    rebuilds the network to ``trained.json`` beside it. The ``nnUNet_*`` folders come from the environment."""
    import nnunetv2
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from safetensors.torch import save_file

    cfg = read_json(config_path)
    out, n = Path(config_path).parent, int(cfg["processes"])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    base = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
        cfg["trainer"],
        "nnunetv2.training.nnUNetTrainer",
    )
    if base is None:
        raise SystemExit(f"nnU-Net has no trainer class {cfg['trainer']!r} (nnunetv2.training.nnUNetTrainer)")
    extract_fingerprints(
        [DATASET_ID], num_processes=n, check_dataset_integrity=True, clean=True, verbose=False
    )
    plans_id = plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], plans_id, configurations=(CONFIGURATION,), num_processes=(n,), verbose=False)
    pre = Path(nnUNet_preprocessed) / cfg["dataset"]
    plans, dataset_json = read_json(pre / f"{plans_id}.json"), read_json(pre / "dataset.json")
    if CONFIGURATION not in plans["configurations"]:
        raise SystemExit(f"nnU-Net planned no {CONFIGURATION} configuration for {cfg['dataset']}")
    if (
        cfg.get("augment_processes") is not None
    ):  # read when the trainer builds its data loaders (0 breaks planning: not before)
        os.environ["nnUNet_n_proc_DA"] = str(int(cfg["augment_processes"]))
    trainer_cls = short_trainer(base, cfg.get("epochs"), cfg.get("iterations"), cfg.get("val_iterations"))
    trainer = trainer_cls(
        plans={**plans, "continue_training": bool(cfg["resume"])},
        configuration=CONFIGURATION,
        fold=FOLD,
        dataset_json=dataset_json,
        device=torch.device(cfg["device"]),
    )
    maybe_load_checkpoint(trainer, bool(cfg["resume"]), False)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    final = Path(trainer.output_folder) / "checkpoint_final.pth"
    ckpt = torch.load(final, map_location="cpu", weights_only=False)  # nnU-Net's own checkpoint, just written
    save_file(
        {k: v.contiguous() for k, v in unique_tensors(ckpt["network_weights"]).items()},
        str(out / NNUNET_WEIGHTS),
    )
    summary = Path(trainer.output_folder) / "validation" / "summary.json"
    val = read_json(summary)["foreground_mean"] if summary.is_file() else {}
    atomic_write_json(
        out / NNUNET_TRAINED,
        {
            "trainer": trainer_cls.__name__,
            "base_trainer": base.__name__,
            "plans_identifier": plans_id,
            "plans": plans,
            "dataset_json": dataset_json,
            "mirror_axes": list(ckpt.get("inference_allowed_mirroring_axes") or []),
            "epochs": int(trainer.num_epochs),
            "iterations": int(trainer.num_iterations_per_epoch),
            "val_iterations": int(trainer.num_val_iterations_per_epoch),
            "batch_size": int(trainer.batch_size),
            "lr": float(trainer.initial_lr),
            "patch_size": list(trainer.configuration_manager.patch_size),
            "history": _history(ckpt.get("logging") or {}),
            "validation": val,
            "results": str(Path(trainer.output_folder)),
            "nnunet_version": nnunet_version(),
        },
    )


def nnunet_env(work_dir: Path, device: str, processes: int) -> tuple[dict, str]:
    """The child's environment (``nnUNet_raw/preprocessed/results`` inside ``work_dir``; nnU-Net's worker
    processes unless the user set ``nnUNet_def_n_proc``) and the device it trains on (nnU-Net uses the first visible GPU:
    ``cuda:N`` becomes ``CUDA_VISIBLE_DEVICES=N``)."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "nnUNet_raw": str(work_dir / "raw"),
        "nnUNet_preprocessed": str(work_dir / "preprocessed"),
        "nnUNet_results": str(work_dir / "results"),
    }
    env.setdefault("nnUNet_def_n_proc", str(processes))
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"], device = device.split(":", 1)[1], "cuda"
    return env, device


def _run_child(config: Path, env: dict, log_path: Path) -> None:
    """Run :func:`run_worker` in a fresh interpreter; its output goes to ``log_path`` (progress lines also to the log)."""
    code = "import sys; from liverscope.segment.nnunet import run_worker; run_worker(sys.argv[1])"
    tail: deque[str] = deque(maxlen=25)
    with open(log_path, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:
            fh.write(line)
            fh.flush()
            tail.append(line.rstrip())
            if _SHOWN.search(line):
                log(f"nnU-Net: {line.strip()}")
        rc = proc.wait()
    if rc != 0:
        raise LiverscopeError(
            f"nnU-Net failed (exit {rc}); its output is in {log_path}. Last lines:\n" + "\n".join(tail)
        )


@dataclass
class NnunetOptions:
    """How nnU-Net trains (:func:`fit_nnunet`; the ``engine`` settings of ``segment train``)."""

    #: an nnU-Net trainer class by name (``nnUNetTrainer``: 1000 epochs of 250 iterations;
    #: ``nnUNetTrainer_100epochs`` and the like are nnU-Net's shorter ones)
    trainer: str = DEFAULT_TRAINER
    #: override the trainer's epochs, iterations per epoch, validation iterations
    #: (a subclass: :func:`short_trainer`)
    epochs: int | None = None
    iterations: int | None = None
    val_iterations: int | None = None
    #: nnU-Net's worker processes for fingerprint, preprocessing and export (default: the
    #: ``nnUNet_def_n_proc`` environment variable, else up to 8)
    processes: int | None = None
    #: data-augmentation processes (``nnUNet_n_proc_DA``; default nnU-Net's, 0 on CPU)
    augment_processes: int | None = None
    #: torch threads of the training process on CPU (default: half the cores)
    threads: int | None = None


def _write_dataset(
    work_dir: Path,
    name: str,
    images: Sequence[np.ndarray],
    masks: np.ndarray,
    split: np.ndarray,
    paths: Sequence[str],
    label: str,
    size: int,
) -> dict:
    """:func:`write_raw_dataset` into ``work_dir/raw/NAME`` (an earlier fit's cases removed first) and the
    run's split as ``work_dir/preprocessed/NAME/splits_final.json``; returns :func:`write_raw_dataset`'s dict."""
    if (
        work_dir / "raw" / name
    ).is_dir():  # an earlier fit's cases (another data set or split) must not linger
        shutil.rmtree(work_dir / "raw" / name)
    raw = write_raw_dataset(work_dir / "raw" / name, images, masks, split, paths, label, size)
    write_splits(work_dir / "preprocessed" / name, raw["splits"])
    return raw


def _write_config(
    work_dir: Path,
    name: str,
    options: NnunetOptions,
    device: str,
    child_device: str,
    processes: int,
    resume: bool,
) -> Path:
    """The child's settings (:func:`run_worker`) as ``work_dir/config.json``: on a CPU, augmentation in the
    training process and half the cores unless the options or the environment say otherwise."""
    augment_processes = options.augment_processes
    if augment_processes is None and device == "cpu" and "nnUNet_n_proc_DA" not in os.environ:
        augment_processes = (
            0  # on a CPU the network is the bottleneck: augment in the training process itself
        )
    config = work_dir / NNUNET_CONFIG
    atomic_write_json(
        config,
        {
            "dataset": name,
            "trainer": options.trainer,
            "epochs": options.epochs,
            "iterations": options.iterations,
            "val_iterations": options.val_iterations,
            "device": child_device,
            "resume": bool(resume),
            "processes": processes,
            "augment_processes": augment_processes,
            "threads": options.threads or (max(1, (os.cpu_count() or 1) // 2) if device == "cpu" else None),
        },
    )
    return config


def _train_in_child(
    config: Path, env: dict, work_dir: Path, raw: dict, options: NnunetOptions, device: str
) -> float:
    """nnU-Net's planning, preprocessing and training in the child process (:func:`_run_child`), an
    earlier fit's trained network removed first; returns the seconds it took."""
    for old in (NNUNET_TRAINED, NNUNET_WEIGHTS):
        (work_dir / old).unlink(missing_ok=True)
    trainer, epochs, iterations = options.trainer, options.epochs, options.iterations
    log(
        f"nnU-Net: {len(raw['splits'][0]['train'])} train / {len(raw['splits'][0]['val'])} val cases in {raw['folder']}; "
        f"planning, preprocessing and training ({trainer}"
        + "".join(f", {k} {v}" for k, v in (("epochs", epochs), ("iterations", iterations)) if v)
        + f") on {device}; nnU-Net's output in {work_dir / NNUNET_LOG}"
    )
    t0 = time.perf_counter()
    _run_child(config, env, work_dir / NNUNET_LOG)
    return time.perf_counter() - t0


def _trained_details(trained: dict) -> dict:
    """What ``info["nnunet"]`` keeps of the child's ``trained.json``."""
    return {
        k: trained[k]
        for k in (
            "trainer",
            "base_trainer",
            "plans_identifier",
            "iterations",
            "val_iterations",
            "patch_size",
            "results",
            "validation",
            "nnunet_version",
        )
    }


def _fit_info(trained: dict, arch: dict, details: dict, *, seconds: float, size: int, resume: bool) -> dict:
    """:func:`fit_nnunet`'s ``info`` from the child's ``trained.json``, as ``fit_unet``'s."""
    history, val_dice = trained["history"], trained["validation"].get("Dice")
    return {
        "best_epoch": len(history),
        "best_val_dice": None if val_dice is None else float(val_dice),
        "epochs_run": len(history),
        "history": history,
        "seconds": round(seconds, 1),
        "architecture": arch,
        "arch": "nnunet",
        "in_channels": 1,
        "size": size,
        "loss": "nnU-Net's Dice + cross-entropy (deep supervision)",
        "epochs": trained["epochs"],
        "lr": trained["lr"],
        "batch_size": trained["batch_size"],
        "engine": "nnunet",
        "resumed": bool(resume),
        "initial_weights": "random initialisation (nnU-Net)",
        "nnunet": details,
    }


def fit_nnunet(
    images: Sequence[np.ndarray],
    masks: np.ndarray,
    split: Sequence[str],
    options: NnunetOptions | None = None,
    *,
    size: int,
    paths: Sequence[str],
    work_dir: str | Path,
    label: str = "lesion",
    device: str = "cpu",
    resume: bool = False,
) -> tuple[NnUNetNetwork, dict]:
    """Train nnU-Net on ``(image, mask)`` pairs with the given split, as ``fit_unet`` trains liverscope's U-Nets.

    Args:
        images: uint8 images (each becomes the grey ``size x size`` picture the segmenter sees).
        masks: bool ``N x H x W`` targets.
        split: ``train`` / ``val`` / ``test`` per image: fold 0 of ``splits_final.json``; test images are
            written to ``imagesTs`` and take no part.
        size: the segmenter's input size.
        paths: each image's source (``cases.csv``).
        work_dir: the engine's folder in the run (``raw/``, ``preprocessed/``, ``results/``, ``log.txt``).
        label: the foreground's name in ``dataset.json`` (the target).
        options: the trainer and its overrides, processes and threads (:class:`NnunetOptions`;
            default: nnU-Net's).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue nnU-Net's interrupted training from its latest checkpoint.

    Returns:
        ``(network on device in eval mode, info)``; ``info`` as ``fit_unet``'s (``history``, ``best_epoch``,
        ``best_val_dice`` = nnU-Net's validation Dice of the final model, ``seconds``, ``architecture``) and
        ``nnunet`` (trainer, plans identifier, patch and batch size, folders).
    """
    check_engine("nnunet")
    o = options or NnunetOptions()
    work_dir = Path(work_dir).resolve()
    masks, split = np.asarray(masks, bool), np.asarray(split).astype(str)
    name = dataset_name(label)
    processes = int(o.processes or os.environ.get("nnUNet_def_n_proc") or min(8, os.cpu_count() or 1))
    env, child_device = nnunet_env(work_dir, device, processes)
    raw = _write_dataset(work_dir, name, images, masks, split, paths, label, size)
    config = _write_config(work_dir, name, o, device, child_device, processes, resume)
    seconds = _train_in_child(config, env, work_dir, raw, o, device)
    trained = read_json(work_dir / NNUNET_TRAINED)
    arch = nnunet_arch(trained)
    model = NnUNetNetwork(arch)
    model.load_state_dict(load_weights(work_dir / NNUNET_WEIGHTS))
    model.to(device).eval()
    details = {**_trained_details(trained), "dataset": str(raw["folder"]), "log": str(work_dir / NNUNET_LOG)}
    return model, _fit_info(trained, arch, details, seconds=seconds, size=size, resume=resume)


__all__ = [
    "ENGINES",
    "NNUNET_ARCH",
    "DATASET_ID",
    "PIXELS",
    "nnunet_dir",
    "dataset_name",
    "check_engine",
    "grey_at",
    "write_raw_dataset",
    "nnunet_splits",
    "write_splits",
    "short_trainer",
    "run_worker",
    "nnunet_env",
    "fit_nnunet",
    "nnunet_arch",
    "NnUNetNetwork",
    "build_nnunet",
    "NnunetOptions",
]
