"""Step 1: the wheel, built from a copy of the working tree, and what it must hold."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

from scripts.wheel_smoke.common import ROOT, SmokeError, run

# The packages the wheel must carry (pyproject.toml's packages.find); any not in the tree is skipped.
PACKAGES = ["controlplane", "controlplane_web", "runs", "workers", "accounts", "audit", "vault", "ops"]
PACKAGES += ["redaction"]
# Left out of the copy that is built, as the image's build context leaves them out (.dockerignore).
NOT_BUILT = [".git", ".venv", "var", "node_modules", "staticfiles", "test-output", "__pycache__"]
NOT_BUILT += ["*.egg-info", "build", "dist", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".coverage*"]
NOT_BUILT += [".env", ".env.*"]
PIP_WHEEL = ["-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]


def present_packages() -> list[str]:
    return [name for name in PACKAGES if (ROOT / name / "__init__.py").is_file()]


def build(work: Path) -> tuple[Path, Path]:
    """Copies the tree to work/src and builds the wheel into work/dist: (the wheel, the copy)."""
    source, dist = work / "src", work / "dist"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_BUILT))
    run([sys.executable, *PIP_WHEEL, "--quiet", "--wheel-dir", str(dist), str(source)])
    (wheel,) = dist.glob("controlplane-*.whl")
    return wheel, source


def expected_files(source: Path) -> set[str]:
    """Every module and app template of every package; templates/ and static/ under controlplane_web/."""
    expected: set[str] = set()
    for package in present_packages():
        for path in (source / package).rglob("*"):
            if path.suffix in {".py", ".html"} and path.is_file():
                expected.add(path.relative_to(source).as_posix())
    for folder in ("templates", "static"):
        for path in (source / folder).rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                expected.add(f"controlplane_web/{path.relative_to(source).as_posix()}")
    return expected


def check_contents(wheel: Path, source: Path) -> int:
    """Fails unless the wheel holds all it must; the number of files it holds."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    missing = sorted(expected_files(source) - names)
    if missing:
        raise SmokeError(f"the wheel lacks {len(missing)} files: {', '.join(missing[:20])}")
    for needed in (
        "controlplane_web/static/vendor/uplot/uPlot.esm.js",
        "workers/programs/tinygpt/__main__.py",
        "workers/sdk.py",
        "controlplane/settings.py",
    ):
        if needed not in names:
            raise SmokeError(f"the wheel lacks {needed}")
    if "controlplane-manage = controlplane.manage:main" not in entry_points:
        raise SmokeError(f"the wheel has no controlplane-manage entry point:\n{entry_points}")
    return len(names)


def check_refused_without_vendor_files(source: Path, dist: Path) -> None:
    """A tree without static/vendor/ (no `./dev setup`) must not build, and must say why."""
    shutil.rmtree(source / "static" / "vendor")
    output = run([sys.executable, *PIP_WHEEL, "--wheel-dir", str(dist), str(source)], expect_failure=True)
    if "not in static/vendor/" not in output or "./dev setup" not in output:
        raise SmokeError(f"the build without static/vendor/ failed, but not saying why:\n{output[-3000:]}")
