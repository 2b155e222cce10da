"""Preprocessing, sector mask and the content-keyed cache."""

from __future__ import annotations

import numpy as np
import pytest

from liverscope.data.datasets import make_phantom, make_phantoms
from liverscope.data.preprocess import PreprocessCache, Preprocessing, crop_to_sector, preprocess_array, sector_mask
from liverscope.errors import LiverscopeError


def test_preprocess_shape_and_grey_replication():
    img, _ = make_phantom(2, size=128, seed=3)
    out = preprocess_array(img, Preprocessing(size=64, denoise=True))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 2])


def test_denoising_reduces_speckle_variance():
    img, _ = make_phantom(0, size=128, seed=4)
    raw = preprocess_array(img, Preprocessing(size=128, denoise=False)).astype(float)
    den = preprocess_array(img, Preprocessing(size=128, denoise=True, denoise_strength=15)).astype(float)
    inside = sector_mask(img)
    assert den[inside].std() < raw[inside].std()


def test_denoise_full_resolution_option_differs():
    img, _ = make_phantom(1, size=128, seed=5)
    a = preprocess_array(img, Preprocessing(size=64, denoise_at="model"))
    b = preprocess_array(img, Preprocessing(size=64, denoise_at="full"))
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(LiverscopeError):
        Preprocessing(denoise_at="sideways")


def test_sector_mask_excludes_phantom_border_and_text():
    img, _ = make_phantom(3, size=128, seed=6)
    mask = sector_mask(img)
    from liverscope.data.datasets import _fan_mask

    fan = _fan_mask(128)
    assert not mask[:8, :20].any()  # burnt-in text in the top-left corner
    assert mask[64, 64]  # the middle of the fan is tissue
    iou = (mask & fan).sum() / (mask | fan).sum()
    assert iou > 0.9
    # nothing well outside the fan (the black border, text, depth-scale ticks) is called tissue
    import cv2

    near_fan = cv2.dilate(fan.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert not (mask & ~near_fan).any()
    cropped = crop_to_sector(img)
    assert cropped.shape[0] < 128 or cropped.shape[1] < 128


def test_cache_returns_identical_arrays_and_is_keyed_by_params(tmp_path):
    data = make_phantoms(tmp_path / "ph", n_per_class=2, classes=("A", "B"), size=64)
    files = sorted((data / "A").glob("*.png"))
    pp = Preprocessing(size=32)
    cache = PreprocessCache(pp, tmp_path / "cache")
    first = [cache.load(f) for f in files]
    assert cache.misses == len(files) and cache.hits == 0
    again = PreprocessCache(pp, tmp_path / "cache")  # a new process would see the same disk cache
    second = [again.load(f) for f in files]
    assert again.hits == len(files) and again.misses == 0
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    # different parameters → a different entry, recomputed
    other = PreprocessCache(Preprocessing(size=32, denoise=False), tmp_path / "cache")
    third = other.load(files[0])
    assert other.misses == 1 and not np.array_equal(third, first[0])
    # edited file content → recomputed (keyed by content, not name)
    files[0].write_bytes(files[1].read_bytes())
    fourth = PreprocessCache(pp, tmp_path / "cache")
    assert np.array_equal(fourth.load(files[0]), first[1])


def test_cache_recovers_from_damaged_entry(tmp_path):
    data = make_phantoms(tmp_path / "ph", n_per_class=1, classes=("A", "B"), size=64)
    f = next((data / "A").glob("*.png"))
    cache = PreprocessCache(Preprocessing(size=32), tmp_path / "cache")
    good = cache.load(f)
    for entry in (tmp_path / "cache").rglob("*.npy"):
        entry.write_bytes(b"garbage")
    again = PreprocessCache(Preprocessing(size=32), tmp_path / "cache")
    assert np.array_equal(again.load(f), good) and again.misses == 1
