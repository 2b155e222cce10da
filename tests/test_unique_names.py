"""Names that say one thing (issue 25, item 5): no two public module-level classes or functions of the
package share a name, so that a name found in a traceback or a search is one thing. Methods are left out
(``predict`` on two classes is one idea); a module that re-exports another's name does not define it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "liverscope"
#: Names that may be defined in more than one module, each with why.
ALLOWED = {
    "main": "the entry point of a program: ui/cli.py (the `liverscope` script) and ui/app.py (streamlit run)",
}


def public_definitions(src: Path = SRC) -> dict[str, list[str]]:
    """``{name: ["module.py:line", ...]}`` of the module-level public classes and functions under ``src``."""
    found: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ) and not node.name.startswith("_"):
                found.setdefault(node.name, []).append(f"{path.relative_to(src).as_posix()}:{node.lineno}")
    return found


def duplicates(src: Path = SRC, allowed=ALLOWED) -> dict[str, list[str]]:
    return {
        name: where
        for name, where in public_definitions(src).items()
        if len(where) > 1 and name not in allowed
    }


def test_no_two_public_definitions_share_a_name():
    dup = duplicates()
    assert not dup, "one name, two things (rename one of each):\n" + "\n".join(
        f"{n}: {', '.join(w)}" for n, w in sorted(dup.items())
    )


def test_the_allow_list_only_shrinks():
    defined = public_definitions()
    stale = sorted(name for name in ALLOWED if len(defined.get(name, [])) < 2)
    assert not stale, f"defined once now: remove them from ALLOWED: {stale}"


@pytest.mark.parametrize(
    "b, flagged",
    [
        ("def load(): pass", True),
        ("class Load: pass", False),
        ("def _load(): pass", False),
        ("class C:\n    def load(self): pass", False),
    ],
)
def test_the_check_can_fail(tmp_path, b, flagged):
    (tmp_path / "a.py").write_text("def load(): pass\n")
    (tmp_path / "b.py").write_text(b + "\n")
    assert bool(duplicates(tmp_path, allowed={})) is flagged


def test_a_module_logger_is_called_logger():
    """``logger = logging.getLogger(...)`` everywhere (``liverscope.utils.log`` is a function that logs)."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "getLogger"
                and [getattr(t, "id", None) for t in node.targets] != ["logger"]
            ):
                wrong.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno}")
    assert not wrong, f"call a module's Logger `logger`: {wrong}"
