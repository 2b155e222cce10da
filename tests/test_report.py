"""The HTML report: one self-contained file, a section for each kind of result present, and only those."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from liverscope.errors import LiverscopeError
from liverscope.evaluate import plots as P
from liverscope.evaluate import report as R
from liverscope.evaluate.metrics import compute_metrics, metrics_by_group
from liverscope.utils import softmax

NAMES = ["F0", "F1", "F2", "F3", "F4"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _case(n: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(NAMES), n)
    logits = rng.normal(size=(n, len(NAMES))) * 2
    logits[np.arange(n), y] += 3
    sources = np.where(rng.random(n) < 0.5, "scannerA", "scannerB")
    return y, logits, sources


def make_run(root: Path, parts: set[str]) -> Path:
    """A fake run directory holding the base files (metrics.json with test metrics, model.json) plus
    the named optional ``parts``."""
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    y, logits, sources = _case()
    temperature = 1.6
    probs = softmax(logits, temperature)
    metrics = {
        "split": "grouped",
        "class_names": NAMES,
        "test": compute_metrics(y, probs, NAMES, ci=True, n_boot=100),
        "temperature": temperature,
    }
    if "by_source" in parts:
        metrics["test_by_source"] = metrics_by_group(y, probs, sources, NAMES)
    if "ensemble" in parts:
        metrics["ensemble"] = compute_metrics(y, probs, NAMES)
    if "ood" in parts:
        metrics["ood"] = {
            "method": "mahalanobis",
            "threshold": 812.5,
            "quantile": 0.95,
            "validation": {"n": 40, "flagged": 2, "share": 0.05, "threshold": 812.5},
            "test": {"n": 90, "flagged": 9, "share": 0.1, "threshold": 812.5},
        }
    if "shortcut" in parts:  # evaluate --ablation (issue 23)
        from liverscope.evaluate.shortcut import shortcut_table

        pred = probs.argmax(1)
        metrics["shortcut"] = dict(
            shortcut_table(y, {"plain": pred, "tissue": pred, "periphery": np.zeros_like(y)}, sources),
            regions=["tissue", "periphery"],
            sector_method="fan",
            no_sector=0,
        )
    if "ensemble_vs_oof" in parts:  # a cv run with a hold-out (issue 23)
        gap = {
            "balanced_accuracy": {"oof": 0.70, "ensemble": 0.74, "gap": 0.04},
            "n_oof": 80,
            "n_ensemble": 20,
        }
        metrics["ensemble_vs_oof"] = {"overall": gap, "by_source": {"scannerA": gap}}
        metrics["oof_protocol"] = {
            "select": "last",
            "honest": True,
            "warning": None,
            "temperature": "cross-fitted",
        }
    if "segmentation" in parts:
        metrics["segmentation"] = {
            "pseudo_mask_threshold": 0.5,
            "unet_vs_pseudo": {"iou": 0.43, "dice": 0.6},
            "unet_vs_expert": {"iou": 0.31, "dice": 0.47},
        }
    (run / "metrics.json").write_text(json.dumps(metrics))
    model = {
        "architecture": {"name": "resnet10t", "head": "linear", "num_classes": 5},
        "labels": NAMES,
        "temperature": temperature,
        "weights_source": "random init",
        "liverscope_version": "0.1.0",
    }
    if "provenance" in parts:
        model["provenance"] = PROVENANCE
    (run / "model.json").write_text(json.dumps(model))
    if "predictions" in parts:
        _write_csv(
            run / "predictions_test.csv",
            [
                "path",
                "label",
                "pred",
                "source",
                "group",
                *[f"prob_{c}" for c in NAMES],
                *[f"logit_{c}" for c in NAMES],
            ],
            [
                [
                    f"img{i}.png",
                    NAMES[y[i]],
                    NAMES[int(probs[i].argmax())],
                    sources[i],
                    "",
                    *probs[i],
                    *logits[i],
                ]
                for i in range(len(y))
            ],
        )
    if "history" in parts:
        _write_csv(
            run / "history.csv",
            ["epoch", "train_loss", "val_loss", "val_acc", "val_balanced_acc", "lr"],
            [
                [e, 1.6 * 0.8**e, 1.7 * 0.85**e + 0.1, 0.3 + 0.05 * e, 0.28 + 0.05 * e, 1e-4 * 0.9**e]
                for e in range(6)
            ],
        )
    if "split" in parts:
        _write_csv(
            run / "split.csv",
            ["path", "label", "split", "group", "source", "sha256"],
            [
                [f"i{i}.png", NAMES[i % 5], ("train", "val", "test")[i % 3], f"g{i}", "AB"[i % 2], ""]
                for i in range(60)
            ],
        )
    if "folds" in parts:
        _write_csv(
            run / "cv_folds.csv",
            ["fold", "n_val", "val_balanced_accuracy", "test_balanced_accuracy", "test_accuracy"],
            [[f, 30, 0.7 + 0.01 * f, 0.68 + 0.01 * f, 0.7] for f in range(3)],
        )
    if "audit" in parts:
        audit = {
            "summary": {
                "files": 60,
                "distinct": 50,
                "groups": 45,
                "label_conflicts": 0,
                "sources": 2,
                "confounded": False,
                "cramers_v": 0.1,
            },
            "warnings": ["10 files are byte-identical copies"],
            "contingency": {"classes": NAMES, "sources": ["A", "B"], "table": [[6, 6]] * 5},
        }
        (run / "audit.json").write_text(json.dumps(audit))
    if "gallery" in parts:
        (run / "cam_gallery").mkdir(exist_ok=True)
        P.plot_confusion_matrix(
            np.eye(2, dtype=int) * 3, ["a", "b"], run / "cam_gallery" / "F0_correct_01.png"
        )
    if "config" in parts:
        (run / "config.yaml").write_text("model:\n  name: resnet10t\ntrain:\n  epochs: 6\n")
    return run


PROVENANCE = {
    "versions": {
        "liverscope": "0.1.0",
        "python": "3.11.7",
        "torch": "2.14.1",
        "timm": "1.0.31",
        "monai": "1.6.1",
        "numpy": "2.4.6",
    },
    "seed": 0,
    "git": {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": False},
    "command": ["liverscope", "train", "--recipe", "cpu-quick"],
    "split_sha256": "9e" * 32,
    "created": "2026-11-23T22:14:48+00:00",
}

# which optional part brings which sections (the base files bring the rest)
PART_SECTIONS = {
    "predictions": {"ROC curves", "Calibration"},
    "history": {"Training curves"},
    "split": {"Data split"},
    "folds": {"Cross-validation folds"},
    "audit": {"Data audit"},
    "by_source": {"Results by acquisition source"},
    "ensemble": {"Fold ensemble"},
    "ensemble_vs_oof": {"Out of fold and the fold ensemble"},
    "shortcut": {"Shortcut check"},
    "gallery": {"Class activation maps"},
    "segmentation": {"Segmentation"},
    "config": {"Configuration"},
    "ood": {"Out-of-distribution flag"},
    "provenance": {"Provenance"},
}
BASE_SECTIONS = {"Summary", "Confusion matrix", "Per-class metrics", "Clinical endpoints"}
ALL_TITLES = {t for t, _ in R.SECTIONS}


def headings(page: str) -> set[str]:
    return set(re.findall(r"<h2>([^<]+)</h2>", page))


def assert_self_contained(page: str) -> None:
    srcs = re.findall(r'src\s*=\s*["\']?([^"\' >]+)', page, flags=re.I)
    assert srcs, "expected embedded images"
    assert all(s.startswith("data:") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert not re.search(r"<link[^>]+stylesheet", page, flags=re.I)
    assert "<script" not in page.lower()


def test_full_run_has_every_section_and_is_self_contained(tmp_path):
    run = make_run(tmp_path, set(PART_SECTIONS))
    path = R.write_report(run)
    assert path == run / "report.html" and path.exists()
    page = path.read_text(encoding="utf-8")
    assert headings(page) == ALL_TITLES
    assert_self_contained(page)
    assert "Could not read" not in page
    # every built-in plot is also left beside the report as a PNG
    for name in ("curves.png", "confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
    # figures from the data appear in the tables: the test accuracy with its interval, the class names
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert f"{m['accuracy']:.3f}" in page and f"{m['ci']['accuracy']['ci95'][0]:.3f}" in page
    assert "≥F2 significant fibrosis" in page and "scannerA" in page


def test_minimal_run_has_only_its_sections(tmp_path):
    page = R.write_report(make_run(tmp_path, set())).read_text(encoding="utf-8")
    assert headings(page) == BASE_SECTIONS
    assert_self_contained(page)


@pytest.mark.parametrize("part", sorted(PART_SECTIONS))
def test_each_section_appears_only_with_its_data(tmp_path, part):
    page = R.write_report(make_run(tmp_path, {part})).read_text(encoding="utf-8")
    assert headings(page) == BASE_SECTIONS | PART_SECTIONS[part]


def test_provenance_section_shows_versions_commit_command_and_data_hash(tmp_path):
    page = R.write_report(make_run(tmp_path, {"provenance"})).read_text(encoding="utf-8")
    section = page[page.index('id="provenance"') :]
    section = section[: section.index("</section>")]
    for name, v in PROVENANCE["versions"].items():
        assert f"{name} version" in section and v in section, name
    assert PROVENANCE["git"]["commit"] in section and "uncommitted" not in section
    assert "liverscope train --recipe cpu-quick" in section and PROVENANCE["split_sha256"] in section


def test_non_metavir_run_has_no_endpoints(tmp_path):
    run = tmp_path / "masses"
    run.mkdir()
    y, logits, _ = _case()
    names = ["normal", "cyst", "hemangioma", "hcc", "metastasis"]
    (run / "metrics.json").write_text(
        json.dumps({"class_names": names, "test": compute_metrics(y, softmax(logits), names)})
    )
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "Clinical endpoints" not in headings(page) and "Confusion matrix" in headings(page)
    assert "hemangioma" in page


def test_extra_sections_from_other_modules(tmp_path):
    run = make_run(tmp_path, set())
    img = P.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "extra.png")
    page = R.write_report(
        run,
        sections={
            "Faithfulness": "<p>deletion AUC <b>0.21</b></p>",
            "Segmentation examples": img,
            "Timing": {"train seconds": 812.4, "images": 90},
            "From a builder": lambda rd: f"<p>{len(rd.class_names)} classes</p>",
            "Nothing to show": lambda rd: None,
            "Per-class metrics": None,  # a built-in dropped by its title
        },
    ).read_text(encoding="utf-8")
    h = headings(page)
    assert {"Faithfulness", "Segmentation examples", "Timing", "From a builder"} <= h
    assert "Nothing to show" not in h and "Per-class metrics" not in h
    assert "<b>0.21</b>" in page and "5 classes" in page and "812.400" in page
    assert page.index("<h2>Summary</h2>") < page.index(
        "<h2>Faithfulness</h2>"
    )  # extras come after the built-ins
    assert_self_contained(page)
    with pytest.raises(LiverscopeError, match="does not exist"):
        R.write_report(run, sections={"Missing": tmp_path / "nope.png"})


def test_damaged_file_costs_only_its_section(tmp_path):
    run = make_run(tmp_path, {"audit", "history"})
    (run / "audit.json").write_text("{not json")
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "Data audit" not in headings(page) and "Training curves" in headings(page)
    assert "Could not read audit.json" in page


def test_html_in_data_is_escaped(tmp_path):
    run = make_run(tmp_path, {"config"})
    (run / "config.yaml").write_text("name: <script>alert(1)</script>\n")
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_cv_run_overlays_fold_histories(tmp_path):
    run = make_run(tmp_path, {"folds", "ensemble"})
    for f in range(3):
        (run / "folds" / f"fold{f}").mkdir(parents=True)
        _write_csv(
            run / "folds" / f"fold{f}" / "history.csv",
            ["epoch", "train_loss", "val_loss", "val_acc", "val_balanced_acc", "lr"],
            [
                [e, 1.5 - 0.1 * e - 0.02 * f, 1.6 - 0.08 * e, 0.4 + 0.04 * e, 0.38 + 0.04 * e, 1e-4]
                for e in range(5)
            ],
        )
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "Training curves" in headings(page) and "one colour per fold" in page
    assert "mean ± sd" in page and "ensemble" in page


def test_plots_write_pngs(tmp_path):
    y, logits, _ = _case(60, seed=2)
    p = softmax(logits)
    files = [
        P.plot_confusion_matrix(
            np.array([[5, 1], [2, 7]]), ["normal", "abnormal"], tmp_path / "cm.png", normalise=False
        ),
        P.plot_roc_curves(y, p, NAMES, tmp_path / "roc.png"),
        P.plot_reliability(p, y, tmp_path / "rel.png", calibrated=softmax(logits, 2.0)),
        P.plot_training_curves(
            [
                {"epoch": 0, "train_loss": 1.0, "val_loss": 1.1, "val_acc": 0.5},
                {"epoch": 1, "train_loss": 0.8, "val_loss": ""},
            ],
            tmp_path / "curves.png",
        ),
    ]
    for f in files:
        assert f.read_bytes()[:8] == PNG_MAGIC and f.stat().st_size > 5000
    with pytest.raises(LiverscopeError):
        P.plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(LiverscopeError):
        P.plot_training_curves([], tmp_path / "empty.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cosine schedule ending at lr 0 must not break the log axis
        P.plot_training_curves(
            [{"epoch": e, "train_loss": 1 / (e + 1), "lr": 1e-3 * (4 - e) / 4} for e in range(5)],
            tmp_path / "lr0.png",
        )


def test_write_report_needs_a_directory(tmp_path):
    with pytest.raises(LiverscopeError, match="not a directory"):
        R.write_report(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(LiverscopeError, match="not a liverscope run directory"):
        R.write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_ood_section_shows_threshold_shares_and_warns_on_a_set_that_does_not_transfer(tmp_path):
    run = make_run(tmp_path, {"ood"})
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "812.500" in page and "2 of 40 (5.0%)" in page and "9 of 90 (10.0%)" in page
    assert "does not transfer" not in page
    # `liverscope evaluate` on another site: most of it flagged
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["ood"] = {"method": "mahalanobis", "n": 50, "flagged": 41, "share": 0.82, "threshold": 812.5}
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "41 of 50 (82.0%)" in page and "does not transfer" in page


def _report_with_temperature_fit(tmp_path, fit: dict) -> str:
    """The report of a run whose model.json carries ``fit`` as its temperature fit (and its temperature)."""
    run = make_run(tmp_path, {"predictions"})
    model = json.loads((run / "model.json").read_text())
    model["temperature"], model["temperature_fit"] = fit["temperature"], fit
    (run / "model.json").write_text(json.dumps(model))
    return R.write_report(run).read_text(encoding="utf-8")


def test_calibration_section_reports_a_refused_temperature(tmp_path):
    page = _report_with_temperature_fit(
        tmp_path,
        {
            "fitted": 0.1,
            "temperature": 1.0,
            "applied": False,
            "at_edge": True,
            "bounds": [0.1, 10.0],
            "warning": "temperature fit stopped at the lower edge of its range",
        },
    )
    assert "Temperature not applied: temperature fit stopped at the lower edge" in page
    assert "none applied (the fit stopped at the edge of its range)" in page
    assert "temperature-scaled (T =" not in page


def test_calibration_section_says_how_an_ensemble_temperature_was_made(tmp_path):
    page = _report_with_temperature_fit(
        tmp_path, {"fitted": 1.085, "temperature": 0.999, "applied": True, "ensemble_spread_ratio": 0.921}
    )
    assert "the out-of-fold one (1.085) times 0.921" in page


# --------------------------------------------------------------------------------------------------
# where the figures come from; the decision-support notice; flagged gallery images
# --------------------------------------------------------------------------------------------------


def _header(page: str) -> str:
    return page[page.index("<header>") : page.index("</header>")]


def test_header_names_the_training_data_and_says_when_it_was_the_phantoms(tmp_path):
    import html

    from liverscope.evaluate.notices import DECISION_SUPPORT, PHANTOMS

    run = make_run(tmp_path, set())
    data = {
        "path": "/data/liver_us",
        "images": 312,
        "sources": {"640x480 jpeg grey": 300, "mixed sizes png rgb": 12},
        "synthetic_phantoms": False,
    }
    model = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps(dict(model, training_data=data)))
    page = R.write_report(run).read_text(encoding="utf-8")
    header = _header(page)
    assert (
        "Trained on /data/liver_us: 312 images from 2 acquisition sources (640x480 jpeg grey (300); mixed sizes png rgb (12))."
        in header
    )
    assert "phantoms" not in header
    page = html.unescape(page)
    assert DECISION_SUPPORT in page and page.index(DECISION_SUPPORT) < page.index(
        "<section"
    )  # above every section

    (run / "model.json").write_text(
        json.dumps(dict(model, training_data=dict(data, synthetic_phantoms=True)))
    )
    header = html.unescape(_header(R.write_report(run).read_text(encoding="utf-8")))
    assert "the built-in synthetic phantoms." in header and f'<p class="phantoms">{PHANTOMS}</p>' in header


def test_run_from_before_the_record_names_its_data_from_config_and_split(tmp_path):
    """A run trained before model.json recorded its data: config.yaml's data path, split.csv's images and
    sources, and the phantom marker of the folder when it is still there."""
    from liverscope.data.datasets import make_phantoms

    phantoms = make_phantoms(tmp_path / "phantoms", n_per_class=1, classes=["F0", "F1"], size=32)
    run = make_run(tmp_path, {"split"})
    (run / "config.yaml").write_text(f"data:\n  path: {phantoms}\nmodel:\n  name: resnet10t\n")
    header = _header(R.write_report(run).read_text(encoding="utf-8"))
    assert (
        f"Trained on {phantoms.resolve()}: 60 images from 2 acquisition sources (A (30); B (30)), the built-in synthetic phantoms."
        in header
    )
    assert 'class="phantoms"' in header
    (run / "config.yaml").write_text(f"data:\n  path: {tmp_path / 'gone'}\n")
    header = _header(R.write_report(run).read_text(encoding="utf-8"))
    assert (
        f"Trained on {tmp_path / 'gone'}: 60 images" in header and "phantoms" not in header
    )  # cannot tell any more: not claimed
    (run / "config.yaml").unlink()
    assert "Trained on: not recorded in this run." in _header(R.write_report(run).read_text(encoding="utf-8"))


def test_gallery_tile_of_a_flagged_image_shows_not_assessable(tmp_path):
    """A flagged image's tile leads with "not assessable (flagged)" and keeps its stage behind "show anyway";
    the others keep their caption."""
    from liverscope import rundir

    run = make_run(tmp_path, set())
    tile = np.full((8, 8, 3), 128, np.uint8)
    rundir.write_gallery(
        run,
        [
            ("F0_correct_00_a.png", tile, "a.png: true F0, predicted F0 (p=0.91)"),
            ("F4_wrong_01_b.png", tile, "b.png: true F4, predicted F1 (p=0.88)"),
        ],
        flagged=["F4_wrong_01_b.png"],
    )
    page = R.write_report(run).read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page[page.index('<div class="gallery">') :])
    assert captions[0] == "a.png: true F0, predicted F0 (p=0.91)"
    assert captions[1].startswith(
        '<b class="flag">not assessable (flagged)</b>: unlike the images this model was trained on'
    )
    assert (
        "<details><summary>show anyway</summary>b.png: true F4, predicted F1 (p=0.88)</details>"
        in captions[1]
    )
    # a gallery written without the flags (older liverscope) says so when the run has a detector
    (run / "cam_gallery" / "flagged.json").unlink()
    model = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps(dict(model, ood={"method": "energy", "threshold": 1.0})))
    page = R.write_report(run).read_text(encoding="utf-8")
    assert "not assessable" not in page and "does not record which of its images were flagged" in page
    assert rundir.read_gallery(run / "cam_gallery")[1][2] is None
