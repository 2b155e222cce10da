"""Old import paths of modules that moved into sub-packages (``liverscope.predict`` →
``liverscope.inference.predict``, ...): they keep working for one release, with a
:class:`DeprecationWarning` that names the new path.

A meta-path finder rather than a stub file per old module: the package's top level then shows only
what is there (docs/architecture.md). Importing an old path returns the very module object of the new
one, so ``monkeypatch``, ``isinstance`` and pickles made before the move (Lightning checkpoints) agree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module → new module; removed in the release after 0.2.
MOVED = {
    **{f"liverscope.{m}": f"liverscope.ui.{m}" for m in
       ("cli", "cli_options", "cli_predict", "cli_records", "cli_reports", "app", "app_records", "app_reports")},
    **{f"liverscope.{m}": f"liverscope.training.{m}" for m in ("train", "cv", "lightning_module", "external", "provenance")},
    "liverscope.shortcut": "liverscope.training.shortcut_check",
    **{f"liverscope.{m}": f"liverscope.inference.{m}" for m in ("predict", "export", "results", "quantize")},
    "liverscope.explain_images": "liverscope.explain.images",
    "liverscope.explain_files": "liverscope.explain.files",
    "liverscope.faithfulness": "liverscope.explain.faithfulness",
    "liverscope.rundata": "liverscope.rundir.bundle",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} has moved to {self.new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the new module is already executed; the import system just set its __spec__ to the old
        # path's, which would make it report the wrong name: give it back its own
        module.__spec__ = self.own_spec


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(new)) if new else None


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import liverscope`` does)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
