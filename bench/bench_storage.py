"""Artifact upload and download through S3: the product's store against boto3 alone, and memory.

The same file, the same S3 API server (moto in server mode, a subprocess on a free port), the
same run, interleaved (``--repeats`` rounds): each operation runs in a fresh Python process so its
peak RSS (``ru_maxrss``) is its own.

1. upload, boto3 alone: ``client.upload_file(path, bucket, key)`` with boto3's defaults;
2. upload, ours: ``runs.storage.store_artifact(run, attempt, path, name)``: streamed multipart,
   sha256 computed while reading, size confirmed by HEAD, through retries and the breaker;
3. download, boto3 alone: ``client.download_file(bucket, key, path)`` (managed: parallel ranged
   GETs), and ``client.get_object(...)["Body"]`` read in 1 MiB chunks (one streamed GET, the
   technique a proxied download must use to keep Range and flat memory);
4. download, ours: ``runs.storage.open_artifact(key)`` chunks written to a file, the iterator the
   proxied download view (``runs/downloads.py``) streams to its client.

Target: ours >= 0.8x boto3's throughput each way; peak RSS flat (not growing with the size: the
printed growth over an idle process that imported the same modules stays bounded).

Usage: .venv/bin/python bench/bench_storage.py [--size-mib 512] [--repeats 2] [--skip-managed-download]
Needs Postgres (DATABASE_URL; the breaker's state lives there: a throwaway database is created).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUCKET = "bench"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _client() -> Any:
    import boto3

    return boto3.session.Session().client("s3")


def operation(name: str, path: Path, key: str) -> dict[str, float]:
    """One operation in this (fresh) process: seconds and peak RSS."""
    import django

    django.setup()
    from runs import storage

    client = _client()
    started = time.perf_counter()
    if name == "idle":
        pass
    elif name == "boto3_upload":
        client.upload_file(str(path), BUCKET, key)
    elif name == "ours_upload":
        stored = storage.store_artifact(1, 1, path, key.rsplit("/", 1)[-1])
        assert stored.size == path.stat().st_size
    elif name == "boto3_download":
        client.download_file(BUCKET, key, str(path))
    elif name == "boto3_get":
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        with path.open("wb") as out:
            while chunk := body.read(1 << 20):
                out.write(chunk)
    elif name == "ours_download":
        with path.open("wb") as out:
            for chunk in storage.open_artifact(key):
                out.write(chunk)
    return {"seconds": time.perf_counter() - started, "rss_mib": _rss_mib()}


def _run(name: str, path: Path, key: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--op", name, "--path", str(path), "--key", key],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--op")
    parser.add_argument("--path")
    parser.add_argument("--key")
    parser.add_argument(
        "--skip-managed-download",
        action="store_true",
        help="leave out boto3's download_file (ranged GETs moto serves slowly: 6 min at 2 GiB)",
    )
    args = parser.parse_args()
    if args.op:
        print(json.dumps(operation(args.op, Path(args.path), args.key)))
        return
    from tests.storage.s3server import MotoServer, aws_env

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]
    database = f"bench_storage_{os.getpid()}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = MotoServer(work / "moto.log")
    try:
        server.client().create_bucket(Bucket=BUCKET)
        env = {
            **os.environ,
            **aws_env(server.url),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "DATABASE_URL": f"{base}/{database}",
            "SECRET_KEY": "bench-storage-secret-key-0123456789abcdef",
            "CONTROLPLANE_DATA_DIR": str(work / "data"),
            "CONTROLPLANE_STORAGE_URL": f"s3://{BUCKET}/cp",
            "LOG_LEVEL": "WARNING",
        }
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        source = work / "artifact.bin"
        with source.open("wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(1 << 20))
        expected = _sha256(source)
        results: dict[str, list[dict[str, float]]] = {}
        idle = _run("idle", source, "x", env)
        for round_ in range(args.repeats):
            order = ["boto3_upload", "ours_upload", "boto3_download", "boto3_get", "ours_download"]
            if round_ % 2:
                order = ["ours_upload", "boto3_upload", "ours_download", "boto3_get", "boto3_download"]
            if args.skip_managed_download:
                order.remove("boto3_download")
            for name in order:
                # boto3 writes "direct/artifact.bin"; ours run 1's artifact, key "1/1/artifact.bin".
                key = "direct/artifact.bin" if name.startswith("boto3") else "1/1/artifact.bin"
                path = source if name.endswith("upload") else work / f"{name}.bin"
                results.setdefault(name, []).append(_run(name, path, key, env))
                if not name.endswith("upload"):
                    assert _sha256(path) == expected, name
                    path.unlink()
        _report(args.size_mib, idle, results)
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
        with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _report(size_mib: int, idle: dict[str, float], results: dict[str, list[dict[str, float]]]) -> None:
    best = {name: min(r["seconds"] for r in runs) for name, runs in results.items()}
    rss = {name: max(r["rss_mib"] for r in runs) for name, runs in results.items()}
    print(f"size {size_mib} MiB; idle process peak RSS {idle['rss_mib']:.0f} MiB")
    for name in results:
        speeds = [size_mib / r["seconds"] for r in results[name]]
        print(
            f"{name:15} best {best[name]:6.2f} s  {size_mib / best[name]:7.1f} MiB/s "
            f"(median {statistics.median(speeds):.1f})  peak RSS {rss[name]:.0f} MiB "
            f"(+{rss[name] - idle['rss_mib']:.0f} over idle)"
        )
    for way in ("upload", "download"):
        if f"boto3_{way}" in best:
            print(f"{way}: ours / boto3 = {best[f'boto3_{way}'] / best[f'ours_{way}']:.2f}x")
    print(f"download: ours / boto3 get_object streamed = {best['boto3_get'] / best['ours_download']:.2f}x")


if __name__ == "__main__":
    main()
