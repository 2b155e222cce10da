"""Expert-mask summary of issue 11 (liverscope.evaluate.masks): detection, lesion-size quartiles, the
per-class table, false alarms on lesion-free images, and the trivial baselines (centred disc, sector centre)."""

from __future__ import annotations

import numpy as np
import pytest

from liverscope.errors import LiverscopeError
from liverscope.evaluate.masks import (
    centred_disc,
    detected,
    expert_mask_summary,
    pointing_game,
    sector_centre,
    size_quartiles,
)

H = 32


def disc(cy: float, cx: float, r: float, shape=(H, H)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def empty() -> np.ndarray:
    return np.zeros((H, H), bool)


def test_detected_needs_one_pixel_inside_the_lesion():
    lesion = disc(16, 16, 4)
    one = empty()
    one[16, 16] = True
    assert detected(one, lesion) is True
    assert detected(~lesion, lesion) is False
    assert detected(lesion, empty()) is None  # no lesion: no answer


def test_a_perfect_prediction_scores_one_and_its_complement_zero():
    trues = [disc(10, 10, 4), disc(20, 18, 6), disc(8, 22, 3)]
    perfect = expert_mask_summary(trues, trues)["overall"]
    assert perfect == {"n": 3, "n_lesion": 3, "dice": 1.0, "iou": 1.0, "detection_rate": 1.0}
    worst = expert_mask_summary([~t for t in trues], trues)["overall"]
    assert worst["dice"] == 0.0 and worst["iou"] == 0.0 and worst["detection_rate"] == 0.0
    # half the images right, half wrong: the means sit in between
    mixed = expert_mask_summary([trues[0], ~trues[1]], trues[:2])["overall"]
    assert mixed["dice"] == pytest.approx(0.5) and mixed["detection_rate"] == pytest.approx(0.5)


def test_lesion_free_images_give_the_false_positive_rate_not_dice():
    lesion = disc(16, 16, 5)
    speck = empty()
    speck[2, 2] = True
    # two lesion images predicted perfectly; three normal livers: one clean, two with false alarms
    preds = [lesion, lesion, empty(), speck, lesion]
    trues = [lesion, lesion, empty(), empty(), empty()]
    out = expert_mask_summary(preds, trues)["overall"]
    assert out["n"] == 5 and out["n_lesion"] == 2 and out["n_empty"] == 3
    assert (
        out["dice"] == 1.0
    )  # the empty-truth images are not averaged in (an empty prediction would score 1)
    assert out["false_positive_rate"] == pytest.approx(2 / 3)
    # a single stray pixel is not a false alarm when min_pixels asks for more
    assert expert_mask_summary(preds, trues, min_pixels=2)["overall"]["false_positive_rate"] == pytest.approx(
        1 / 3
    )
    # only normal livers: no Dice at all
    only_empty = expert_mask_summary([speck, empty()], [empty(), empty()])["overall"]
    assert "dice" not in only_empty and only_empty["false_positive_rate"] == 0.5


def test_per_class_table_groups_the_images():
    lesion = disc(16, 16, 5)
    preds = [lesion, ~lesion, lesion, empty(), lesion]
    trues = [lesion, lesion, lesion, empty(), empty()]
    classes = ["benign", "malignant", "malignant", "normal", "normal"]
    by = expert_mask_summary(preds, trues, classes=classes)["by_class"]
    assert sorted(by) == ["benign", "malignant", "normal"]
    assert by["benign"]["dice"] == 1.0 and by["benign"]["n"] == 1
    assert by["malignant"]["dice"] == pytest.approx(0.5) and by["malignant"][
        "detection_rate"
    ] == pytest.approx(0.5)
    assert "dice" not in by["normal"] and by["normal"]["false_positive_rate"] == pytest.approx(0.5)
    assert "by_class" not in expert_mask_summary(preds, trues)


def test_size_quartiles_on_known_areas():
    q, ranges = size_quartiles([0, 1, 2, 3, 4, 5, 6, 7, 8, 0])
    assert list(q) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 0]
    assert ranges == [(1, 2), (3, 4), (5, 6), (7, 8)]
    q, ranges = size_quartiles([5, 5, 5])  # ties at an edge go to the lower quartile
    assert list(q) == [1, 1, 1] and ranges[1][0] != ranges[1][0]  # Q2..Q4 empty: NaN ranges
    q, ranges = size_quartiles([0, 0])
    assert list(q) == [0, 0] and ranges == []


