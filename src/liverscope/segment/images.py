"""Loading a folder's images and masks for segmentation: model inputs, crop boxes, mask files.

Masks on disk are PNGs at the original image size, 0 = background, 255 = foreground (read back as
``> 127``). A mask belongs to the image with the same relative path or, failing that, the same file name
(:func:`find_mask`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from liverscope.data.geometry import Box, to_model, to_original
from liverscope.data.io import decode_image, iter_image_files, read_bytes, to_grey
from liverscope.data.preprocess import Preprocessing, crop_box, preprocess_array
from liverscope.errors import ImageReadError

#: Mask pixels above this grey value are foreground (masks are stored as 0/255).
MASK_LEVEL = 127


@dataclass
class LoadedImage:
    """A decoded file reduced to what segmentation needs: the model input and how to map back."""

    path: Path
    rel: Path  # path relative to the data root (the file name for a file given directly)
    input: np.ndarray  # preprocessed uint8 size x size x 3
    shape: tuple[int, int]  # original H, W
    box: Box  # crop box in the original image
    label: str | None = None
    extra: dict = field(default_factory=dict)


def _relative(path: Path, roots: Sequence[Path]) -> Path:
    for r in roots:
        if r.is_dir():
            try:
                return path.relative_to(r)
            except ValueError:
                continue
    return Path(path.name)


def load_images(
    files: Sequence[Path],
    pp: Preprocessing,
    roots: Sequence[Path] = (),
    labels: Sequence[str] | None = None,
    keep_original: bool = False,
    workers: int = 2,
) -> tuple[list[LoadedImage], list[tuple[str, str]]]:
    """Decode and preprocess files in threads; unreadable ones are returned as ``(path, reason)``.

    Args:
        files: image files.
        pp: the classifier's preprocessing.
        roots: folders the relative names are taken from.
        labels: optional label per file.
        keep_original: keep the decoded original in ``extra["original"]`` (for overlays).
        workers: threads.
    """
    roots = [Path(r) for r in roots]

    def work(i: int):
        p = Path(files[i])
        try:
            img = decode_image(read_bytes(p), p)
        except ImageReadError as exc:
            return (str(p), exc.reason)
        item = LoadedImage(
            p,
            _relative(p, roots),
            preprocess_array(img, pp),
            img.shape[:2],
            crop_box(img, pp),
            labels[i] if labels else None,
        )
        if keep_original:
            item.extra["original"] = img
        return item

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results = list(ex.map(work, range(len(files))))
    good = [r for r in results if isinstance(r, LoadedImage)]
    bad = [r for r in results if not isinstance(r, LoadedImage)]
    return good, bad


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named or found recursively in folders (``masks/`` and hidden files skipped)."""
    return list(iter_image_files(paths))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as a boolean array (grey value > 127), resized (nearest) to ``shape`` when given."""
    m = to_grey(decode_image(read_bytes(path), path)) > MASK_LEVEL
    if shape is not None and m.shape != tuple(shape[:2]):
        m = to_original(m, shape)
    return m


def find_mask(mask_dir: str | Path, rel: str | Path) -> Path | None:
    """The mask of an image in ``mask_dir``: same relative path, then same file name (any image suffix
    → ``.png`` also tried; a ``NAME_mask.png`` also matches ``NAME``)."""
    mask_dir, rel = Path(mask_dir), Path(rel)
    stems = [rel.stem] + ([rel.stem[: -len("_mask")]] if rel.stem.endswith("_mask") else [])
    candidates = [mask_dir / rel, mask_dir / rel.with_suffix(".png")]
    for stem in stems:
        candidates += [
            mask_dir / rel.parent / f"{stem}{rel.suffix}",
            mask_dir / rel.parent / f"{stem}.png",
            mask_dir / f"{stem}{rel.suffix}",
            mask_dir / f"{stem}.png",
        ]
    for c in candidates:
        if c.is_file():
            return c
    return None


def load_masks_for(
    items: Sequence[LoadedImage], mask_dir: Path, size: int
) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
    """Model-grid masks of ``items`` from ``mask_dir`` (``None`` where missing / unreadable).

    Returns:
        ``(bool size x size mask or None per item, [(path, reason), ...] for the missing ones)``.
    """
    out, problems = [], []
    for it in items:
        p = find_mask(mask_dir, it.rel)
        if p is None:
            out.append(None)
            problems.append((str(it.path), f"no mask in {mask_dir}"))
            continue
        try:
            m = read_mask(p, it.shape)
        except ImageReadError as exc:
            out.append(None)
            problems.append((str(p), exc.reason))
            continue
        out.append(to_model(m, it.box, size))
    return out, problems


__all__ = [
    "MASK_LEVEL",
    "LoadedImage",
    "load_images",
    "list_images",
    "read_mask",
    "find_mask",
    "load_masks_for",
]
