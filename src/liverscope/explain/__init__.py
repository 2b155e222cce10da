"""Explanations: the CAM engine (:mod:`.cams`), heatmap images (:mod:`.images`), faithfulness scores
(:mod:`.faithfulness`), the ``explain`` command's files (:mod:`.files`) and the report's gallery
(:mod:`.gallery`); docs/architecture.md.

``liverscope.explain`` was one module before 0.2: its names still resolve here for one release, with a
:class:`DeprecationWarning` that names the module they live in now.
"""

import importlib
import warnings


def __getattr__(name: str):
    for module in ("cams", "gallery", "images", "faithfulness", "files"):
        mod = importlib.import_module(f"{__name__}.{module}")
        if hasattr(mod, name) and not name.startswith("_"):
            warnings.warn(
                f"liverscope.explain.{name} has moved to liverscope.explain.{module}.{name}; "
                "the old path goes in the next release",
                DeprecationWarning,
                stacklevel=2,
            )
            value = globals()[name] = getattr(mod, name)  # warn once per name
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
