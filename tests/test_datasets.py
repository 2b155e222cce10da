"""Folder and manifest datasets, phantoms, balancing weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverscope.data.augment import build_transform
from liverscope.data.datasets import (
    ImageDataset,
    check_readable,
    describe_data,
    inverse_frequency_weights,
    load_samples,
    make_phantom,
    make_phantoms,
    warm_cache,
)
from liverscope.data.preprocess import PreprocessCache, Preprocessing
from liverscope.errors import LiverscopeError
from liverscope.labels import is_metavir


def test_phantoms_are_deterministic_and_stage_dependent():
    a, ma = make_phantom(2, size=96, seed=7)
    b, mb = make_phantom(2, size=96, seed=7)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c, _ = make_phantom(2, size=96, seed=8)
    assert not np.array_equal(a, c)
    # more fibrotic nodules with stage, on average
    area = [np.mean([make_phantom(s, size=96, seed=k)[1].mean() for k in range(12)]) for s in range(5)]
    assert area[0] < area[2] < area[4]


def test_scan_folder_skips_masks_and_orders_classes(tmp_path):
    root = make_phantoms(tmp_path / "ph", n_per_class=3, classes=("F0", "F1", "F10", "F2"), size=32)
    samples, classes = load_samples(root)
    assert classes == ["F0", "F1", "F2", "F10"]  # natural order; masks/ is not a class
    assert len(samples) == 12
    assert all(s.path.parent.name == s.label for s in samples)
    assert is_metavir(["F0", "F2", "F4"]) and not is_metavir(["normal", "fatty"])


def test_manifest_with_groups_and_sources(tmp_path):
    root = make_phantoms(tmp_path / "ph", n_per_class=2, classes=("normal", "tumour"), size=32)
    lines = ["path,label,group,source"]
    for p in sorted(q for q in root.glob("*/*.png") if q.parent.name != "masks"):
        lines.append(f"{p.relative_to(tmp_path)},{p.parent.name},patient{p.stem[-1]},siteA")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    samples, classes = load_samples(tmp_path / "m.csv")
    assert classes == ["normal", "tumour"]
    assert (
        samples[0].path.exists() and samples[0].group.startswith("patient") and samples[0].source == "siteA"
    )
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(LiverscopeError, match="'path' and 'label'"):
        load_samples(tmp_path / "bad.csv")
    with pytest.raises(LiverscopeError, match="does not exist"):
        load_samples(tmp_path / "nowhere")


def test_bad_files_are_dropped_and_listed(tmp_path):
    root = make_phantoms(tmp_path / "ph", n_per_class=2, classes=("A", "B"), size=32)
    (root / "A" / "empty.png").write_bytes(b"")
    (root / "B" / "text.jpg").write_text("hello")
    good_png = (root / "A" / "A_0000.png").read_bytes()
    (root / "B" / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    samples, classes = load_samples(root)
    good, bad = check_readable(samples)
    assert {p.split("/")[-1] for p, _ in bad} == {"empty.png", "text.jpg"}
    cache = PreprocessCache(Preprocessing(size=32), tmp_path / "cache")
    ok, skipped = warm_cache(good, cache)
    assert [p.split("/")[-1] for p, _ in skipped] == ["truncated.png"]
    assert len(ok) == 4


def test_image_dataset_items(tmp_path):
    root = make_phantoms(tmp_path / "ph", n_per_class=2, classes=("A", "B"), size=48)
    samples, classes = load_samples(root)
    pp = Preprocessing(size=32)
    ds = ImageDataset(samples, classes, PreprocessCache(pp, None), build_transform("none", pp, train=False))
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    with pytest.raises(LiverscopeError, match="not in the model's label set"):
        ImageDataset(samples, ["A"], PreprocessCache(pp, None), build_transform("none", pp, train=False))


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([0, 0, 0, 1], 2)
    assert np.allclose(w, [4 / (2 * 3), 4 / (2 * 1)])


def test_describe_data_says_when_the_data_are_the_phantoms(tmp_path):
    phantoms = make_phantoms(tmp_path / "phantoms", n_per_class=2, classes=["F0", "F1"], size=32)
    d = describe_data(phantoms, ["128x128 png grey", "128x128 png grey", None, "640x480 jpeg rgb"])
    assert d == {
        "path": str(phantoms.resolve()),
        "images": 4,
        "sources": {"128x128 png grey": 2, "unknown": 1, "640x480 jpeg rgb": 1},
        "synthetic_phantoms": True,
    }
    real = tmp_path / "real"
    (real / "F0").mkdir(parents=True)
    (real / "F0" / "a.png").write_bytes(
        (phantoms / "F0" / "F0_0000.png").read_bytes()
    )  # phantom images copied elsewhere: no marker
    assert describe_data(real, ["x"])["synthetic_phantoms"] is False
    assert describe_data(tmp_path / "gone", None) == {
        "path": str(tmp_path / "gone"),
        "images": None,
        "sources": {},
        "synthetic_phantoms": None,
    }
    assert load_samples(phantoms)[1] == ["F0", "F1"]  # the marker file is not data
