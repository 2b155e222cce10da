"""liverscope: liver ultrasound fibrosis staging and disease classification, with explanations,
weakly supervised segmentation and leakage-safe evaluation.

The names a Python user needs are here, loaded on first use so that ``import liverscope`` (and
``liverscope --help``) does not load torch::

    import liverscope
    p = liverscope.load_run("runs/demo")
    p.predict("scan.png").label

The package root is no layer of the import contract (``pyproject.toml``), yet modules of every layer
import it (``from liverscope import __version__``): a static import of a child here would make a path
``rundir -> liverscope -> predict`` that breaks the contract. So :func:`__getattr__` imports children
by name (:func:`importlib.import_module`), which ``lint-imports`` does not follow.
"""

from importlib import import_module as _import_module
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from liverscope import _moved

_moved.install()  # old import paths (liverscope.predict, ...) keep working for one release

try:
    __version__ = _version("liverscope")
except _PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

#: public name → the module that defines it
_LAZY = {
    "load_run": "liverscope.inference.predict",
    "Predictor": "liverscope.inference.predict",
    "EnsemblePredictor": "liverscope.inference.predict",
    "Result": "liverscope.inference.results",
    "load_config": "liverscope.config",
    "RunConfig": "liverscope.config",
    "build_model": "liverscope.models",
    "list_models": "liverscope.models",
    "LiverNet": "liverscope.models",
    "LiverscopeError": "liverscope.errors",
    "ImageReadError": "liverscope.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'liverscope' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {k for k in globals() if not k.startswith("_")} | {"__version__"})
