"""The house rules of docs/architecture.md, checked: the layer contract holds (no cycle, no upward
import), no source file is over 600 lines, and own-package imports sit at the top of each file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "liverscope"
MAX_LINES = 600
#: The command line imports its torch-side commands inside them (see its docstring): `liverscope
#: --help` must not wait for torch, Lightning and MONAI to load.
LAZY_OWN_IMPORTS_ALLOWED = {"cli.py", "cli_predict.py", "cli_records.py", "cli_reports.py"}  # cli_options.py needs no exemption: it loads nothing torch-side; cli_predict, cli_records and cli_reports are commands split out of cli.py


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is a test dependency: pip install -e '.[test]'"
    res = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
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
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "liverscope" for a in node.names):
                found.append((node.lineno, "import liverscope..."))
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_own_package_imports_at_the_top(path):
    if path.name in LAZY_OWN_IMPORTS_ALLOWED and path.parent == SRC:
        return
    local = _local_own_imports(ast.parse(path.read_text(encoding="utf-8")))
    assert not local, f"{path.relative_to(ROOT)}: own-package imports inside functions at lines {[n for n, _ in local]}"


def test_the_checks_can_fail():
    # the import finder sees a function-local own import (a check that finds nothing proves nothing)
    tree = ast.parse("def f():\n    from liverscope.rundir import load_model\n    import numpy\n")
    assert _local_own_imports(tree) == [(2, "from liverscope.rundir import ...")]
