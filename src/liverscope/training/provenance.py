"""Provenance of a trained model: what produced it, recorded in ``model.json["provenance"]``.

:func:`collect_provenance` gathers the versions of liverscope and the libraries whose behaviour decides
the numbers (torch, timm, MONAI, NumPy, Lightning, torchmetrics), the seed, the git commit of the source
checkout (with a ``dirty`` flag) when liverscope runs from a repository, the command line, the SHA-256 of
the run's ``split.csv`` (which images trained, validated and tested the model) and the time. Nothing
here may fail a training run: a missing package or git is recorded as ``None``.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from liverscope import __version__
from liverscope.utils import file_sha256

#: Distributions whose version is recorded (PyPI name → key in ``versions``).
PACKAGES = {
    "torch": "torch",
    "timm": "timm",
    "monai": "monai",
    "numpy": "numpy",
    "lightning": "lightning",
    "torchmetrics": "torchmetrics",
}

#: The folder of the liverscope package; in a source checkout it is tracked by git.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the liverscope package (this file is in training/)


def package_versions() -> dict[str, str | None]:
    """Versions of liverscope, Python and :data:`PACKAGES` (``None`` for one that is not installed)."""
    out: dict[str, str | None] = {"liverscope": __version__, "python": platform.python_version()}
    for dist, key in PACKAGES.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_state(package_dir: str | Path = _PACKAGE_DIR) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout that holds the running liverscope source, or ``None``.

    ``None`` when liverscope was installed from a wheel: its files are then not tracked by any
    repository (a virtual environment inside a project's checkout is ignored, not tracked, so the
    project's commit is not mistaken for liverscope's). ``dirty``: tracked files differ from the commit.
    """
    package_dir = Path(package_dir)
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is None:
        return None
    commit = _git(["rev-parse", "HEAD"], package_dir)
    if not commit:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def collect_provenance(seed: int | None, split_csv: str | Path | None) -> dict[str, Any]:
    """What produced a model, for ``model.json["provenance"]``.

    Args:
        seed: the run's seed (``train.seed``).
        split_csv: the run's ``split.csv``; its SHA-256 fingerprints the data the model saw (``None``
            when the file does not exist).

    Returns:
        ``{"versions", "seed", "git", "command", "split_sha256", "created"}``; ``git`` is ``None`` outside
        a source checkout, ``command`` is ``sys.argv``, ``created`` an ISO-8601 UTC time.
    """
    split = Path(split_csv) if split_csv is not None else None
    return {
        "versions": package_versions(),
        "seed": None if seed is None else int(seed),
        "git": git_state(),
        "command": list(sys.argv),
        "split_sha256": file_sha256(split) if split is not None and split.is_file() else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["PACKAGES", "package_versions", "git_state", "collect_provenance"]
