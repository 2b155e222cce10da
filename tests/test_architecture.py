"""The house rules of docs/architecture.md, checked: the layer contract holds (no cycle, no upward
import), no source file is over 600 lines, own-package imports sit at the top of each file, and every
module, folder and dotted name the map names exists."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "liverscope"
MAX_LINES = 600
#: The command line imports its torch-side commands inside them (see its docstring): `liverscope
#: --help` must not wait for torch, Lightning and MONAI to load.
LAZY_OWN_IMPORTS_ALLOWED = {
    "cli.py",
    "cli_predict.py",
    "cli_records.py",
    "cli_reports.py",
    "cli_runs.py",
    "cli_segment.py",
}  # cli_options.py needs no exemption: it loads nothing torch-side; cli_predict, cli_records, cli_reports, cli_runs and cli_segment are commands split out of cli.py


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is a test dependency: pip install -e '.[test]'"
    res = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 6 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_over_600_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by job (docs/architecture.md)"


def _local_own_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "liverscope":
                found.append((node.lineno, f"from {node.module} import ..."))
            elif isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "liverscope" for a in node.names
            ):
                found.append((node.lineno, "import liverscope..."))
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_own_package_imports_at_the_top(path):
    if path.name in LAZY_OWN_IMPORTS_ALLOWED and path.parent == SRC / "ui":
        return
    local = _local_own_imports(ast.parse(path.read_text(encoding="utf-8")))
    assert not local, (
        f"{path.relative_to(ROOT)}: own-package imports inside functions at lines {[n for n, _ in local]}"
    )


def test_the_checks_can_fail():
    # the import finder sees a function-local own import (a check that finds nothing proves nothing)
    tree = ast.parse("def f():\n    from liverscope.rundir import load_model\n    import numpy\n")
    assert _local_own_imports(tree) == [(2, "from liverscope.rundir import ...")]


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _named_in_the_map() -> tuple[set[str], set[str]]:
    """The package files/folders (``ui/cli.py``, ``segment/``) and dotted names (``liverscope.x.y``) that
    docs/architecture.md names in backticks."""
    text = re.sub(r"```.*?```", "", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.S)  # the diagram
    spans = re.findall(r"`([^`]+)`", text)
    paths = {s for s in spans if re.fullmatch(r"[a-z_]+(/[a-z_0-9]+)*(\.py|/)", s)}
    dotted = {s for s in spans if re.fullmatch(r"liverscope(\.[A-Za-z_][A-Za-z_0-9]*)+", s)}
    return paths, dotted


def test_every_file_the_map_names_exists():
    paths, _ = _named_in_the_map()
    assert len(paths) > 40, "the map names the package's files"
    # package modules and sub-packages (a folder of a run directory, e.g. `checkpoints/`, is no module)
    missing = sorted(
        p for p in paths if p.endswith(".py") and not (SRC / p).exists() and not (ROOT / p).exists()
    )
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_dotted_name_the_map_names_resolves():
    _, dotted = _named_in_the_map()
    missing = []
    for name in sorted(dotted):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                missing.append(name)
            break
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_every_module_is_on_the_map():
    paths, _ = _named_in_the_map()
    named = {p for p in paths if p.endswith(".py")}
    unnamed = [
        str(f.relative_to(SRC))
        for f in _sources()
        if f.name != "__init__.py" and str(f.relative_to(SRC)) not in named and "/migrations/" not in str(f)
    ]
    assert not unnamed, f"modules missing from docs/architecture.md: {unnamed}"
