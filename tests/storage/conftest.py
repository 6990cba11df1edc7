"""Fixtures of the storage tests: one moto S3 server for the session, a bucket per test, and
settings that point the product's store at it (through the standard AWS variables)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.env import StorageConfig
from runs import blobstore
from tests.storage.s3server import FaultProxy, MotoServer, aws_env


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_server.port)
    yield proxy
    proxy.stop()


def use_bucket(
    settings: Any, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer, endpoint: str, **options: Any
) -> str:
    """A new bucket on the server, and the product's store pointed at it through `endpoint`."""
    bucket = f"cp-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=bucket)
    for key, value in aws_env(endpoint).items():
        monkeypatch.setenv(key, value)
    settings.STORAGE = StorageConfig(
        kind="s3", root=Path(settings.ARTIFACTS_DIR), bucket=bucket, prefix="cp/", **options
    )
    blobstore._stores.clear()  # a new client, reading the variables above
    return bucket


@pytest.fixture
def bucket(settings: Any, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer) -> Iterator[str]:
    yield use_bucket(settings, monkeypatch, moto_server, moto_server.url)
    blobstore._stores.clear()
