"""The size gate: no product module over 400 lines, no function or method over 60.

Usage: ``python scripts/check_sizes.py [ROOT]`` (default: the repository root)

Product code is every ``.py`` file under ROOT except tests, benchmarks, migrations and
third-party trees. Sizes are physical lines: a module's line count, and a function's from its
``def`` line to its last line (``lineno`` to ``end_lineno``; decorators not counted). Exits 1
with one line per offender, ``path:line name N lines (limit L)``. A module that does not parse
is an offender too, so the gate cannot pass by accident.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LIMIT = 400
FUNCTION_LIMIT = 60
# Not product code: tests and benchmarks may be long, migrations are generated, the rest is not ours
# (dependencies, build output, the data directory). Hidden directories (.venv, .git, caches) too.
EXCLUDED_DIRS = frozenset({"tests", "bench", "migrations", "node_modules", "venv", "var", "build", "dist"})


def product_files(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        # Pruned in place, so a virtual environment or node_modules is never walked.
        subdirs[:] = sorted(name for name in subdirs if name not in EXCLUDED_DIRS and name[0] != ".")
        yield from (Path(directory) / name for name in sorted(files) if name.endswith(".py"))


def offenders(path: Path, root: Path) -> Iterator[str]:
    name = path.relative_to(root).as_posix()
    source = path.read_text(encoding="utf-8")
    lines = len(source.splitlines())
    if lines > MODULE_LIMIT:
        yield f"{name}:1 module {lines} lines (limit {MODULE_LIMIT})"
    try:
        tree = ast.parse(source, filename=name)
    except SyntaxError as error:
        yield f"{name}:{error.lineno or 1} does not parse: {error.msg}"
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > FUNCTION_LIMIT:
                yield f"{name}:{node.lineno} {node.name} {size} lines (limit {FUNCTION_LIMIT})"


def check(root: Path) -> list[str]:
    return [line for path in product_files(root) for line in offenders(path, root)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]).resolve() if args else ROOT
    found = check(root)
    for line in found:
        sys.stderr.write(line + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