def test_summary_by_lesion_size_quartile():
    """Eight lesions of growing size; the prediction finds only the four largest: Q1, Q2 missed, Q3, Q4 hit."""
    radii = [1.5, 2, 2.5, 3, 4, 5, 6, 7]
    trues = [disc(16, 16, r) for r in radii] + [empty()]
    preds = [empty() if r < 4 else t for r, t in zip(radii, trues)] + [empty()]
    sector = np.ones((H, H), bool)
    out = expert_mask_summary(preds, trues, regions=[sector] * len(trues))["by_size_quartile"]
    assert sorted(out) == ["Q1", "Q2", "Q3", "Q4"]
    assert [out[k]["n_lesion"] for k in ("Q1", "Q2", "Q3", "Q4")] == [2, 2, 2, 2]
    assert [out[k]["detection_rate"] for k in ("Q1", "Q2", "Q3", "Q4")] == [0.0, 0.0, 1.0, 1.0]
    lo, hi = out["Q1"]["area_share"]
    assert lo == pytest.approx(trues[0].sum() / H**2) and hi == pytest.approx(trues[1].sum() / H**2)
    assert out["Q4"]["area_share"][1] == pytest.approx(trues[7].sum() / H**2)


def test_regions_restrict_the_scores():
    lesion = disc(16, 16, 6)
    region = np.zeros((H, H), bool)
    region[:, :16] = True
    pred = lesion.copy()
    pred[:, 16:] = False  # right half of the lesion missed, but it lies outside the region
    assert expert_mask_summary([pred], [lesion])["overall"]["dice"] < 1.0
    assert expert_mask_summary([pred], [lesion], regions=[region])["overall"]["dice"] == 1.0
    # a false alarm outside the region is not counted
    outside = empty()
    outside[5, 30] = True
    assert (
        expert_mask_summary([outside], [empty()], regions=[region])["overall"]["false_positive_rate"] == 0.0
    )


def test_pointing_game_through_cams():
    trues = [disc(8, 8, 3), disc(24, 24, 3), disc(8, 24, 3), empty()]
    hot = [np.where(t, 1.0, 0.0) if t.any() else np.zeros((H, H)) for t in trues]
    hot[1] = disc(8, 8, 3).astype(float)  # image 1's map peaks elsewhere: a miss
    out = expert_mask_summary(trues, trues, cams=hot)
    assert out["pointing_n"] == 3  # the lesion-free image has no answer
    assert out["pointing_game"] == pytest.approx(2 / 3)
    assert "pointing_game" not in expert_mask_summary(trues, trues)
    with pytest.raises(LiverscopeError, match="maps"):
        expert_mask_summary(trues, trues, cams=hot[:2])


def test_mismatched_inputs_are_clear_errors():
    with pytest.raises(LiverscopeError, match="2 predictions, 1 expert masks"):
        expert_mask_summary([empty(), empty()], [empty()])
    with pytest.raises(LiverscopeError, match="classes"):
        expert_mask_summary([empty()], [empty()], classes=["a", "b"])


def fan(shape=(64, 64)) -> np.ndarray:
    """A scan-sector-like fan: a wedge below an apex at the top centre."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(yy - 2, xx - shape[1] / 2)
    ang = np.degrees(np.arctan2(xx - shape[1] / 2, yy - 2))
    return (r > 8) & (r < 60) & (np.abs(ang) < 40)


@pytest.mark.parametrize("area", [20, 150, 400])
def test_centred_disc_has_the_requested_area_inside_the_sector(area):
    sector = fan()
    d = centred_disc(sector, area)
    assert not (d & ~sector).any()
    assert d.sum() == pytest.approx(area, rel=0.15)
    ys, xs = np.nonzero(sector)
    cy, cx = np.nonzero(d)
    assert abs(cy.mean() - ys.mean()) < 1.0 and abs(cx.mean() - xs.mean()) < 1.0  # centred on the sector
    assert not centred_disc(sector, 0).any() and not centred_disc(np.zeros((8, 8), bool), 10).any()


def test_sector_centre_points_at_the_middle_of_the_sector():
    sector = fan()
    m = sector_centre(sector)
    ys, xs = np.nonzero(sector)
    middle = disc(ys.mean(), xs.mean(), 2, sector.shape)
    far = int(
        np.argmax((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    )  # the sector pixel farthest from its centroid
    edge = disc(ys[far], xs[far], 2, sector.shape) & sector
    assert pointing_game(m, middle, sector) is True
    assert pointing_game(m, edge, sector) is False
    assert m[ys.mean().round().astype(int), xs.mean().round().astype(int)] > m[ys[far], xs[far]]
    assert not sector_centre(np.zeros((4, 4), bool)).any()
