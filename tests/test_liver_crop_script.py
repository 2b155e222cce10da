"""benchmarks/liver_crop.py (issue 23's liver-region crop lever): each image cut to its liver mask's largest
region, the whole frame kept where that region is too small, and a split that keeps groups, folds and sources."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liverscope.data.datasets import Sample
from liverscope.data.io import read_image
from liverscope.rundir import read_split, write_split

_SPEC = importlib.util.spec_from_file_location(
    "liver_crop", Path(__file__).resolve().parents[1] / "benchmarks" / "liver_crop.py"
)
liver_crop = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(liver_crop)


def _image(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((100, 120), value, np.uint8)).save(path)
    return path


def test_liver_crop_cuts_to_the_largest_region_and_keeps_the_folds(tmp_path):
    a, b = _image(tmp_path / "src" / "F0" / "a.png", 10), _image(tmp_path / "src" / "F2" / "b.png", 20)
    samples = [
        Sample(a, "F0", "g1", "A", hashlib.sha256(a.read_bytes()).hexdigest()),
        Sample(b, "F2", "g2", "B", hashlib.sha256(b.read_bytes()).hexdigest()),
    ]
    split = write_split(tmp_path / "split.csv", samples, ["dev", "dev"], folds=[1, 0])
    assert liver_crop.link_distinct(split, tmp_path / "distinct") == 2
    assert (tmp_path / "distinct" / "F2" / "b.png").resolve() == b.resolve()
    masks = tmp_path / "masks"
    big = np.zeros((100, 120), np.uint8)
    big[20:60, 30:90] = 255  # 40 x 60: a fifth of the frame
    big[90:95, 0:5] = 255  # a smaller region, left out
    small = np.zeros((100, 120), np.uint8)
    small[0:10, 0:10] = 255  # under a tenth of the frame: the whole image is kept
    for label, stem, m in (("F0", "a", big), ("F2", "b", small)):
        (masks / label).mkdir(parents=True)
        Image.fromarray(m).save(masks / label / f"{stem}_liver_mask.png")
    out = liver_crop.crop_all(split, masks, tmp_path / "data", tmp_path / "run", margin=0.1, min_area=0.1)
    assert out["whole_image_kept"] == 1 and out["distinct"] == 2
    assert read_image(tmp_path / "data" / "F0" / "a.png").shape[:2] == (
        40 + 2 * 3,
        60 + 2 * 5,
    )  # 10% of the box's extent (39, 59 px) on each side
    assert read_image(tmp_path / "data" / "F2" / "b.png").shape[:2] == (100, 120)
    mapped, assignment, folds = read_split(tmp_path / "run" / "split.csv")
    assert [s.group for s in mapped] == ["g1", "g2"] and [s.source for s in mapped] == ["A", "B"]
    assert list(folds) == [1, 0] and list(assignment) == ["dev", "dev"]
    assert mapped[0].sha256 == hashlib.sha256((tmp_path / "data" / "F0" / "a.png").read_bytes()).hexdigest()


def test_liver_crop_refuses_two_files_that_would_share_a_crop(tmp_path):
    a, b = _image(tmp_path / "x" / "F0" / "a.png", 10), _image(tmp_path / "y" / "F0" / "a.png", 20)
    samples = [
        Sample(p, "F0", g, "A", hashlib.sha256(p.read_bytes()).hexdigest()) for p, g in ((a, "g1"), (b, "g2"))
    ]
    split = write_split(tmp_path / "split.csv", samples, ["dev", "dev"], folds=[0, 1])
    with pytest.raises(SystemExit, match="the stem 'a'"):
        liver_crop.link_distinct(split, tmp_path / "distinct")
