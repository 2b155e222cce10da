"""Decode ultrasound images by content, not by extension.

Supported: PNG, JPEG, BMP, TIFF (8/16-bit, grey, RGB, RGBA, palette) and DICOM (single frame, or one
frame of a multi-frame cine loop, the middle one by default). Every failure is an
:class:`~liverscope.errors.ImageReadError` naming the file, so a batch job can list it and go on.

PIL does the raster decoding rather than ``cv2.imdecode`` because OpenCV silently returns a half-grey
picture for a truncated JPEG, while PIL raises; a clinician must never get a stage for half an image.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from liverscope.errors import ImageReadError

#: Refuse files larger than this (bytes) before reading them: ultrasound frames are a few MB at most.
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Refuse images with more pixels than this (decompression bombs, mis-saved panoramas).
MAX_PIXELS = 64_000_000

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ""}

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
]


def sniff_format(data: bytes) -> str | None:
    """Return the image format of raw bytes from their magic number (``png``, ``jpeg``, ``bmp``,
    ``tiff``, ``dicom``), or ``None`` when the bytes are not an image this package reads."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def extension_matches(path: str | Path, fmt: str) -> bool:
    """Whether a file's extension agrees with its sniffed format (the real data has PNGs named .jpg)."""
    suffix = Path(path).suffix.lower()
    expected = {
        "png": {".png"},
        "jpeg": {".jpg", ".jpeg", ".jpe"},
        "bmp": {".bmp"},
        "tiff": {".tif", ".tiff"},
        "dicom": {".dcm", ".dicom", ""},
    }
    return suffix in expected.get(fmt, set())


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named directly, and image files found recursively in folders (``masks/`` and hidden files
    skipped), yielded lazily in a stable order (sorted per folder, files before sub-folders) so a
    folder of any size is never listed into memory at once."""
    suffixes = IMAGE_SUFFIXES | {".jpe"}
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            yield p  # a named file is always tried, so a bad one is reported rather than ignored
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if d != "masks" and not d.startswith("."))
            for name in sorted(files):
                q = Path(root) / name
                if not name.startswith(".") and q.suffix.lower() in suffixes:
                    yield q


def read_bytes(path: str | Path) -> bytes:
    """Read a file's bytes with the size checks every decoder here shares."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist", "check the path")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image", "pass the image files or use a folder command")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)", "re-export or re-copy the image")
    if size > MAX_FILE_BYTES:
        raise ImageReadError(
            path, f"file is {size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit", "export a single frame"
        )
    return path.read_bytes()


def decode_image(data: bytes, path: str | Path = "<bytes>", frame: int | None = None) -> np.ndarray:
    """Decode image bytes to a uint8 array, ``HxW`` (grey) or ``HxWx3`` (RGB).

    Args:
        data: the raw file content.
        path: the name to use in error messages.
        frame: for multi-frame DICOM, the frame to take (default: the middle one).

    Returns:
        ``np.uint8`` array; grey stays 2-D (use :func:`to_rgb` to replicate it to three channels),
        16-bit data is scaled to the 8-bit range, alpha is dropped, palettes are expanded.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageReadError(
            path, "not a PNG, JPEG, BMP, TIFF or DICOM file (unknown content)", "convert it to PNG or remove it"
        )
    if fmt == "dicom":
        return _decode_dicom(data, path, frame)
    return _decode_raster(data, path)


def read_image(path: str | Path, frame: int | None = None) -> np.ndarray:
    """Read an image or DICOM file by content. See :func:`decode_image` for the returned array."""
    return decode_image(read_bytes(path), path, frame)


def read_rgb(path: str | Path, frame: int | None = None) -> np.ndarray:
    """Read a file as ``HxWx3`` uint8 RGB (grey replicated to three channels)."""
    return to_rgb(read_image(path, frame))


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Replicate a grey ``HxW`` image to ``HxWx3``; RGB passes through."""
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return img


def to_grey(img: np.ndarray) -> np.ndarray:
    """Luma of an RGB image (BT.601 weights); grey passes through."""
    if img.ndim == 2:
        return img
    if is_grey_rgb(img):
        return np.ascontiguousarray(img[:, :, 0])
    grey = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def is_grey_rgb(img: np.ndarray) -> bool:
    """True when an ``HxWx3`` image has three identical channels (grey stored as RGB)."""
    return img.ndim == 3 and bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any integer or float array to uint8. 16-bit and float data use the full observed range."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _check_pixels(path, h: int, w: int) -> None:
    if h * w > MAX_PIXELS:
        raise ImageReadError(path, f"image is {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel limit", "downscale it")
    if h < 8 or w < 8:
        raise ImageReadError(path, f"image is only {w}x{h} pixels", "use the full-size ultrasound frame")


def _decode_raster(data: bytes, path) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            _check_pixels(path, im.height, im.width)
            im.load()
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data; one clear error for the user
        raise ImageReadError(path, f"cannot decode image ({type(exc).__name__}: {exc})", "the file is corrupt or truncated; re-export it") from None

    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
        mode = im.mode
    if mode in ("1", "L", "LA"):
        arr = np.asarray(im.convert("L"))
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = _to_uint8(np.asarray(im))
    elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(im.convert("RGB"))
    else:
        arr = np.asarray(im.convert("RGB"))
    arr = np.ascontiguousarray(arr)
    return arr


def _decode_dicom(data: bytes, path, frame: int | None) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise ImageReadError(path, f"cannot parse DICOM ({type(exc).__name__}: {exc})", "the file is corrupt or truncated") from None
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data (a report or structured document?)", "export the image series")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(
            path,
            f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})",
            "install the codec for its transfer syntax (e.g. pylibjpeg) or export it uncompressed",
        ) from None
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        idx = n_frames // 2 if frame is None else frame
        if not 0 <= idx < n_frames:
            raise ImageReadError(path, f"frame {idx} requested but the cine loop has {n_frames} frames", f"choose a frame in 0..{n_frames - 1}")
        pixels = pixels[idx]
    if samples == 3 and photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB")
    _check_pixels(path, pixels.shape[0], pixels.shape[1])
    if pixels.ndim == 2:
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            pixels = pixels * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        out = _to_uint8(np.asarray(pixels))
        if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            out = 255 - out
        return out
    return _to_uint8(np.asarray(pixels)[..., :3])
