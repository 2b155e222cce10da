"""One owner for every run file (issue 25, item 4): the name of every file of a run directory is a constant
of :mod:`liverscope.rundir`, and every other module reads it from there. Only a lower layer that rundir
itself imports may own a name (the data audit's files: rundir re-exports them), and only its own.

Two checks over the string literals of ``src/liverscope`` (docstrings and Typer ``help=`` texts left out:
the command line must answer ``--help`` without importing rundir, so its help texts may name a file):

* no literal outside rundir mentions a run file that rundir names (``"curves.png"``, ``f"no model.json"``);
* no literal outside rundir is a file name that rundir does not know, unless it is listed in
  :data:`NOT_RUN_FILES` (files outside a run directory) with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from liverscope import rundir
from liverscope.data import audit_report

SRC = Path(__file__).resolve().parents[1] / "src" / "liverscope"
#: The one package that names run files.
OWNER = "rundir"
#: Lower layers (below rundir: rundir imports them) that own a run file's name; rundir re-exports it.
LOWER_OWNERS = {"data/audit_report.py": {audit_report.AUDIT_JSON, audit_report.AUDIT_HTML}}
#: A file name in code: ``name.ext`` or ``folder/name.ext``.
FILE_NAME = re.compile(
    r"(?:[\w.-]+/)*\w[\w.-]*\.(?:png|jpe?g|json|csv|html|ya?ml|safetensors|onnx|ckpt|npy|txt|pdf|db)"
)
#: File names that are not files of a run directory (or a --help line that may not import rundir): (module, name) -> why.
NOT_RUN_FILES = {
    (
        "ui/cli_options.py",
        "history.csv",
    ): "a --help line of RECIPE_OPTIONS (cli_options loads nothing torch-side, rundir does)",
    (
        "training/lightning_module.py",
        "mlflow.db",
    ): "MLflow's local tracking database in ./mlruns (the working directory)",
    ("data/datasets.py", "liverscope-phantoms.json"): "the marker of a synthetic phantom data folder",
    ("speed/cache.py", "timings.json"): "the per-machine timings cache in the user's cache folder",
    ("ui/cli_predict.py", "predictions.csv"): "predict's default --out, in the working directory",
    ("inference/quantize.py", "model.prep.onnx"): "a scratch file of the int8 export (temporary folder)",
    ("inference/quantize.py", "trial.onnx"): "a scratch file of the int8 export (temporary folder)",
    ("inference/quantize.py", "final.onnx"): "a scratch file of the int8 export (temporary folder)",
    ("segment/nnunet.py", "dataset.json"): "nnU-Net's own raw-dataset format",
    ("segment/nnunet.py", "splits_final.json"): "nnU-Net's own split file",
    ("segment/nnunet.py", "summary.json"): "nnU-Net's own validation summary",
}
#: Literals still to move onto rundir's names, (module, name); each entry names who moves it. An entry no
#: longer needed fails the test, so the list only shrinks.
TO_MOVE: set[tuple[str, str]] = set()  # every run-file name now lives in rundir


def run_file_names() -> set[str]:
    """The file names rundir holds (module-level string constants with a suffix)."""
    return {
        v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str) and FILE_NAME.fullmatch(v)
    }


def _skipped(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings or inside a ``help=`` keyword."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                out.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            out.update(id(n) for n in ast.walk(node.value))
    return out


def literals(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, text, whole)`` of every string literal of a file but docstrings and help texts; ``whole``:
    the literal is a plain string (not a piece of an f-string)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _skipped(tree)
    pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    return [
        (n.lineno, n.value, id(n) not in pieces)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]


def findings(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """``{(module, name): ["module:line: why"]}`` for every literal that breaks the contract."""
    names = run_file_names()
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel.split("/")[0] == OWNER:
            continue
        own = LOWER_OWNERS.get(rel, set())
        for line, text, whole in literals(path):
            hits = {tok.rsplit("/", 1)[-1] for tok in re.findall(r"[\w.\-/]+", text)} & names
            for name in sorted(hits - own):
                if (rel, name) in NOT_RUN_FILES:
                    continue
                found.setdefault((rel, name), []).append(
                    f"{rel}:{line}: {name!r}: use liverscope.rundir's constant"
                )
            value = text.strip()
            if (
                whole
                and FILE_NAME.fullmatch(value)
                and value not in names
                and value not in own
                and (rel, value) not in NOT_RUN_FILES
            ):
                found.setdefault((rel, value), []).append(
                    f"{rel}:{line}: {value!r}: a run file gets a constant in rundir; "
                    "any other file a line in NOT_RUN_FILES"
                )
    return found


def test_lower_owners_are_reexported_by_rundir():
    for names in LOWER_OWNERS.values():
        assert names <= run_file_names(), f"rundir must re-export {sorted(names - run_file_names())}"


def test_no_run_file_name_outside_rundir():
    found = findings()
    left = [msg for key, msgs in sorted(found.items()) if key not in TO_MOVE for msg in msgs]
    assert not left, "run-file names outside liverscope.rundir:\n" + "\n".join(left)


def test_to_move_only_shrinks():
    stale = sorted(TO_MOVE - set(findings()))
    assert not stale, f"these literals are gone: remove them from TO_MOVE: {stale}"


def test_run_file_names_are_distinct():
    values = [
        v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str) and FILE_NAME.fullmatch(v)
    ]
    assert len(values) == len(set(values)), sorted(v for v in set(values) if values.count(v) > 1)


@pytest.mark.parametrize(
    "literal, flagged",
    [
        ('x = run_dir / "curves.png"', True),
        ('raise E(f"{d}: no model.json here")', True),
        ('x = out / "brand_new.csv"', True),
        ('typer.Option(None, help="Folder for audit.json and audit.html.")', False),
        ("x = rundir.CURVES_PNG", False),
    ],
)
def test_the_check_can_fail(tmp_path, literal, flagged):
    (tmp_path / "mod.py").write_text(literal + "\n")
    assert bool(findings(tmp_path)) is flagged
