"""Preprocessing: scan-sector crop (the sector itself: :mod:`liverscope.data.sector`), resize, non-local-means denoising, and a cache.

The seed study (EfficientNet + Grad-CAM) denoises each colour image with OpenCV's non-local means at
full resolution, then resizes to 224 and normalises with ImageNet statistics. NLM on a 640x480 colour
image costs ~100 ms; on the 224x224 grey image (ultrasound B-mode is grey) it costs a few ms, which is
why ``denoise_at="model"`` is the default. ``denoise_at="full"`` keeps the study's order.

Two settings make NLM cheaper still (issue 14), each recorded in the run's :class:`Preprocessing` so that
training and prediction agree; their defaults are today's behaviour, which is also what a run saved
before they existed reads back (:meth:`Preprocessing.from_dict`):

* ``nlm_search`` / ``nlm_template``: OpenCV's search and template window sizes (21 and 7, OpenCV's
  defaults). The cost grows with the square of the search window: 11 compares 121 candidate patches per
  pixel instead of 441;
* ``denoise_region="sector"``: only the scan sector's bounding box is denoised (with a margin of the
  windows' reach, so every pixel inside the box comes out exactly as when the whole image is denoised);
  the black border, text and marks outside it are left as they are.

``benchmarks/inference.py`` measures both against today's output on real images (grey-level difference
and the model's probabilities).

Each (file content, parameters) pair is preprocessed once and stored as a ``.npy`` file keyed by the
content's SHA-256 and a hash of the parameters, so later epochs, folds and runs read it back.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from liverscope.config import IMAGENET_MEAN, IMAGENET_STD
from liverscope.data.geometry import Box, bounding_box
from liverscope.data.io import decode_image, read_bytes, read_frames, read_image, to_grey, to_rgb
from liverscope.data.sector import SECTOR_METHODS, sector_mask
from liverscope.errors import LiverscopeError
from liverscope.utils import atomic_path

CACHE_VERSION = 2  # bump when the preprocessing code changes what it returns
NLM_TEMPLATE, NLM_SEARCH = 7, 21  # OpenCV's defaults, and liverscope's before these were settings
DENOISE_REGIONS = ("image", "sector")
#: The settings added after runs were first saved, with the behaviour those runs had: a saved
#: ``preprocessing`` without them reads back as that behaviour, and they stay out of the cache key at it.
_LATER_FIELDS = {
    "nlm_template": NLM_TEMPLATE,
    "nlm_search": NLM_SEARCH,
    "denoise_region": "image",
    "sector": "threshold",
}


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
    nlm_template: int = NLM_TEMPLATE  # NLM patch size (odd)
    nlm_search: int = NLM_SEARCH  # NLM search window (odd): cost ~ its square
    denoise_region: str = "image"  # image | sector (the scan sector's bounding box only)
    sector: str = (
        "fan"  # how the scan sector is found (liverscope.data.sector): fan | threshold (runs before issue 21)
    )

    def __post_init__(self):
        if self.denoise_at not in ("model", "full"):
            raise LiverscopeError(f"denoise_at must be 'model' or 'full', got '{self.denoise_at}'")
        if not 16 <= int(self.size) <= 2048:
            raise LiverscopeError(f"image size {self.size} out of range (16..2048)")
        if self.denoise_region not in DENOISE_REGIONS:
            raise LiverscopeError(
                f"denoise_region must be one of {', '.join(DENOISE_REGIONS)}, got '{self.denoise_region}'"
            )
        if self.sector not in SECTOR_METHODS:
            raise LiverscopeError(f"sector must be one of {', '.join(SECTOR_METHODS)}, got '{self.sector}'")
        t, s = self.nlm_template, self.nlm_search
        if not (
            float(t).is_integer()
            and float(s).is_integer()
            and int(t) % 2 == 1
            and int(s) % 2 == 1
            and 1 <= int(t) <= int(s) <= 35
        ):
            raise LiverscopeError(
                f"NLM windows must be odd integers with 1 <= template <= search <= 35, got template {t}, search {s}"
            )
        object.__setattr__(self, "nlm_template", int(t))  # frozen: a JSON or NumPy number becomes a plain int
        object.__setattr__(self, "nlm_search", int(s))

    @classmethod
    def from_data_config(
        cls, data, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> "Preprocessing":
        """The preprocessing of a recipe's ``data`` section, normalised as the model's weights expect."""
        later = {
            k: type(v)(getattr(data, k))
            for k, v in _LATER_FIELDS.items()
            if getattr(data, k, None) is not None
        }
        return cls(
            size=int(data.image_size),
            denoise=bool(data.denoise),
            denoise_strength=float(data.denoise_strength),
            denoise_at=str(data.denoise_at),
            crop_sector=bool(data.crop_sector),
            mean=tuple(mean),
            std=tuple(std),
            **later,
        )

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """From a saved ``preprocessing`` (``model.json``); settings it lacks keep the behaviour it was saved with."""
        d = {**_LATER_FIELDS, **d}
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
        for (
            k,
            old,
        ) in _LATER_FIELDS.items():  # at their old behaviour: the key of a cache made before they existed
            if d[k] == old:
                d.pop(k)
        d["v"] = CACHE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def crop_to_sector(img: np.ndarray, method: str = "fan") -> np.ndarray:
    """Crop an image to the bounding box of its scan sector (found by ``method``: :mod:`liverscope.data.sector`)."""
    box = bounding_box(sector_mask(img, method))
    if box is None:
        return img
    y0, y1, x0, x1 = box
    return img[y0:y1, x0:x1]


def crop_box(original: np.ndarray, pp: "Preprocessing") -> Box:
    """``(y0, y1, x0, x1)``: the part of the original image that preprocessing resizes to the model
    input (the scan sector's bounding box when the run crops to the sector, else the whole image)."""
    h, w = original.shape[:2]
    if getattr(pp, "crop_sector", False):
        box = bounding_box(sector_mask(original, getattr(pp, "sector", "fan")))
        if box is not None:
            return box
    return 0, h, 0, w


def _nlm(img: np.ndarray, h: float, template: int = NLM_TEMPLATE, search: int = NLM_SEARCH) -> np.ndarray:
    if img.ndim == 2:
        return cv2.fastNlMeansDenoising(img, None, h=h, templateWindowSize=template, searchWindowSize=search)
    return cv2.fastNlMeansDenoisingColored(img, None, h, h, template, search)


def denoise(img: np.ndarray, pp: "Preprocessing") -> np.ndarray:
    """Non-local means with the preprocessing's strength and windows, on the whole image or (with
    ``denoise_region="sector"``) on the scan sector's bounding box only.

    The box is widened by the windows' reach (half the search window plus half the template) before
    denoising, so each pixel inside it sees exactly the neighbours it sees when the whole image is
    denoised and comes out identical; pixels outside the box are returned as they are.
    """
    h, t, s = pp.denoise_strength, pp.nlm_template, pp.nlm_search
    if pp.denoise_region == "sector":
        box = bounding_box(sector_mask(img, pp.sector))
        if box is not None:
            rows, cols = img.shape[:2]
            y0, y1, x0, x1 = box
            reach = s // 2 + t // 2
            ya, yb, xa, xb = (
                max(0, y0 - reach),
                min(rows, y1 + reach),
                max(0, x0 - reach),
                min(cols, x1 + reach),
            )
            if (yb - ya) * (xb - xa) < 0.9 * rows * cols:  # else the whole image costs no more
                out = img.copy()
                part = _nlm(np.ascontiguousarray(img[ya:yb, xa:xb]), h, t, s)
                out[y0:y1, x0:x1] = part[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
                return out
    return _nlm(img, h, t, s)


def _preprocess(img: np.ndarray, pp: "Preprocessing") -> np.ndarray:
    """:func:`preprocess_array` before grey is replicated: uint8 ``size x size`` (grey) or ``size x size x 3``."""
    if img.ndim == 3:
        # grey stored as RGB (the real data's source B) is processed as grey: 3x cheaper and identical
        grey = to_grey(img)
        if np.array_equal(img[..., 0], grey) and np.array_equal(img[..., 1], grey):
            img = grey
    if pp.crop_sector:
        img = crop_to_sector(img, pp.sector)
    if pp.denoise and pp.denoise_at == "full":
        img = denoise(img, pp)
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) > pp.size else cv2.INTER_LINEAR
    img = cv2.resize(img, (pp.size, pp.size), interpolation=interp)
    if pp.denoise and pp.denoise_at == "model":
        img = denoise(img, pp)
    return np.ascontiguousarray(img)


def preprocess_array(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """Deterministic preprocessing of a decoded image.

    Args:
        img: uint8 ``HxW`` or ``HxWx3`` (RGB) from :func:`liverscope.data.io.decode_image`.
        pp: the parameters.

    Returns:
        uint8 ``size x size x 3`` RGB (grey replicated), denoised when asked; not yet normalised.
    """
    return np.ascontiguousarray(to_rgb(_preprocess(img, pp)))


@lru_cache(maxsize=16)
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``256 x 3`` float32: :func:`normalise`'s value of each uint8 level in each channel, computed with
    the same float32 operations as the arithmetic path (so a table look-up gives the identical result)."""
    scaled = np.arange(256, dtype=np.uint8).astype(np.float32)[:, None] / np.float32(255)
    out = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    out.setflags(write=False)
    return out


def normalise(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 ``HxWx3`` (or ``NxHxWx3``; floats are taken as already in [0, 1]) → float32 normalised
    with the preprocessing's mean/std, channels last. The one image normaliser: training,
    prediction and CAMs all use it.

    uint8 images go through a 256-entry table per channel (``cv2.LUT``: one pass, no temporaries,
    the GIL released) holding exactly the values the arithmetic gives."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8 and arr.ndim >= 3 and arr.shape[-1] == 3 and arr.size:
        table = _levels(tuple(pp.mean), tuple(pp.std)).reshape(1, 256, 3)
        return cv2.LUT(arr.reshape(-1, arr.shape[-2], 3), table).reshape(arr.shape)
    mean = np.asarray(pp.mean, np.float32)
    std = np.asarray(pp.std, np.float32)
    scaled = arr.astype(np.float32) / np.float32(255) if arr.dtype == np.uint8 else arr.astype(np.float32)
    return (scaled - mean) / std


def normalise_batch(images: Sequence[np.ndarray], pp: Preprocessing) -> np.ndarray:
    """uint8 ``HxWx3`` images → float32 ``NxHxWx3`` normalised with the preprocessing's mean/std."""
    return np.stack([normalise(im, pp) for im in images])


def model_input(img: np.ndarray, pp: Preprocessing, channels_first: bool = False) -> np.ndarray:
    """A decoded image → the model's float32 input: preprocessed and normalised, ``size x size x 3`` or
    (``channels_first``) ``3 x size x size``, equal to ``normalise(preprocess_array(img, pp), pp)``
    (transposed). A grey image is normalised once per channel straight into its plane: no RGB copy, no
    transposition."""
    small = _preprocess(img, pp)
    if not channels_first:
        return normalise(to_rgb(small), pp)
    if small.ndim == 3:
        return np.ascontiguousarray(normalise(small, pp).transpose(2, 0, 1))
    table = _levels(tuple(pp.mean), tuple(pp.std))
    out = np.empty((3, *small.shape), np.float32)
    for c in range(3):
        cv2.LUT(small, np.ascontiguousarray(table[:, c]).reshape(1, 256), dst=out[c])
    return out


def load_model_input(
    path: str | Path, pp: Preprocessing, frames: str = "middle", channels_first: bool = False
) -> np.ndarray:
    """A file → float32 model inputs of its ``frames`` (``F x size x size x 3``, or ``F x 3 x size x size``;
    one frame for a still image or ``frames="middle"``). The decode workers' job: a module-level function
    of a torch-free module, so that a process pool can run it too (:mod:`liverscope.data.stream`)."""
    images = [read_image(path)] if frames == "middle" else read_frames(path, frames)
    return np.stack([model_input(im, pp, channels_first) for im in images])


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
