"""The prediction outputs: CSV and JSON carry the same fields by the same names."""

from __future__ import annotations

import csv
import json

import pytest

from liverscope.inference.results import Result, csv_header, write_results

LABELS = ["F0", "F1", "F2", "F3", "F4"]


def _results() -> list[Result]:
    probs = dict(zip(LABELS, [0.05, 0.15, 0.2, 0.25, 0.35]))
    return [
        Result("a.png", "F4", probs, [0.0] * 5, ood_score=3.5, ood=False),
        Result("loop.dcm", "F4", probs, [0.0] * 5, ood_score=9.25, ood=True, frames=3),
        Result("bad.png", error="not an image"),
    ]


def _same(csv_value: str, json_value) -> bool:
    if json_value is None:
        return csv_value == ""
    if isinstance(json_value, bool):
        return csv_value == str(json_value).lower()
    if isinstance(json_value, (int, float)):
        return float(csv_value) == pytest.approx(json_value, abs=1e-6)
    return csv_value == json_value


def test_json_names_every_csv_field_the_csv_way(tmp_path):
    write_results(_results(), LABELS, tmp_path / "r.csv")
    write_results(_results(), LABELS, tmp_path / "r.json")
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    items = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert {"p_ge_F2", "p_ge_F3", "p_F4", "frames"} <= set(csv_header(LABELS))
    for row, item in zip(rows, items, strict=True):
        for col, value in row.items():
            if col.startswith("prob_"):
                assert _same(value, (item["probabilities"] or {}).get(col[len("prob_") :])), (
                    col,
                    value,
                    item,
                )
            else:
                assert col in item and _same(value, item[col]), (col, value, item)
        assert not any("≥" in k for k in item)  # no second spelling of the endpoints
    assert items[0]["p_ge_F2"] == pytest.approx(0.8) and items[0]["p_F4"] == pytest.approx(0.35)
    assert [i["frames"] for i in items] == [1, 3, None]


def test_json_of_other_labels_has_no_endpoints(tmp_path):
    labels = ["normal", "fatty"]
    write_results([Result("x.png", "fatty", {"normal": 0.3, "fatty": 0.7})], labels, tmp_path / "r.json")
    (item,) = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert not [k for k in item if k.startswith("p_")] and item["frames"] == 1
