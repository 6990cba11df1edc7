"""The layer map in pyproject.toml holds, covers every product package, and can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
NOT_PRODUCT = {"tests", "bench", "scripts", "node_modules", "static", "templates", "docs", "deploy"}


def _config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return config


def _product_packages() -> set[str]:
    return {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in NOT_PRODUCT and not path.parent.name.startswith(".")
    }


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_product_package_has_a_place_in_the_layer_map():
    config = _config()
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    assert set(layers) == _product_packages()
    assert set(config["root_packages"]) == _product_packages()


def test_the_programs_may_not_import_django():
    forbidden = next(c for c in _config()["contracts"] if "workers.sdk" in c.get("source_modules", []))
    assert {"workers.sdk", "workers.programs"} <= set(forbidden["source_modules"])
    assert "django" in forbidden["forbidden_modules"]


def test_the_contracts_hold_on_this_tree():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def _copy_tree(tmp_path: Path) -> Path:
    for package in _product_packages():
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_an_upward_import_inside_a_function_breaks_the_layers(tmp_path):
    tree = _copy_tree(tmp_path)
    with (tree / "ops" / "outcomes.py").open("a") as module:
        module.write("\n\ndef _reach_up() -> None:\n    from runs.models import Run  # noqa: F401\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "ops is not allowed to import runs" in result.stdout


def test_django_in_the_sdk_breaks_the_programs_contract(tmp_path):
    tree = _copy_tree(tmp_path)
    with (tree / "workers" / "sdk.py").open("a") as module:
        module.write("\nimport django  # noqa: E402,F401\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "workers.sdk is not allowed to import django" in result.stdout
