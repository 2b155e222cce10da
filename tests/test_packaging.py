"""liverscope as a package: a wheel built from this checkout works from a fresh virtual environment in a
folder far from the checkout (recipes are package data, the entry point and ``python -m`` work), and its
metadata declares ranges, an SPDX licence and the extras."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    )
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: the build backend (setuptools) of this environment, no download
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        cwd=out,
    )
    (whl,) = out.glob("liverscope-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_carries_recipes_licence_and_ranges(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    assert {"liverscope/recipes/cpu-quick.yaml", "liverscope/recipes/resnet50-cbam.yaml"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch_req = next(
        r for r in requires if r.split()[1].startswith("torch") and "vision" not in r and "metrics" not in r
    )
    assert "==" not in torch_req and "<3" in torch_req, torch_req  # a range, not this machine's pin
    core = [r for r in requires if "extra ==" not in r]
    assert not any(name in r for r in core for name in ("streamlit", "onnxruntime", "pytest")), (
        core
    )  # web/ONNX/test stacks are extras
    assert {
        "liverscope/records/migrations/env.py",
        "liverscope/records/migrations/versions/0001_initial.py",
    } <= set(names)  # Alembic's, run on open
    for extra in ("app", "onnx", "imagenet", "records", "test", "all"):
        assert f"Provides-Extra: {extra}" in meta


@pytest.mark.slow
def test_wheel_works_in_a_fresh_venv_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        cwd=tmp_path,
    )
    # the dependencies (torch & co., several GB) come from this environment: a path entry, not a copy,
    # so the wheel's liverscope (in the new venv) is the one imported, never this checkout's
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path
        ).stdout.strip()
    )
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()

    version = _run([str(venv / "bin" / "liverscope"), "--version"], cwd=work).stdout
    assert version.strip() == "liverscope 0.1.0"
    models = _run([str(py), "-m", "liverscope", "models"], cwd=work).stdout
    assert "resnet10t" in models and "tf_efficientnet_lite0" in models
    probe = (
        "import liverscope, liverscope.config as c; "
        "assert str(liverscope.__file__).startswith(%r), liverscope.__file__; "
        "cfg = c.load_config('cpu-quick'); print(cfg.model.name, cfg.data.image_size, len(c.recipe_names()))"
    ) % str(site)
    out = _run([str(py), "-c", probe], cwd=work).stdout.split()
    assert out[0] and int(out[1]) > 0 and int(out[2]) >= 5
    mine = work / "mine.yaml"
    mine.write_text("train:\n  epochs: 3\n")
    assert (
        _run(
            [str(py), "-c", "import liverscope.config as c; print(c.load_config('mine.yaml').train.epochs)"],
            cwd=work,
        ).stdout.strip()
        == "3"
    )
    # the exam records migrate a new database from the migrations inside the wheel
    listed = _run(
        [str(venv / "bin" / "liverscope"), "records", "list", "--db", str(work / "r.sqlite")], cwd=work
    ).stdout
    assert "no exams in sqlite:///" in listed, listed


def test_a_missing_extra_names_the_pip_line(monkeypatch, tmp_path):
    from liverscope.errors import LiverscopeError
    from liverscope.inference.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [onnx] extra were not installed
    with pytest.raises(LiverscopeError, match=r"pip install 'liverscope\[onnx\]'"):
        export_onnx(tmp_path)


def test_version_and_python_dash_m(tmp_path):
    from liverscope import __version__

    res = _run([sys.executable, "-m", "liverscope", "--version"], cwd=tmp_path)
    assert res.stdout.strip() == f"liverscope {__version__}" and __version__ == "0.1.0"


def test_the_pinned_versions_satisfy_the_declared_ranges():
    # `make install` is `pip install -c constraints.txt -e .[all]`: a range that excludes a pin makes
    # the install impossible on a fresh machine
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [
        Requirement(r)
        for extra in project["optional-dependencies"].values()
        for r in extra
        if not r.startswith("liverscope")
    ]
    checked = 0
    for req in reqs:
        pin = pins.get(canonicalize_name(req.name))
        if pin is not None and not req.extras:
            assert req.specifier.contains(pin, prereleases=True), (
                f"{req} excludes the pinned {req.name}=={pin}"
            )
            checked += 1
    assert checked >= 20
