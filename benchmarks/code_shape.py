"""The shape of the source tree: files and their lines, the longest functions and those with the most
parameters (issue 25's figures). `python benchmarks/code_shape.py [src/liverscope] [--files]`; compare two
commits on the same formatting (`git archive COMMIT src | tar -x -C DIR`, `ruff format DIR`)."""

import ast
import sys
from pathlib import Path


def functions(root: Path) -> list[tuple[int, int, str]]:
    """(lines, parameters, "file:line name") of every function and method under ``root``."""
    rows = []
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                rows.append(
                    (node.end_lineno - node.lineno + 1, n, f"{p.relative_to(root)}:{node.lineno} {node.name}")
                )
    return rows


def main(argv: list[str]) -> None:
    root = Path(next((a for a in argv if not a.startswith("--")), "src/liverscope"))
    files = sorted(
        ((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in root.rglob("*.py")),
        reverse=True,
    )
    rows = functions(root)
    print(f"files: {len(files)}  lines: {sum(n for n, _ in files)}  largest: {files[0][0]} ({files[0][1]})")
    print(
        f"functions over 80 lines: {sum(r[0] > 80 for r in rows)}; over 10 parameters: {sum(r[1] > 10 for r in rows)}"
    )
    print("longest functions:")
    for r in sorted(rows, reverse=True)[:15]:
        print(f"  {r[0]:4d} lines {r[1]:3d} params  {r[2]}")
    print("most parameters:")
    for r in sorted(rows, key=lambda r: -r[1])[:10]:
        print(f"  {r[1]:3d} params {r[0]:4d} lines  {r[2]}")
    if "--files" in argv:
        for n, f in files:
            print(f"  {n:4d} {f}")


if __name__ == "__main__":
    main(sys.argv[1:])
