"""Datasets: class-per-folder trees, CSV manifests, the synthetic phantom generator, and what a run
was trained on (:func:`describe_data`: path, images, sources, whether the data were the phantoms).

Folder layout (what ``torchvision.datasets.ImageFolder`` reads): ``ROOT/<label>/<image>``; a folder
named ``masks`` beside the class folders holds segmentation masks, not a class, and is skipped.
Manifest layout: a CSV with columns ``path,label`` and optional ``group`` (patient or study ID: images
of one group never straddle splits) and ``source`` (scanner / site); relative paths are taken from the
manifest's folder.

DICOM files name their patient: a DICOM sample without a manifest group gets the one-way hash of its
PatientID (else StudyInstanceUID) as its group (:func:`liverscope.data.io.dicom_header`), so one
patient's images never straddle a split. A cine loop is one sample (its middle frame) or, with
``frames="all"`` / ``"every:N"``, one sample per selected frame, all of them in one group.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from liverscope.config import parse_frames
from liverscope.data.io import IMAGE_SUFFIXES, dicom_header, frame_indices, sniff_format
from liverscope.data.preprocess import PreprocessCache
from liverscope.errors import ImageReadError, LiverscopeError
from liverscope.labels import METAVIR
from liverscope.utils import atomic_write_json, atomic_write_png, progress

#: folder names under a dataset root that are not classes
RESERVED_DIRS = {"masks", "mask", "__MACOSX"}
#: The file :func:`make_phantoms` leaves in a phantom set, so a run trained on it can say its data were
#: synthetic phantoms (:func:`describe_data`, recorded in ``model.json["training_data"]``).
PHANTOM_MARKER = "liverscope-phantoms.json"


@dataclass
class Sample:
    """One labelled image: a file, or one frame of a DICOM cine loop."""

    path: Path
    label: str
    group: str | None = None
    source: str | None = None
    sha256: str | None = None
    frame: int | None = None  # frame of a cine loop; None: a still image, or the loop's middle frame


def _is_candidate(p: Path) -> bool:
    return (
        p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES | {".jpe", ".dcm"}
    )


def scan_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
    """List a class-per-folder tree.

    Returns:
        ``(samples, class_names)``; class names sorted (natural order: F0 < F1 < ... < F10).
    """
    root = Path(root)
    if not root.is_dir():
        raise LiverscopeError(f"{root}: not a folder (give a class-per-folder tree or a CSV manifest)")
    classes = sorted(
        (
            d.name
            for d in root.iterdir()
            if d.is_dir() and d.name not in RESERVED_DIRS and not d.name.startswith(".")
        ),
        key=natural_key,
    )
    samples = []
    for c in classes:
        for p in sorted((root / c).rglob("*")):
            if _is_candidate(p):
                samples.append(Sample(p, c))
    if not classes or not samples:
        raise LiverscopeError(
            f"{root}: no class folders with images found (expected {root}/<label>/<image files>)"
        )
    return samples, classes


def natural_key(s: str):
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def read_manifest(path: str | Path) -> tuple[list[Sample], list[str]]:
    """Read a CSV manifest ``path,label[,group][,source]``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LiverscopeError(f"{path}: cannot read manifest ({exc})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise LiverscopeError(f"{path}: a manifest needs a header with at least 'path' and 'label' columns")
    samples = []
    for i, r in enumerate(rows, start=2):
        if not r.get("path") or not r.get("label"):
            raise LiverscopeError(f"{path}, line {i}: empty path or label")
        p = Path(r["path"])
        if not p.is_absolute():
            p = path.parent / p
        samples.append(Sample(p, r["label"].strip(), (r.get("group") or None), (r.get("source") or None)))
    classes = sorted({s.label for s in samples}, key=natural_key)
    return samples, classes


def load_samples(data: str | Path, frames: str = "middle") -> tuple[list[Sample], list[str]]:
    """Samples and class names from a folder tree or a ``.csv`` manifest, with the patient groups and
    cine frames of its DICOM files (:func:`dicom_samples`).

    Args:
        data: class-per-folder root or CSV manifest.
        frames: ``middle`` (one sample per file), ``all`` or ``every:N`` (one per selected frame of a
            cine loop), as ``data.frames``.
    """
    parse_frames(frames)  # a wrong setting fails before the data is listed
    data = Path(data)
    if not data.exists():
        raise LiverscopeError(f"{data}: does not exist (give a class-per-folder tree or a CSV manifest)")
    if data.is_file() and data.suffix.lower() == ".csv":
        samples, classes = read_manifest(data)
    else:
        samples, classes = scan_folder(data)
    return dicom_samples(samples, frames), classes


def dicom_samples(samples: Sequence[Sample], frames: str = "middle") -> list[Sample]:
    """The samples with their DICOM patient groups filled in and their cine loops expanded.

    A DICOM sample without a group (none in the manifest) gets its patient's group, a one-way hash of
    PatientID or else StudyInstanceUID (:func:`liverscope.data.io.dicom_header`; the identifier is never
    kept). With ``frames`` ``all`` or ``every:N`` a multi-frame file becomes one sample per selected
    frame (:func:`liverscope.data.io.frame_indices`), all in one group: the patient's, else one named
    after a hash of the file's path. Other samples pass through unchanged (``middle``: one per file,
    ``frame=None``, as a still image). Only headers are read, each once.
    """
    kind, _ = parse_frames(frames)
    out: list[Sample] = []
    for s in progress(samples, "reading DICOM headers"):
        header = dicom_header(s.path)
        if header is None:
            out.append(s)
            continue
        group = s.group or header.group
        if kind == "middle" or header.frames == 1:
            out.append(dataclasses.replace(s, group=group))
            continue
        if group is None:  # no patient named: the loop's own frames must still stay together
            group = "file-" + hashlib.sha256(str(s.path).encode()).hexdigest()[:16]
        out.extend(dataclasses.replace(s, group=group, frame=i) for i in frame_indices(header.frames, frames))
    return out


def check_readable(samples: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Cheap content check (magic number) of every file: returns (good, [(path, reason), ...])."""
    good, bad = [], []
    for s in samples:
        try:
            with open(s.path, "rb") as fh:
                head = fh.read(132)
        except OSError as exc:
            bad.append((str(s.path), f"cannot open ({exc.strerror})"))
            continue
        if not head:
            bad.append((str(s.path), "file is empty (0 bytes)"))
        elif sniff_format(head) is None:
            bad.append((str(s.path), "not a PNG, JPEG, BMP, TIFF or DICOM file"))
        else:
            good.append(s)
    return good, bad


def warm_cache(
    samples: list[Sample], cache: PreprocessCache, workers: int = 2
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode and preprocess every sample once (in threads: OpenCV releases the GIL), dropping files
    that fail with the reason. Returns ``(good, skipped)``."""

    def work(s: Sample):
        try:
            cache.load(s.path, s.frame)
            return None
        except ImageReadError as exc:
            return (str(s.path), f"{exc.reason}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results = list(ex.map(work, samples))
    good = [s for s, r in zip(samples, results) if r is None]
    skipped = [r for r in results if r is not None]
    return good, skipped


class ImageDataset:
    """Labelled images through the preprocessing cache and a transform: a map-style dataset for
    ``torch.utils.data.DataLoader`` (which needs only ``__len__`` and ``__getitem__``). It does not
    subclass ``torch.utils.data.Dataset`` so that listing and auditing data never imports torch
    (0.75 GB and ~3 s of start-up for ``liverscope audit``).

    Args:
        samples: the images.
        class_names: label order (index = class id).
        cache: preprocessing (and its disk cache).
        transform: uint8 ``HxWx3`` → tensor (see :mod:`liverscope.data.augment`).
        in_memory: keep preprocessed arrays in RAM after first use (224² RGB is 150 kB an image).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        cache: PreprocessCache,
        transform,
        in_memory: bool = True,
    ):
        self.samples = list(samples)
        self.class_names = list(class_names)
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted({s.label for s in self.samples} - set(index))
        if unknown:
            raise LiverscopeError(f"labels {unknown} are not in the model's label set {self.class_names}")
        self.targets = [index[s.label] for s in self.samples]
        self.cache = cache
        self.transform = transform
        self.in_memory = in_memory
        self._memory: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> np.ndarray:
        if i in self._memory:
            return self._memory[i]
        arr = self.cache.load(self.samples[i].path, self.samples[i].frame)
        if self.in_memory:
            self._memory[i] = arr
        return arr

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), self.targets[i]


# --------------------------------------------------------------------------------------------------
# Synthetic phantoms
# --------------------------------------------------------------------------------------------------


def _fan_mask(size: int, half_angle: float = 0.62, r0: float = 0.12, r1: float = 0.95) -> np.ndarray:
    """Convex-probe scan sector: apex above the top centre, between radii r0 and r1 (fractions)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ay, ax = -0.05 * size, size / 2
    r = np.hypot(yy - ay, xx - ax) / size
    theta = np.arctan2(xx - ax, yy - ay)
    return (r >= r0 + 0.05) & (r <= r1) & (np.abs(theta) <= half_angle)


def make_phantom(
    stage: int, n_stages: int = 5, size: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic ultrasound-like phantom and its lesion mask.

    Liver parenchyma inside a convex scan sector: multiplicative speckle (Rayleigh) whose grain
    coarsens with stage, plus hyperechoic nodules (fibrotic regions) whose number grows with stage.
    Outside the sector: black, with a fixed text-like marker and a depth scale (not tissue: the same in
    every class, so a model that reads it learns nothing).

    Args:
        stage: class index 0..n_stages-1 (0 = normal).
        n_stages: number of classes.
        size: image side in pixels.
        seed: makes the image; the same (stage, seed, size) always gives the same image.

    Returns:
        ``(image uint8 HxW, mask bool HxW)`` — the mask marks the nodules.
    """
    rng = np.random.default_rng([int(seed), int(stage), int(size)])
    frac = stage / max(1, n_stages - 1)
    sector = _fan_mask(size)
    # speckle: Rayleigh noise low-passed to a grain that coarsens with stage
    speckle = rng.rayleigh(1.0, (size, size)).astype(np.float32)
    sigma = size / 128 * (0.6 + 1.6 * frac)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigma)
    speckle /= speckle.mean() + 1e-6
    depth = np.linspace(1.0, 0.7, size, dtype=np.float32)[:, None]  # attenuation with depth
    base = 95.0 + rng.normal(0, 6)
    img = base * depth * (1 + (speckle - 1) * (1.2 + 0.6 * frac))
    # nodules: count and contrast grow with stage
    mask = np.zeros((size, size), np.uint8)
    n_nodules = int(round(frac * 9)) + int(rng.integers(0, 2))
    ys, xs = np.nonzero(_fan_mask(size, half_angle=0.5, r0=0.2, r1=0.85))
    for _ in range(n_nodules):
        j = rng.integers(len(ys))
        radius = max(2, int(size * rng.uniform(0.035, 0.06)))
        cv2.circle(mask, (int(xs[j]), int(ys[j])), radius, 1, -1)
    m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.5, size / 256))
    img = img + m * (55 + 25 * frac)
    img = np.where(sector, img, 0.0)
    out = np.clip(img, 0, 255).astype(np.uint8)
    # burnt-in annotations outside the sector, identical in every class
    cv2.putText(out, "LIV", (2, max(8, size // 14)), cv2.FONT_HERSHEY_PLAIN, max(0.5, size / 256), 255, 1)
    for k in range(5):
        y = int(size * (0.06 + 0.07 * k))
        cv2.line(out, (size - max(4, size // 32), y), (size - 1, y), 200, 1)
    return out, (mask.astype(bool) & sector)


def make_phantoms(
    out_dir: str | Path,
    n_per_class: int = 60,
    classes: Sequence[str] = METAVIR,
    size: int = 128,
    seed: int = 0,
    masks: bool = True,
) -> Path:
    """Write a class-per-folder phantom set (PNG) to ``out_dir``; masks in ``out_dir/masks``.

    Idempotent: files already present with the same parameters are kept.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / PHANTOM_MARKER,
        {
            "generator": "liverscope.data.datasets.make_phantoms",
            "classes": list(classes),
            "n_per_class": n_per_class,
            "size": size,
            "seed": seed,
        },
    )
    for k, c in enumerate(classes):
        (out / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            name = f"{c}_{i:04d}.png"
            target = out / c / name
            mask_path = out / "masks" / name
            if target.exists() and (not masks or mask_path.exists()):
                continue
            img, mask = make_phantom(k, len(classes), size, seed * 100003 + i)
            atomic_write_png(target, img)
            if masks:
                atomic_write_png(mask_path, mask)
    return out


def is_phantom_set(path: str | Path) -> bool:
    """Whether ``path`` is a folder :func:`make_phantoms` wrote (it holds :data:`PHANTOM_MARKER`)."""
    return (Path(path) / PHANTOM_MARKER).is_file()


def describe_data(path: str | Path, sources: Iterable[str | None] | None) -> dict:
    """What a model was trained on, as ``model.json["training_data"]`` records it.

    Args:
        path: the data folder or manifest (made absolute when it exists).
        sources: the acquisition source of every image (the audit's; ``None``: not known).

    Returns:
        ``{"path", "images" (None: not known), "sources": {name: images}, "synthetic_phantoms"}``;
        ``synthetic_phantoms`` is ``None`` when ``path`` no longer exists to tell.
    """
    p = Path(path)
    counts = Counter(s or "unknown" for s in sources) if sources is not None else Counter()
    return {
        "path": str(p.resolve() if p.exists() else p),
        "images": sum(counts.values()) if sources is not None else None,
        "sources": dict(counts.most_common()),
        "synthetic_phantoms": is_phantom_set(p) if p.exists() else None,
    }


def inverse_frequency_weights(targets: Sequence[int], n_classes: int) -> np.ndarray:
    """Class weights w_i = N / (K · n_i) (the multi-disease study's weighted cross-entropy)."""
    counts = np.bincount(np.asarray(targets, int), minlength=n_classes).astype(np.float64)
    n = counts.sum()
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, n / (n_classes * np.maximum(counts, 1)), 0.0)
    return w


__all__ = [
    "Sample",
    "scan_folder",
    "read_manifest",
    "load_samples",
    "dicom_samples",
    "check_readable",
    "warm_cache",
    "ImageDataset",
    "make_phantom",
    "make_phantoms",
    "PHANTOM_MARKER",
    "is_phantom_set",
    "describe_data",
    "inverse_frequency_weights",
    "natural_key",
]
