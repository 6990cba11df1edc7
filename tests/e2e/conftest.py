"""A virtualenv with only the client distribution (`pip install ./client`), one per test session.

What a user gets on a laptop: httpx, websockets, PyYAML and `cpctl`; no Django, no torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT


@dataclass
class ClientVenv:
    path: Path
    home: Path  # HOME of every cpctl call: its config file lives here

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        return {**keep, "HOME": str(self.home), "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def cpctl(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.path / "bin" / "cpctl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            env=self.env(**(env or {})),
            check=False,
        )


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> ClientVenv:
    base = tmp_path_factory.mktemp("client-venv")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT / "client")],
        check=True,
        capture_output=True,
        timeout=600,
    )
    home = base / "home"
    home.mkdir()
    return ClientVenv(path=venv, home=home)
