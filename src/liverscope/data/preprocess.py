"""Preprocessing: scan-sector mask and crop, resize, non-local-means denoising, and a cache.

The seed study (EfficientNet + Grad-CAM) denoises each colour image with OpenCV's non-local means at
full resolution, then resizes to 224 and normalises with ImageNet statistics. NLM on a 640x480 colour
image costs ~100 ms; on the 224x224 grey image (ultrasound B-mode is grey) it costs a few ms, which is
why ``denoise_at="model"`` is the default. ``denoise_at="full"`` keeps the study's order.

Each (file content, parameters) pair is preprocessed once and stored as a ``.npy`` file keyed by the
content's SHA-256 and a hash of the parameters, so later epochs, folds and runs read it back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from liverscope.config import IMAGENET_MEAN, IMAGENET_STD
from liverscope.data.geometry import Box, bounding_box
from liverscope.data.io import decode_image, read_bytes, to_grey, to_rgb
from liverscope.errors import LiverscopeError
from liverscope.utils import atomic_path

CACHE_VERSION = 2  # bump when the preprocessing code changes what it returns


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of the deterministic part of the pipeline (everything before augmentation)."""

    size: int = 224
    denoise: bool = True
    denoise_strength: float = 10.0
    denoise_at: str = "model"  # model | full
    crop_sector: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.denoise_at not in ("model", "full"):
            raise LiverscopeError(f"denoise_at must be 'model' or 'full', got '{self.denoise_at}'")
        if not 16 <= int(self.size) <= 2048:
            raise LiverscopeError(f"image size {self.size} out of range (16..2048)")

    @classmethod
    def from_data_config(cls, data, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> "Preprocessing":
        """The preprocessing of a recipe's ``data`` section, normalised as the model's weights expect."""
        return cls(
            size=int(data.image_size),
            denoise=bool(data.denoise),
            denoise_strength=float(data.denoise_strength),
            denoise_at=str(data.denoise_at),
            crop_sector=bool(data.crop_sector),
            mean=tuple(mean),
            std=tuple(std),
        )

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Hash of the parameters that change the cached array (mean/std are applied later)."""
        d = self.to_dict()
        d.pop("mean"), d.pop("std")
        d["v"] = CACHE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def sector_mask(img: np.ndarray, threshold: int = 6) -> np.ndarray:
    """Boolean mask of the ultrasound scan sector (the fan of tissue), excluding the black border,
    text and calibration marks outside it.

    Hand-written (no library finds scan sectors): threshold the blurred grey image, open away thin
    text strokes, keep the largest connected region, close small gaps and fill its holes.
    Falls back to the whole image when nothing sensible is found.
    """
    grey = to_grey(img)
    h, w = grey.shape
    blur = cv2.GaussianBlur(grey, (0, 0), sigmaX=max(1.0, min(h, w) / 200))
    fg = (blur > threshold).astype(np.uint8)
    k = max(3, int(round(min(h, w) / 60)) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.ones((h, w), bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < 0.05 * h * w:
        return np.ones((h, w), bool)
    region = (labels == largest).astype(np.uint8)
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    # fill holes (anechoic vessels, cysts and shadows inside the fan are still inside the sector):
    # flood the background from the image border; what the flood cannot reach is inside
    padded = np.pad(region, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    mask = (region | (1 - flood[1:-1, 1:-1])).astype(np.uint8)
    return mask.astype(bool)


def crop_to_sector(img: np.ndarray) -> np.ndarray:
    """Crop an image to the bounding box of its scan sector."""
    box = bounding_box(sector_mask(img))
    if box is None:
        return img
    y0, y1, x0, x1 = box
    return img[y0:y1, x0:x1]


def crop_box(original: np.ndarray, pp: "Preprocessing") -> Box:
    """``(y0, y1, x0, x1)``: the part of the original image that preprocessing resizes to the model
    input (the scan sector's bounding box when the run crops to the sector, else the whole image)."""
    h, w = original.shape[:2]
    if getattr(pp, "crop_sector", False):
        box = bounding_box(sector_mask(original))
        if box is not None:
            return box
    return 0, h, 0, w


def _nlm(img: np.ndarray, h: float) -> np.ndarray:
    if img.ndim == 2:
        return cv2.fastNlMeansDenoising(img, None, h=h, templateWindowSize=7, searchWindowSize=21)
    return cv2.fastNlMeansDenoisingColored(img, None, h, h, 7, 21)


def preprocess_array(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """Deterministic preprocessing of a decoded image.

    Args:
        img: uint8 ``HxW`` or ``HxWx3`` (RGB) from :func:`liverscope.data.io.decode_image`.
        pp: the parameters.

    Returns:
        uint8 ``size x size x 3`` RGB (grey replicated), denoised when asked; not yet normalised.
    """
    if img.ndim == 3:
        # grey stored as RGB (the real data's source B) is processed as grey: 3x cheaper and identical
        grey = to_grey(img)
        if np.array_equal(img[..., 0], grey) and np.array_equal(img[..., 1], grey):
            img = grey
    if pp.crop_sector:
        img = crop_to_sector(img)
    if pp.denoise and pp.denoise_at == "full":
        img = _nlm(img, pp.denoise_strength)
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) > pp.size else cv2.INTER_LINEAR
    img = cv2.resize(img, (pp.size, pp.size), interpolation=interp)
    if pp.denoise and pp.denoise_at == "model":
        img = _nlm(img, pp.denoise_strength)
    return np.ascontiguousarray(to_rgb(img))


def normalise(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 ``HxWx3`` (or ``NxHxWx3``; floats are taken as already in [0, 1]) → float32 normalised
    with the preprocessing's mean/std, channels last. The one image normaliser: training,
    prediction and CAMs all use it."""
    mean = np.asarray(pp.mean, np.float32)
    std = np.asarray(pp.std, np.float32)
    arr = np.asarray(img)
    scaled = arr.astype(np.float32) / np.float32(255) if arr.dtype == np.uint8 else arr.astype(np.float32)
    return (scaled - mean) / std


def normalise_batch(images: Sequence[np.ndarray], pp: Preprocessing) -> np.ndarray:
    """uint8 ``HxWx3`` images → float32 ``NxHxWx3`` normalised with the preprocessing's mean/std."""
    return np.stack([normalise(im, pp) for im in images])


class PreprocessCache:
    """Disk cache of preprocessed images keyed by file content and parameters.

    Args:
        pp: preprocessing parameters.
        cache_dir: root folder; ``None`` disables the disk cache (files are always recomputed).

    Keys are the SHA-256 of the file's bytes, so renaming or copying a file does not recompute it, and
    editing it does. Files are written atomically; several processes may share one cache.
    """

    def __init__(self, pp: Preprocessing, cache_dir: str | Path | None = ".liverscope-cache"):
        self.pp = pp
        self.root = None if cache_dir is None else Path(cache_dir) / pp.key()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def _entry(self, digest: str) -> Path:
        assert self.root is not None
        return self.root / digest[:2] / f"{digest}.npy"

    def load(self, path: str | Path, frame: int | None = None) -> np.ndarray:
        """Preprocessed uint8 ``size x size x 3`` image of a file (from the cache when present)."""
        data = read_bytes(path)
        if self.root is None:
            with self._lock:
                self.misses += 1
            return preprocess_array(decode_image(data, path, frame), self.pp)
        digest = hashlib.sha256(data).hexdigest() + ("" if frame is None else f"-f{frame}")
        entry = self._entry(digest)
        if entry.exists():
            try:
                arr = np.load(entry, allow_pickle=False)
                if arr.shape == (self.pp.size, self.pp.size, 3):
                    with self._lock:
                        self.hits += 1
                    return arr
            except (OSError, ValueError):
                pass  # a damaged entry is recomputed below
        arr = preprocess_array(decode_image(data, path, frame), self.pp)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        with self._lock:
            self.misses += 1
        return arr
