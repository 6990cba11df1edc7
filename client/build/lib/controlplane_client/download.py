"""One artifact to disk: resumed from a `.part` file with HTTP Range, checked against its sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from controlplane_client.errors import ClientError, from_response
from controlplane_client.types import Artifact

if TYPE_CHECKING:
    from controlplane_client.client import Client

CHUNK = 1024 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def target_path(out_dir: Path, name: str) -> Path:
    base = Path(name).name
    if base in ("", ".", ".."):
        raise ClientError(f"refusing to write an artifact named {name!r}")
    return out_dir / base


def fetch(
    client: Client, artifact: Artifact, out_dir: Path, progress: Callable[[str, int, int], None] | None
) -> Path:
    target = target_path(out_dir, artifact["name"])
    if (
        target.is_file()
        and target.stat().st_size == artifact["size"]
        and _sha256(target) == artifact["sha256"]
    ):
        return target  # already here, intact
    out_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > artifact["size"]:
        part.unlink()
        have = 0
    if have < artifact["size"]:
        _transfer(client, artifact, part, have, progress)
    if _sha256(part) != artifact["sha256"]:
        part.unlink()
        raise ClientError(f"{artifact['name']}: sha256 mismatch; the partial file was removed, try again")
    part.replace(target)
    return target


def _transfer(
    client: Client,
    artifact: Artifact,
    part: Path,
    have: int,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    headers = {}
    if have:
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{artifact["sha256"]}"'}
    try:
        with client.http.stream("GET", artifact["download_url"], headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                raise from_response(response)
            mode = "ab" if response.status_code == 206 else "wb"
            done = have if mode == "ab" else 0
            with part.open(mode) as handle:
                for block in response.iter_bytes(CHUNK):
                    handle.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(artifact["name"], done, artifact["size"])
    except httpx.HTTPError as error:
        raise ClientError(
            f"{artifact['name']}: download broke off ({error or type(error).__name__}); "
            "run it again to resume"
        ) from None
