"""liver-lesions (real data, marked ``real``): the folder reads as three classes, a few training steps
run on it, and pseudo-masks are scored against its expert lesion masks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import quick_config
from liverscope import segment as S
from liverscope.data.datasets import load_samples
from liverscope.data.geometry import to_model
from liverscope.evaluate.masks import expert_mask_summary

pytestmark = pytest.mark.real


def test_the_masks_folder_is_not_a_class(real_lesions):
    samples, _ = load_samples(real_lesions)
    assert sorted({s.label for s in samples}) == ["benign", "malignant", "normal"]
    assert not any("masks" in s.path.parts[-3:-1] for s in samples)


def test_a_few_steps_then_pseudo_masks_scored_against_the_experts(real_lesions, tmp_path):
    from liverscope.training.run import fit

    files = {c: sorted((real_lesions / c).glob("*.png"))[:8] for c in ("benign", "malignant", "normal")}
    manifest = tmp_path / "subset.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for c, fs in files.items():
            w.writerows([str(f), c] for f in fs)
    cfg = quick_config(
        manifest,
        tmp_path / "runs",
        "lesions",
        **{"train.epochs": 1, "data.crop_sector": True, "train.max_train_batches": 2},
    )
    run = fit(cfg)
    from liverscope.rundir import read_preprocessing

    pp = read_preprocessing(run)
    pick = files["benign"][:2] + files["malignant"][:2] + files["normal"][:2]
    items, bad = S.load_images(pick, pp, roots=[real_lesions], labels=[p.parent.name for p in pick])
    assert not bad and len(items) == 6
    truth = [
        to_model(
            S.read_mask(S.find_mask(real_lesions / "masks" / "lesion", it.rel), it.shape), it.box, pp.size
        )
        for it in items
    ]
    assert [bool(t.any()) for t in truth] == [True] * 4 + [False] * 2  # normal livers have empty lesion masks
    pm = S.pseudo_masks(run, [it.input for it in items], "otsu")
    s = expert_mask_summary(
        list(pm.masks), truth, [it.label for it in items], list(pm.sectors), cams=list(pm.cams)
    )
    o = s["overall"]
    assert o["n_lesion"] == 4 and o["n_empty"] == 2
    assert 0.0 <= o["dice"] <= 1.0 and 0.0 <= s["pointing_game"] <= 1.0
    assert (
        o["false_positive_rate"] == 1.0
    )  # an Otsu cut of any map is never empty: every normal liver is a false alarm
    assert set(s["by_class"]) == {"benign", "malignant", "normal"}
    # the figures come from the expert masks: scoring against the complement changes them
    flipped = expert_mask_summary(
        list(pm.masks), [~t & sec for t, sec in zip(truth, pm.sectors)], None, list(pm.sectors)
    )
    assert flipped["overall"]["dice"] != pytest.approx(o["dice"]) or np.isnan(o["dice"])
