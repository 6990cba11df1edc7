"""Build hook: the wheel carries the pages' templates and static files (pyproject.toml has the rest).

The pages' templates/ and static/ stay at the repository root (the project's layout), but a wheel
can only carry files inside a package. So building copies them into the `controlplane_web`
package (controlplane_web/templates/, controlplane_web/static/), where `controlplane_web` finds
them once installed (see its docstring). Why a copy at build time rather than a `package-dir`
mapping of two data-only packages onto those directories: pyproject's `packages.find` (which
keeps every app and sub-package in the wheel without a hand-kept list) cannot be combined with
mapped packages, and a build step is needed anyway to refuse a wheel whose pages would miss the
npm-built files in static/vendor/ (git-ignored; `./dev setup` puts them there).

Editable installs (`pip install -e .`, what ./dev does) copy and check nothing: there,
`controlplane_web` points at the repository's own directories, and static/vendor/ may come later.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]
from setuptools.errors import FileError  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent
WEB_PACKAGE = "controlplane_web"
WEB_DIRS = ("templates", "static")
# What pages and scripts load from static/vendor/: `{% static 'vendor/…' %}`, `import … "../vendor/…"`.
VENDOR_REFERENCE = re.compile(r"\bvendor/[\w./-]+\.\w+")


def missing_vendor_files(root: Path) -> list[str]:
    """Files under static/vendor/ that templates or static files name but that are not there."""
    sources = [*root.glob("templates/**/*.html"), *root.glob("static/**/*.js"), *root.glob("static/**/*.css")]
    sources += root.glob("*/templates/**/*.html")
    named = {
        reference
        for source in sources
        if "vendor" not in source.relative_to(root).parts
        for reference in VENDOR_REFERENCE.findall(source.read_text(encoding="utf-8"))
    }
    return sorted(name for name in named if not (root / "static" / name).is_file())


class BuildPy(build_py):  # type: ignore[misc]
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        missing = missing_vendor_files(ROOT)
        if missing:
            raise FileError(
                "the pages need front-end files that are not in static/vendor/: "
                + ", ".join(missing)
                + ". Run `./dev setup` (npm ci, then copies them there) before building the wheel."
            )
        for name in WEB_DIRS:
            target = Path(self.build_lib) / WEB_PACKAGE / name
            # A fresh copy: a file deleted from the repository must not survive from an earlier build.
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(
                ROOT / name, target, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.py[co]")
            )


# The build backend runs this file as __main__; tests import it for missing_vendor_files().
if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPy})
