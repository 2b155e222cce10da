"""Augmentation presets: shapes, determinism of evaluation transforms, and that training ones vary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverscope.data.augment import PRESETS, TissueCrop, build_transform
from liverscope.data.datasets import make_phantom
from liverscope.data.preprocess import Preprocessing, preprocess_array
from liverscope.errors import LiverscopeError

PP = Preprocessing(size=64)
IMG = preprocess_array(make_phantom(2, size=128, seed=1)[0], PP)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_produce_normalised_tensors(preset):
    torch.manual_seed(0)
    t = build_transform(preset, PP, train=True)
    out = t(IMG)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("preset", ["conservative", "ultrasound", "light"])
def test_training_presets_are_random(preset):
    torch.manual_seed(0)
    t = build_transform(preset, PP, train=True)
    outs = [t(IMG) for _ in range(12)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_evaluation_transform_is_plain_normalisation():
    t = build_transform("ultrasound", PP, train=False)
    a, b = t(IMG), t(IMG)
    assert torch.equal(a, b)
    mean = torch.tensor(PP.mean).view(3, 1, 1)
    std = torch.tensor(PP.std).view(3, 1, 1)
    expected = (torch.from_numpy(IMG).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(a, expected)


def test_unknown_preset():
    with pytest.raises(LiverscopeError, match="unknown augmentation"):
        build_transform("wild", PP, train=True)


def test_tissue_crop_keeps_the_scale_and_finds_the_tissue():
    """A training window is cut, not resized, and lands on tissue even when most of the image is black."""
    img = np.zeros((96, 96, 3), np.uint8)
    img[60:, 60:] = 120  # tissue only in the bottom-right corner: 36x36 of 96x96
    crop = TissueCrop(32, min_tissue=0.9, tries=200)
    torch.manual_seed(0)
    windows = [crop(img) for _ in range(20)]
    assert all(w.shape == (32, 32, 3) for w in windows)
    assert np.mean([(w[..., 0] > 8).mean() for w in windows]) > 0.9
    assert set(np.unique(np.stack(windows))) <= {0, 120}  # pixels copied, never interpolated


def test_train_crop_changes_the_training_input_size_only():
    torch.manual_seed(0)
    pp = Preprocessing(size=64)
    train = build_transform("light", pp, train=True, crop=40)
    evaluation = build_transform("light", pp, train=False, crop=40)
    assert train(IMG).shape == (3, 40, 40)
    assert evaluation(IMG).shape == (3, 64, 64)
    with pytest.raises(LiverscopeError, match="train_crop"):
        build_transform("light", pp, train=True, crop=64)
