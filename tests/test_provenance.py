"""Provenance: what produced a model (versions, seed, git commit, command, data fingerprint), recorded
in model.json by training and cross-validation and shown in the report."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from liverscope import __version__, rundir
from liverscope.config import RunConfig
from liverscope.data.datasets import Sample
from liverscope.data.preprocess import Preprocessing
from liverscope.evaluate.html import provenance_html
from liverscope.training.cv import aggregate_cv
from liverscope.training.provenance import collect_provenance, git_state, package_versions
from liverscope.utils import read_json

SRC = Path(__file__).resolve().parents[1] / "src" / "liverscope"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_provenance(prov: dict, split_csv: Path, seed: int) -> None:
    """Every field of a model.json provenance, checked against its source."""
    assert set(prov) == {"versions", "seed", "git", "command", "split_sha256", "created"}
    v = prov["versions"]
    assert v["liverscope"] == __version__
    for dist in ("torch", "timm", "monai", "numpy", "lightning", "torchmetrics"):
        assert v[dist] == version(dist), dist
    assert prov["seed"] == seed
    assert prov["split_sha256"] == _sha256(split_csv)
    assert prov["command"] == sys.argv
    assert dt.datetime.fromisoformat(prov["created"]).tzinfo is not None
    git = prov["git"]
    if git is not None:  # a source checkout (this one, when the tests run from the repository)
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)


def test_collect_provenance_fields(tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("path,label,split\na.png,F0,train\n")
    check_provenance(collect_provenance(7, split), split, 7)
    # no split file (yet): no fingerprint, never a failure
    assert collect_provenance(None, tmp_path / "none.csv")["split_sha256"] is None


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_git_state_of_a_checkout_and_of_an_installed_copy_inside_one(tmp_path):
    repo = tmp_path / "project"
    (repo / "src" / "liverscope").mkdir(parents=True)
    (repo / "src" / "liverscope" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text(".venv/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "src" / "liverscope") == {"commit": head, "dirty": False}
    (repo / "src" / "liverscope" / "__init__.py").write_text("x = 1\n")
    assert git_state(repo / "src" / "liverscope") == {"commit": head, "dirty": True}
    # liverscope installed from a wheel into a virtual environment inside the project: its files are
    # ignored, not tracked, so the project's commit is not taken for liverscope's
    wheel = repo / ".venv" / "lib" / "site-packages" / "liverscope"
    wheel.mkdir(parents=True)
    (wheel / "__init__.py").write_text("")
    assert git_state(wheel) is None
    assert git_state(tmp_path) is None  # no repository at all


def test_git_state_of_this_checkout():
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=SRC, capture_output=True
    )
    if tracked.returncode:
        pytest.skip("the tests do not run from a git checkout of liverscope")
    state = git_state()
    assert state["commit"] == _git(SRC, "rev-parse", "HEAD")
    assert isinstance(state["dirty"], bool)  # its value is checked on the scratch repository above


def test_package_versions_name_a_missing_package_none(monkeypatch):
    import liverscope.training.provenance as P

    monkeypatch.setitem(P.PACKAGES, "no-such-distribution-xyz", "missing")
    assert P.package_versions()["missing"] is None
    assert package_versions()["python"].count(".") == 2


def test_provenance_table_in_html():
    prov = {
        "versions": {"liverscope": "9.9.9", "torch": "2.14.1", "monai": None},
        "seed": 3,
        "git": {"commit": "ab" * 20, "dirty": True},
        "command": ["liverscope", "train", "--name", "a b"],
        "split_sha256": "f" * 64,
        "created": "2026-01-01T00:00:00+00:00",
    }
    html = provenance_html(prov)
    for text in (
        "9.9.9",
        "2.14.1",
        "not installed",
        "ab" * 20,
        "uncommitted changes",
        "liverscope train --name &#x27;a b&#x27;",
        "f" * 64,
    ):
        assert text in html, text
    assert "not run from a git checkout" in provenance_html(dict(prov, git=None))
    assert provenance_html(None) is None and provenance_html({}) is None


def test_cv_ensemble_model_json_records_its_provenance(tmp_path):
    """aggregate_cv writes the ensemble's model.json with the provenance of the cv run (its split.csv)."""
    names = ["F0", "F1", "F2"]
    run = tmp_path / "cv"
    cfg = RunConfig(name="cv", out_dir=str(tmp_path))
    cfg.train.seed = 11
    run.mkdir()
    rundir.write_config(run, cfg)
    rng = np.random.default_rng(0)
    samples = [Sample(tmp_path / f"img{i}.png", names[i % 3]) for i in range(24)]
    rundir.write_split(run / rundir.SPLIT, samples, ["dev"] * 24, folds=[i % 2 for i in range(24)])
    for f in range(2):
        fd = rundir.fold_dir(run, f)
        fd.mkdir(parents=True)
        part = [s for i, s in enumerate(samples) if i % 2 == f]
        y = np.array([names.index(s.label) for s in part])
        logits = rng.normal(size=(len(part), 3)) + 2 * np.eye(3)[y]
        rundir.write_predictions(fd / rundir.PREDICTIONS_VAL, part, logits, names)
        rundir.write_model_meta(
            fd, {"architecture": {"name": "resnet10t", "num_classes": 3}, "labels": names, "temperature": 1.0}
        )
    aggregate_cv(run, names, 2, Preprocessing())
    meta = read_json(run / rundir.MODEL_META)
    assert meta["ensemble"] == ["folds/fold0", "folds/fold1"]
    check_provenance(meta["provenance"], run / rundir.SPLIT, 11)
