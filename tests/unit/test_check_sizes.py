"""scripts/check_sizes.py: no product module over 400 lines, no function over 60."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts import check_sizes

ROOT = Path(__file__).resolve().parents[2]


def function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}() -> None:\n{body}"


def run_script(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_sizes.py"), str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_an_oversized_module_and_function_fail_with_one_line_each(tmp_path: Path) -> None:
    package = tmp_path / "app"
    package.mkdir()
    (package / "small.py").write_text(function("fits", 59))  # 60 lines with its def: at the limit
    (package / "long_function.py").write_text("import os\n\n\n" + function("too_long", 60))
    (package / "methods.py").write_text("class Thing:\n" + function("long_method", 70, indent="    "))
    (package / "big.py").write_text("x = 1\n" * 401)

    result = run_script(tmp_path)

    assert result.returncode == 1
    assert sorted(result.stderr.splitlines()) == [
        "app/big.py:1 module 401 lines (limit 400)",
        "app/long_function.py:4 too_long 61 lines (limit 60)",
        "app/methods.py:2 long_method 71 lines (limit 60)",
    ]


def test_tests_benchmarks_migrations_and_dependencies_are_not_product_code(tmp_path: Path) -> None:
    for folder in ("tests", "bench", "app/migrations", "node_modules/pkg", ".venv/lib"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "long.py").write_text("x = 1\n" * 500 + function("long", 100))
    (tmp_path / "app" / "views.py").write_text(function("short", 10))
    assert check_sizes.check(tmp_path) == []
    assert run_script(tmp_path).returncode == 0


def test_a_module_that_does_not_parse_is_an_offender(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def (:\n")
    assert check_sizes.check(tmp_path)[0].startswith("broken.py:1 does not parse")


def test_the_product_tree_is_within_the_limits() -> None:
    assert check_sizes.check(ROOT) == []
