"""Where cpctl keeps its URL and token: ~/.config/cpctl/config.json (0600).

CONTROLPLANE_URL and CONTROLPLANE_TOKEN, when set, win over the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from controlplane_client.errors import ClientError


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cpctl" / "config.json"


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None


def load() -> Settings:
    stored: dict[str, str] = {}
    path = config_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ClientError(f"cannot read {path}: {error}") from None
        if isinstance(data, dict):
            stored = {k: str(v) for k, v in data.items() if isinstance(v, str)}
    url = os.environ.get("CONTROLPLANE_URL") or stored.get("url")
    token = os.environ.get("CONTROLPLANE_TOKEN") or stored.get("token")
    if not url:
        raise ClientError("no server configured: run `cpctl login URL` or set CONTROLPLANE_URL")
    return Settings(url=url, token=token)


def save(url: str, token: str) -> Path:
    """Write the file readable by its owner only (created 0600, never widened)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"url": url, "token": token}, handle)
    os.chmod(path, 0o600)
    return path
