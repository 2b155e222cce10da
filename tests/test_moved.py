"""Old import paths of modules that moved into sub-packages keep working for one release, with a
DeprecationWarning that names the new path (liverscope._moved)."""

import importlib
import subprocess
import sys

import pytest

from liverscope._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module_and_warns(old):
    sys.modules.pop(old, None)  # only the alias: the new module stays loaded
    homes = (MOVED[old],) if isinstance(MOVED[old], str) else MOVED[old]
    with pytest.warns(DeprecationWarning, match=homes[0].replace(".", r"\.")):
        mod = importlib.import_module(old)
    new = importlib.import_module(homes[0])
    if len(homes) == 1:
        assert mod is new
        assert new.__name__ == MOVED[old] and new.__spec__.name == MOVED[old]  # the alias did not rename it


def test_a_split_module_finds_each_name_where_it_lives_now():
    sys.modules.pop("liverscope.train", None)
    with pytest.warns(DeprecationWarning):
        import liverscope.train as old
    from liverscope.training.datamodule import prepare_data
    from liverscope.training.run import fit
    from liverscope.training.train import train_prepared

    assert old.fit is fit and old.prepare_data is prepare_data and old.train_prepared is train_prepared
    with pytest.raises(AttributeError, match="split into"):
        old.no_such_name  # noqa: B018


def test_old_explain_names_resolve_with_a_warning():
    import liverscope.explain as pkg

    pkg.__dict__.pop("compute_cams", None)
    with pytest.warns(DeprecationWarning, match=r"liverscope\.explain\.cams\.compute_cams"):
        from liverscope.explain import compute_cams
    from liverscope.explain.cams import compute_cams as new

    assert compute_cams is new
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018


def test_the_package_itself_uses_no_old_path():
    # a fresh interpreter imports every module by its new path with the moved-warning as an error
    code = (
        "import warnings; warnings.filterwarnings('error', message='.*has moved'); import importlib, pkgutil, liverscope; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(liverscope.__path__, 'liverscope.') "
        "if not m.name.endswith(('__main__', '.app', '.app_records', '.app_reports')) and '.migrations' not in m.name]"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
