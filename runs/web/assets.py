"""The ES modules a page loads, for `<link rel="modulepreload">`.

A browser finds a module's imports only after fetching it, so a page whose modules import three
levels deep waits for three round trips before any of them runs. Preloading the whole graph
fetches it at once. The graph is read from the import statements themselves (once per process),
so it never drifts from the code.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from django.conf import settings

# Static imports (`import x from "./a.js"`, `import "./a.js"`) and dynamic ones (`import("./a.js")`).
_IMPORT = re.compile(
    r"""^\s*import\s+(?:[^"';]*?\s+from\s+)?["'](\.{1,2}/[^"']+)["']|\bimport\(\s*["'](\.{1,2}/[^"']+)["']\s*\)""",
    re.MULTILINE,
)


def static_root() -> Path:
    # STATICFILES_DIRS' static/: the repository's in a checkout, package data in an installed wheel.
    return Path(settings.STATICFILES_DIRS[0])


@functools.cache
def module_graph(entry: str) -> tuple[str, ...]:
    """`entry` and every module it imports, transitively, as paths under static/ (imports first)."""
    root = static_root().resolve()
    order: list[str] = []

    def visit(path: Path) -> None:
        relative = path.resolve().relative_to(root).as_posix()
        if relative in order or not path.is_file():
            return  # a missing file (static/vendor/ before ./dev setup) is the browser's 404 to report
        for static, dynamic in _IMPORT.findall(path.read_text()):
            visit(path.parent / (static or dynamic))
        order.append(relative)

    visit(root / entry)
    return tuple(order)
