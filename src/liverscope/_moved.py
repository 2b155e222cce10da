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
import types
import warnings

#: old module → new module (or the modules its names are in now, looked up in order); removed in the
#: release after 0.2.
MOVED = {
    **{
        f"liverscope.{m}": f"liverscope.ui.{m}"
        for m in (
            "cli",
            "cli_options",
            "cli_predict",
            "cli_records",
            "cli_reports",
            "app",
            "app_records",
            "app_reports",
        )
    },
    **{
        f"liverscope.{m}": f"liverscope.training.{m}"
        for m in ("cv", "lightning_module", "external", "provenance")
    },
    # train.py was split: training itself, its data, the post-run steps and the whole run (fit)
    "liverscope.train": (
        "liverscope.training.train",
        "liverscope.training.datamodule",
        "liverscope.training.postrun",
        "liverscope.training.run",
        "liverscope.training.lightning_module",
    ),
    "liverscope.shortcut": "liverscope.training.shortcut_check",
    **{f"liverscope.{m}": f"liverscope.inference.{m}" for m in ("predict", "export", "results", "quantize")},
    "liverscope.explain_images": "liverscope.explain.images",
    "liverscope.explain_files": "liverscope.explain.files",
    "liverscope.faithfulness": "liverscope.explain.faithfulness",
    "liverscope.rundata": "liverscope.rundir.bundle",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str | tuple[str, ...]):
        self.new = new

    def create_module(self, spec):
        where = self.new if isinstance(self.new, str) else " / ".join(self.new)
        warnings.warn(
            f"{spec.name} has moved to {where}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        if not isinstance(self.new, str):
            self.own_spec = spec
            return _split_module(spec.name, self.new)
        module = importlib.import_module(self.new)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the new module is already executed; the import system just set its __spec__ to the old
        # path's, which would make it report the wrong name: give it back its own
        module.__spec__ = self.own_spec


def _split_module(name: str, homes: tuple[str, ...]) -> types.ModuleType:
    """A module for an old path whose names now live in several modules: each name is looked up in
    ``homes`` in order."""
    module = types.ModuleType(name, f"Deprecated: see {', '.join(homes)}.")

    def __getattr__(attr: str):
        for home in homes:
            mod = importlib.import_module(home)
            if hasattr(mod, attr):
                return getattr(mod, attr)
        raise AttributeError(
            f"module {name!r} has no attribute {attr!r} (it was split into {', '.join(homes)})"
        )

    module.__getattr__ = __getattr__
    return module


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _Alias(new)) if new else None


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import liverscope`` does)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
