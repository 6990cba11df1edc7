"""The S3 store against a real S3 API server (moto): streamed multipart writes hashed on the way,
ranged reads, atomicity under faults, retries and the circuit breaker."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from ops.models import BreakerState, CircuitBreaker
from runs.blobstore import ObjectMissing, StorageUnavailable, get_store
from runs.s3store import PART_BYTES
from runs.storage import artifact_size, fetch_checkpoint, open_artifact, store_artifact
from tests.storage.conftest import use_bucket
from tests.storage.s3server import FaultProxy, MotoServer

pytestmark = pytest.mark.django_db


def _file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(size))
    return path


def test_a_multipart_upload_is_stored_whole_with_its_sha256(
    tmp_path: Path, bucket: str, moto_server: MotoServer
) -> None:
    source = _file(tmp_path, 2 * PART_BYTES + 12345)  # three parts
    stored = store_artifact(7, 1, source, "model.safetensors")
    data = source.read_bytes()
    assert stored == ("7/1/model.safetensors", len(data), hashlib.sha256(data).hexdigest())
    body = moto_server.client().get_object(Bucket=bucket, Key="cp/7/1/model.safetensors")["Body"].read()
    assert body == data
    assert artifact_size(stored.key) == len(data)


def test_a_stream_is_stored_in_one_pass(bucket: str) -> None:
    data = os.urandom(PART_BYTES + 1)
    stored = store_artifact(8, 2, io.BytesIO(data), "upload.bin")
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join(open_artifact(stored.key)) == data


def test_ranged_reads_answer_exactly_the_bytes_asked(tmp_path: Path, bucket: str) -> None:
    source = _file(tmp_path, 3 * 1024 * 1024 + 7)
    data = source.read_bytes()
    key = store_artifact(9, 1, source, "a.bin").key
    assert b"".join(open_artifact(key, 1000, 5000)) == data[1000:6000]
    assert b"".join(open_artifact(key, len(data) - 10)) == data[-10:]
    assert b"".join(open_artifact(key, 5, 0)) == b""


def test_a_missing_object_is_named_missing_not_unavailable(bucket: str) -> None:
    with pytest.raises(ObjectMissing):
        open_artifact("1/1/nothing.bin")
    assert artifact_size("1/1/nothing.bin") is None


def test_fetch_writes_atomically_and_hashes(tmp_path: Path, bucket: str) -> None:
    source = _file(tmp_path, PART_BYTES + 99)
    key = store_artifact(10, 1, source, "c.pt").key
    target = tmp_path / "run" / "checkpoints" / "c.pt"
    fetched = fetch_checkpoint(key, target)
    assert target.read_bytes() == source.read_bytes()
    assert fetched.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert [p.name for p in target.parent.iterdir()] == ["c.pt"]  # no partial file left


def test_a_500_from_s3_mid_upload_is_retried_and_the_object_is_whole(
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    bucket = use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    source = _file(tmp_path, 3 * PART_BYTES)
    fault_proxy.fail_parts = 2  # the second and third part of ... whichever come first: two 500s
    stored = store_artifact(11, 1, source, "model.bin")
    assert fault_proxy.failed_parts == 2
    body = moto_server.client().get_object(Bucket=bucket, Key="cp/11/1/model.bin")["Body"].read()
    assert (
        hashlib.sha256(body).hexdigest() == stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    )


def test_a_dead_store_raises_unavailable_and_leaves_no_object(
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    bucket = use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    source = _file(tmp_path, 2 * PART_BYTES)
    fault_proxy.down = True
    with pytest.raises(StorageUnavailable):
        store_artifact(12, 1, source, "model.bin")
    assert fault_proxy.refused > 1  # retried before giving up
    listed = moto_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert listed == [] and uploads == []
    fault_proxy.down = False
    stored = store_artifact(12, 1, source, "model.bin")  # back: the same call succeeds
    assert stored.size == 2 * PART_BYTES


def test_the_breaker_opens_on_a_dead_store_and_refuses_fast(
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    settings.CONTROLPLANE = {
        **settings.CONTROLPLANE,
        "BREAKER_THRESHOLD": 2,
        "BREAKER_COOLDOWN_SECONDS": 60.0,
    }
    bucket = use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    fault_proxy.down = True
    with pytest.raises(StorageUnavailable):
        open_artifact("1/1/x.bin")
    refused = fault_proxy.refused
    with pytest.raises(StorageUnavailable, match="circuit breaker"):
        open_artifact("1/1/x.bin")
    assert fault_proxy.refused == refused  # the open breaker sent nothing
    row = CircuitBreaker.objects.get(name=f"storage:s3:{bucket}")
    assert row.state == BreakerState.OPEN
    assert get_store().kind == "s3"


def test_500s_on_every_try_end_as_unavailable_not_as_a_crash(
    tmp_path: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    fault_proxy: FaultProxy,
) -> None:
    use_bucket(settings, monkeypatch, moto_server, fault_proxy.url)
    small = _file(tmp_path, 1000)  # one PUT (below the multipart threshold)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * PART_BYTES))  # parts
    fault_proxy.fail_puts = 1000
    with pytest.raises(StorageUnavailable):
        store_artifact(13, 1, small, "small.bin")
    with pytest.raises(StorageUnavailable):
        store_artifact(13, 1, big, "big.bin")
    with pytest.raises(StorageUnavailable):
        store_artifact(13, 1, io.BytesIO(b"stream"), "stream.bin")
    assert fault_proxy.failed_puts >= 6  # each retried before giving up
