"""benchmarks/gpu.sh (issue 26, item 5): without a CUDA GPU it stops at once, says so, and writes nothing;
its table cells (out-of-fold balanced accuracy, macro AUC, QWK, per source) read a cv run."""

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
    score = [sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--score", str(run)]
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
