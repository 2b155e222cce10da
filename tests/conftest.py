"""Shared fixtures: tiny synthetic images written to tmp_path, a tiny trained run, the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PYTHONHASHSEED", "0")
# tests never touch the network: timm's hub is "offline", so --pretrained takes the weights packages
os.environ["HF_HUB_OFFLINE"] = "1"
# timings measured by tests (training precision, prediction backend) stay out of the user's cache
os.environ.setdefault("LIVERSCOPE_TIMINGS", "off")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _real_folder(name: str) -> Path:
    """A folder of ../shared/data, or skip the test."""
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"real data not found at {p} (tests marked 'real' need ../shared/data beside the repo)")
    return p


@pytest.fixture(scope="session")
def real_fibrosis() -> Path:
    """../shared/data/liver-fibrosis, or skip."""
    return _real_folder("liver-fibrosis")


@pytest.fixture(scope="session")
def real_masses() -> Path:
    """../shared/data/liver-masses, or skip."""
    return _real_folder("liver-masses")


@pytest.fixture(scope="session")
def real_lesions() -> Path:
    """../shared/data/liver-lesions, or skip."""
    return _real_folder("liver-lesions")


@pytest.fixture(scope="session", autouse=True)
def records_db(tmp_path_factory) -> Path:
    """Exam records written by tests (``liverscope serve`` records by default) go to a temporary file,
    never to the user's data folder."""
    path = tmp_path_factory.mktemp("records") / "records.sqlite"
    os.environ["LIVERSCOPE_DB"] = str(path)
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom set: 5 classes x 24 images of 64 px, with masks."""
    from liverscope.data.datasets import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("phantoms"), n_per_class=24, size=64, seed=1)


def quick_config(data: Path, out_dir: Path, name: str, **overrides):
    from liverscope.config import load_config

    values = {
        "data.path": str(data),
        "out_dir": str(out_dir),
        "name": name,
        "data.image_size": 64,
        "data.cache_dir": str(out_dir / "cache"),
        "train.epochs": 8,
        "train.progress": False,
        "train.device": "cpu",
        "train.batch_size": 8,
    }
    values.update(overrides)
    return load_config("cpu-quick", values)


@pytest.fixture(scope="session")
def trained_run(phantom_dir, tmp_path_factory) -> Path:
    """A run trained on the phantoms (resnet10t, 64 px, a few epochs; batch 8 so BatchNorm statistics settle)."""
    from liverscope.training.run import fit

    out = tmp_path_factory.mktemp("runs")
    return fit(quick_config(phantom_dir, out, "phantom-run"))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU two OpenMP threads wait on each other at every barrier."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
