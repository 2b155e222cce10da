"""Preprocessing, sector mask and the content-keyed cache."""

from __future__ import annotations

import numpy as np
import pytest

from liverscope.data.datasets import make_phantom, make_phantoms
from liverscope.data.preprocess import (
    PreprocessCache,
    Preprocessing,
    crop_to_sector,
    normalise,
    preprocess_array,
)
from liverscope.data.sector import sector_mask
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


# --------------------------------------------------------------------------------------------------
# faster denoising options (issue 14): recorded in Preprocessing, old runs read back as they were
# --------------------------------------------------------------------------------------------------


def test_old_preprocessing_reads_back_as_it_was_saved_and_keeps_its_cache_key():
    import hashlib
    import json

    from liverscope.data.preprocess import CACHE_VERSION

    old = {
        "size": 224,
        "denoise": True,
        "denoise_strength": 10.0,
        "denoise_at": "model",
        "crop_sector": False,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }  # a model.json written before the options existed
    pp = Preprocessing.from_dict(old)
    assert (pp.nlm_template, pp.nlm_search, pp.denoise_region) == (7, 21, "image")
    keyed = {k: v for k, v in old.items() if k not in ("mean", "std")} | {"v": CACHE_VERSION}
    assert (
        pp.key() == hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    )  # its disk cache still hits
    fast = Preprocessing.from_dict(old | {"nlm_search": 11, "denoise_region": "sector"})
    assert (
        fast.key() != pp.key() and Preprocessing.from_dict(fast.to_dict()) == fast
    )  # saved and read back with the run
    img, _ = make_phantom(2, size=128, seed=3)
    assert np.array_equal(preprocess_array(img, pp), preprocess_array(img, Preprocessing(size=224)))


@pytest.mark.parametrize(
    "bad",
    [{"nlm_search": 10}, {"nlm_template": 9, "nlm_search": 7}, {"nlm_search": 0}, {"denoise_region": "fan"}],
)
def test_bad_denoising_options_are_clear_errors(bad):
    with pytest.raises(LiverscopeError, match="NLM windows|denoise_region"):
        Preprocessing(**bad)


def test_recipe_options_flow_into_preprocessing():
    from types import SimpleNamespace

    data = SimpleNamespace(
        image_size=96, denoise=True, denoise_strength=10.0, denoise_at="model", crop_sector=False
    )
    assert (
        Preprocessing.from_data_config(data).nlm_search == 21
    )  # a recipe without the options: today's behaviour
    data.nlm_search, data.denoise_region = 11, "sector"
    pp = Preprocessing.from_data_config(data)
    assert (pp.nlm_search, pp.nlm_template, pp.denoise_region) == (11, 7, "sector")


def _framed_phantom(stage: int, seed: int) -> np.ndarray:
    """A grey phantom inside a wide black frame with a text-like mark, like a scanner's screen: the scan
    sector's box is about half the image (the real data's: 0.43-0.62)."""
    img, _ = make_phantom(stage, size=128, seed=seed)
    grey = img[..., 0] if img.ndim == 3 else img
    framed = np.pad(grey, ((24, 40), (64, 64)))
    framed[4:12, 200:240] = np.random.default_rng(seed).integers(
        180, 200, (8, 40)
    )  # a grainy label in the frame
    return framed


def test_sector_box_denoising_is_identical_inside_the_box_and_leaves_the_rest():
    from liverscope.data.geometry import bounding_box
    from liverscope.data.preprocess import denoise

    for seed in range(3):
        grey = _framed_phantom(seed, seed)
        whole = denoise(grey, Preprocessing())
        boxed = denoise(grey, Preprocessing(denoise_region="sector"))
        y0, y1, x0, x1 = bounding_box(sector_mask(grey))
        assert (y1 - y0) * (x1 - x0) < 0.6 * grey.size
        assert np.array_equal(boxed[y0:y1, x0:x1], whole[y0:y1, x0:x1])
        outside = np.ones(grey.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(boxed[outside], grey[outside]) and not np.array_equal(
            whole[outside], grey[outside]
        )


def test_faster_denoising_options_stay_within_a_grey_level_of_todays():
    img = _framed_phantom(3, 7)
    for at in ("model", "full"):
        ref = preprocess_array(img, Preprocessing(size=128, denoise_at=at)).astype(float)
        for fields in (
            {"nlm_search": 11},
            {"denoise_region": "sector"},
            {"nlm_search": 11, "denoise_region": "sector"},
        ):
            out = preprocess_array(img, Preprocessing(size=128, denoise_at=at, **fields)).astype(float)
            diff = np.abs(out - ref)
            assert 0 < diff.mean() < 1.0, (
                at,
                fields,
                diff.mean(),
            )  # changed, but by less than a grey level on average


def test_normalise_table_gives_the_arithmetic_values_exactly():
    from liverscope.data.preprocess import model_input

    pp = Preprocessing(size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expect = (rgb.astype(np.float32) / np.float32(255) - np.asarray(pp.mean, np.float32)) / np.asarray(
        pp.std, np.float32
    )
    assert np.array_equal(normalise(rgb, pp), expect) and np.array_equal(normalise(rgb[0], pp), expect[0])
    floats = rgb[0].astype(np.float32) / 255
    assert np.array_equal(normalise(floats, pp), expect[0])  # floats: the arithmetic path, same numbers
    for img in (make_phantom(1, size=64, seed=2)[0], rgb[0]):  # grey and colour
        hwc = normalise(preprocess_array(img, pp), pp)
        assert np.array_equal(model_input(img, pp), hwc)
        chw = model_input(img, pp, channels_first=True)
        assert chw.flags.c_contiguous and np.array_equal(chw, hwc.transpose(2, 0, 1))
