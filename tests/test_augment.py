"""Augmentation presets: shapes, determinism of evaluation transforms, and that training ones vary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverscope.data.augment import PRESETS, build_transform
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
