"""The shortcut check (issue 23): blanking the scan sector's tissue or periphery, the skill table and
its verdict, the report section, and ``evaluate --ablation``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverscope.errors import UsageError
from liverscope.utils import read_json


@pytest.fixture(scope="module")
def frame():
    """A phantom frame (speckled tissue in a convex sector, text and a depth scale outside) and its drawn sector."""
    from liverscope.data.datasets import _fan_mask, make_phantom

    img, _ = make_phantom(2, size=192, seed=3)
    return img, _fan_mask(192)


def test_the_found_sector_is_the_drawn_one(frame):
    from liverscope.data.sector import sector_mask

    img, drawn = frame
    found = sector_mask(img, "fan")
    assert (found & drawn).sum() / (found | drawn).sum() > 0.95


@pytest.mark.parametrize("region", ["tissue", "periphery"])
def test_blanking_sets_exactly_the_region_it_names_to_the_background_level(frame, region):
    from liverscope.data.ablation import blank
    from liverscope.data.sector import background_level, sector_mask

    img, _ = frame
    mask = sector_mask(img, "fan")
    level = background_level(img)
    assert level == 0  # the phantom's black border
    out = blank(img, mask, region, level)
    named = mask if region == "tissue" else ~mask
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.count_nonzero(out[named] == level) == named.sum()  # every pixel of the region, counted
    assert np.array_equal(out[~named], img[~named])  # and nothing else
    if region == "tissue":
        assert np.count_nonzero(img[named] != level) > 0.9 * named.sum()  # there was tissue to blank
    else:
        assert img[named].max() == 255 and out[named].max() == 0  # the text is gone


def test_blanking_a_grey_background_uses_its_level_in_every_channel(frame):
    from liverscope.data.ablation import blank
    from liverscope.data.sector import background_level, sector_mask

    img, _ = frame
    grey = np.where(img == 0, 10, img).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    mask = sector_mask(rgb, "fan")
    level = background_level(rgb)
    out = blank(rgb, mask, "tissue", level)
    assert level == 10 and np.all(out[mask] == 10) and np.array_equal(out[~mask], rgb[~mask])


def test_the_model_sees_the_blanked_frame_through_the_runs_own_preprocessing(frame):
    from liverscope.data.ablation import ablated_inputs, blank
    from liverscope.data.geometry import bounding_box
    from liverscope.data.preprocess import Preprocessing, preprocess_array
    from liverscope.data.sector import sector_mask

    img, _ = frame
    clean = np.where(sector_mask(img, "fan"), img, 0).astype(
        np.uint8
    )  # no text: its periphery is background already
    for crop in (False, True):
        pp = Preprocessing(size=64, denoise=True, crop_sector=crop)
        got = ablated_inputs(clean, pp, ["tissue", "periphery"])
        assert got.sector_found and set(got.inputs) == {"tissue", "periphery"}
        assert np.array_equal(got.inputs["periphery"], preprocess_array(clean, pp))  # nothing there to blank
    # with the text, the periphery differs; a sector-cropping run keeps the original frame's crop box
    pp = Preprocessing(size=64, denoise=False, crop_sector=True)
    got = ablated_inputs(img, pp, ["tissue", "periphery"])
    assert not np.array_equal(got.inputs["periphery"], preprocess_array(img, pp))
    mask = sector_mask(img, "fan")
    y0, y1, x0, x1 = bounding_box(mask)
    expected = preprocess_array(
        blank(img, mask, "tissue", 0)[y0:y1, x0:x1], Preprocessing(size=64, denoise=False)
    )
    assert np.array_equal(got.inputs["tissue"], expected)
    assert (
        got.inputs["tissue"] == 0
    ).mean() > 0.5  # the sector's box is mostly blank: no tissue, only its corners


def test_a_frame_without_a_sector_says_so():
    from liverscope.data.ablation import ablated_inputs
    from liverscope.data.preprocess import Preprocessing

    tissue = np.random.default_rng(0).integers(
        40, 200, (96, 96), dtype=np.uint8
    )  # fills the frame: no border
    got = ablated_inputs(tissue, Preprocessing(size=32, denoise=False), ["tissue", "periphery"])
    assert not got.sector_found and got.inputs["tissue"].std() == 0


def test_ablation_values_are_checked():
    from liverscope.config import CHOICES
    from liverscope.data.ablation import REGIONS, parse_ablations

    assert REGIONS == CHOICES["evaluate.ablation"] == ("tissue", "periphery")
    assert parse_ablations(["periphery", "tissue"]) == ["tissue", "periphery"]
    assert (
        parse_ablations("tissue, periphery,tissue") == ["tissue", "periphery"] and parse_ablations(None) == []
    )
    with pytest.raises(UsageError, match="--ablation liver: choose tissue or periphery"):
        parse_ablations(["tissue,liver"])


def test_cli_rejects_a_bad_ablation_and_one_without_data(tmp_path):
    from typer.testing import CliRunner

    from liverscope.ui.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path), str(tmp_path), "--ablation", "tissue,scanner"])
    assert res.exit_code == 2 and "--ablation scanner: choose tissue or periphery" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path), "--ablation", "tissue"])
    assert res.exit_code == 2 and "--ablation re-scores the images of DATA" in res.output


def test_skill_table_and_verdicts():
    from liverscope.evaluate.shortcut import READS_SCANNER, shortcut_table, skill

    assert skill([0, 0, 1, 1], [0, 0, 1, 1]) == {"balanced_accuracy": 1.0, "chance": 0.5, "skill": 0.5}
    assert skill([2, 2, 2], [2, 2, 2]) is None  # one class: no skill to measure
    rng = np.random.default_rng(0)
    y = np.r_[
        np.repeat(np.arange(4), 15), np.zeros(28, int), np.full(28, 3), [1, 1, 2, 2]
    ]  # source b: F0 and F3 only
    src = np.array(["a"] * 60 + ["b"] * 56 + ["c"] * 4)
    guess = rng.integers(0, 4, len(y))
    # the scanner: the score survives without the tissue
    t = shortcut_table(y, {"plain": y, "tissue": y, "periphery": guess}, src)
    assert t["overall"]["plain"]["skill"] == pytest.approx(0.75) and t["overall"]["verdict"] == "scanner"
    assert t["reads_scanner"] and t["message"] == READS_SCANNER
    assert set(t["by_source"]) == {"a", "b"} and t["skipped_sources"] == {"c": 4}
    assert t["by_source"]["b"]["classes"] == 2 and t["by_source"]["b"]["plain"]["chance"] == 0.5
    # the liver: only the periphery-blanked score survives
    t = shortcut_table(y, {"plain": y, "tissue": guess, "periphery": y}, src)
    assert t["overall"]["verdict"] == "liver" and not t["reads_scanner"]
    assert t["overall"]["periphery"]["share_of_plain"] == pytest.approx(1.0)
    # neither part alone; and no skill at all
    assert (
        shortcut_table(y, {"plain": y, "tissue": guess, "periphery": guess}, src)["overall"]["verdict"]
        == "whole frame"
    )
    assert shortcut_table(y, {"plain": guess, "tissue": guess}, src)["overall"]["verdict"] == "no skill"


def test_report_section_renders_the_check_and_says_when_the_model_reads_the_scanner(tmp_path):
    from liverscope.evaluate.report import write_report
    from liverscope.evaluate.shortcut import READS_SCANNER, shortcut_table

    y = np.repeat(np.arange(3), 20)
    src = ["x"] * 30 + ["y"] * 30
    table = shortcut_table(y, {"plain": y, "tissue": y, "periphery": np.zeros_like(y)}, src)
    shortcut = dict(table, regions=["tissue", "periphery"], sector_method="fan", no_sector=2, tta="none")
    (tmp_path / "metrics.json").write_text(
        json.dumps({"class_names": ["F0", "F1", "F2"], "shortcut": shortcut})
    )
    page = write_report(tmp_path).read_text()
    assert "Shortcut check" in page and "skill, tissue blanked" in page and "skill, periphery blanked" in page
    assert READS_SCANNER[1:] in page and "source y" in page and "2 image(s) had no scan sector found" in page
    table = shortcut_table(y, {"plain": y, "tissue": np.zeros_like(y)}, src)
    (tmp_path / "metrics.json").write_text(
        json.dumps({"class_names": ["F0", "F1", "F2"], "shortcut": dict(table, regions=["tissue"])})
    )
    page = write_report(tmp_path).read_text()
    assert "Shortcut check" in page and READS_SCANNER[1:] not in page and "periphery blanked" not in page


@pytest.mark.slow
def test_evaluate_with_ablation_on_phantoms_finds_a_model_that_reads_the_tissue(
    trained_run, phantom_dir, tmp_path
):
    from liverscope.training.external import evaluate_on_data

    out = evaluate_on_data(
        trained_run, phantom_dir, out=tmp_path / "eval", device="cpu", ablation=["tissue,periphery"]
    )
    m = read_json(out / "metrics.json")
    sc = m["shortcut"]
    assert (
        sc["regions"] == ["tissue", "periphery"]
        and sc["no_sector"] == 0
        and sc["overall"]["n"] == m["test"]["n"]
    )
    plain = sc["overall"]["plain"]
    assert plain["balanced_accuracy"] == pytest.approx(
        m["test"]["balanced_accuracy"], abs=1e-6
    )  # the plain figure is the report's
    # the phantoms' classes live in the speckle: without the tissue nothing is left (the text outside the
    # sector is the same in every class); without the text more is left than without the tissue
    assert (
        sc["overall"]["tissue"]["skill"] < 0.1
        and not sc["reads_scanner"]
        and sc["overall"]["verdict"] in ("liver", "whole frame")
    )
    assert sc["overall"]["periphery"]["skill"] > sc["overall"]["tissue"]["skill"] + 0.1
    assert "Shortcut check" in (out / "report.html").read_text()
