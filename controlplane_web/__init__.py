"""Where the pages' templates and static files are: in a source checkout, and in an installed wheel.

They live in the repository's top-level templates/ and static/ (the project's layout). A wheel can
carry files only inside a package, so building one copies both into this package (setup.py), and
settings ask here instead of assuming a source tree:

- installed from a wheel: controlplane_web/templates/ and controlplane_web/static/, beside this file;
- a source checkout or an editable install (`pip install -e .`): the repository's own directories.

Plain paths next to ``__file__`` rather than ``importlib.resources``: Django wants real directories
(template loaders, staticfiles finders, whitenoise), and a package installed from a wheel is one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATIC_DIR", "TEMPLATES_DIR"]

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _locate(name: str) -> Path:
    packaged = _PACKAGE / name
    return packaged if packaged.is_dir() else _CHECKOUT / name


TEMPLATES_DIR = _locate("templates")
STATIC_DIR = _locate("static")
