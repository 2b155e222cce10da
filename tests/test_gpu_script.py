"""benchmarks/gpu.sh (issue 26, item 5): without a CUDA GPU it stops at once, says so, and writes nothing;
its table cells (out-of-fold balanced accuracy, macro AUC, QWK, per source; the fold ensemble on a hold-out and
the shortcut check) read a cv run (benchmarks/cv_score.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has a GPU: gpu.sh would run the benchmarks"
)
def test_gpu_script_fails_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out)],
        capture_output=True,
        text=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 2 and "no CUDA GPU" in res.stderr and not out.exists()


def test_gpu_table_reads_the_out_of_fold_figure_or_the_folds(tmp_path):
    run = tmp_path / "run"
    for i, ba in enumerate((0.6, 0.7)):
        (run / "folds" / f"fold-{i}").mkdir(parents=True)
        (run / "folds" / f"fold-{i}" / "model.json").write_text(
            json.dumps({"validation": {"balanced_accuracy": ba}})
        )
    score = [sys.executable, str(REPO / "benchmarks" / "cv_score.py"), "oof", str(run)]
    assert (
        subprocess.run(score, capture_output=True, text=True, check=True).stdout.strip()
        == "0.650 (validation, 2 fold(s)) | | |"
    )
    metrics = {
        "oof": {"balanced_accuracy": 0.7421, "macro_auc": 0.93, "quadratic_kappa": None},
        "oof_by_source": {"groups": {"A": {"balanced_accuracy": 0.6}, "B": {"balanced_accuracy": 0.91}}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    cells = subprocess.run(score, capture_output=True, text=True, check=True).stdout.strip()
    assert cells == "0.742 | 0.930 |  | A 0.600, B 0.910"


def test_holdout_cells_read_the_split_the_ensemble_and_the_shortcut_check(tmp_path):
    run, ev = tmp_path / "run", tmp_path / "run" / "eval"
    ev.mkdir(parents=True)
    rows = ["path,label,split,group,source,sha256"] + [
        f"a/{i}.png,F{i - 1},{part},,," for i, part in enumerate(("train", "test", "val", "test"), 1)
    ]
    (run / "split.csv").write_text("\n".join(rows) + "\n")
    cv_score = [sys.executable, str(REPO / "benchmarks" / "cv_score.py")]
    manifest = tmp_path / "holdout.csv"
    subprocess.run(cv_score + ["manifest", str(run), str(manifest)], check=True, cwd=tmp_path)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path,label" and len(lines) == 3
    assert lines[1] == f"{tmp_path / 'a' / '2.png'},F1" and lines[2].endswith("4.png,F3")
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "oof": {"balanced_accuracy": 0.7, "macro_auc": 0.9, "quadratic_kappa": 0.8},
                "test": {"balanced_accuracy": 0.75, "macro_auc": 0.95, "quadratic_kappa": 0.85},
                "test_by_source": {"groups": {"A": {"balanced_accuracy": 0.6}}},
            }
        )
    )
    skill = {"plain": {"skill": 0.5}, "tissue": {"skill": 0.0}, "periphery": {"skill": 0.49}}
    (ev / "metrics.json").write_text(
        json.dumps(
            {"test": {"balanced_accuracy": 0.8}, "shortcut": {"overall": skill, "by_source": {"A": skill}}}
        )
    )
    cells = subprocess.run(
        cv_score + ["holdout", str(run), str(ev)], capture_output=True, text=True, check=True
    )
    assert cells.stdout.strip() == (
        "0.700 / 0.900 / 0.800 | 0.750 / 0.950 / 0.850, A 0.600 | 0.800 / – / – | "
        "all +0.500 / +0.000 / +0.490; A +0.500 / +0.000 / +0.490"
    )
