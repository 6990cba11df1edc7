"""Memory of the ASGI server while it streams a 2 GiB artifact.

Serves a 2 GiB file through the real server (``uvicorn controlplane.asgi:application``, a
subprocess with the same environment) at ``/api/v1/artifacts/<id>/download/`` with a bearer token,
and samples the server's resident set (VmRSS of the process and any children, every 50 ms) while
an httpx client streams the body, hashing it on the fly and discarding it.

Baseline = RSS after one small warm-up request (a 64 KiB Range request through the same view).
Target: peak - baseline < 64 MiB. Also checks that the body's sha256 matches and that a Range
request for the last 1 MiB answers 206 with the right bytes and Content-Range.

Each invocation creates a throwaway database ``bench_controlplane_<pid>`` and temp data directory
(holding the 2 GiB file) and removes both at the end.

Usage: .venv/bin/python bench/bench_download.py [--size-mib 2048] [--fill random|sparse] [--no-redis]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402

MIB = 1024 * 1024
TARGET_GROWTH_MIB = 64.0
SAMPLE_EVERY = 0.05


# -- throwaway database -----------------------------------------------------------------------


# -- the file ---------------------------------------------------------------------------------


def make_file(path: Path, size: int, fill: str) -> str:
    """Write `size` bytes (random, or a sparse hole) and return their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    if fill == "sparse":
        with path.open("wb") as handle:
            os.truncate(handle.fileno(), size)
        zeros = bytes(MIB)
        remaining = size
        while remaining > 0:
            digest.update(zeros[: min(MIB, remaining)])
            remaining -= MIB
        return digest.hexdigest()
    with path.open("wb") as handle:
        remaining = size
        while remaining > 0:
            chunk = os.urandom(min(MIB, remaining))
            digest.update(chunk)
            handle.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


# -- the server and its memory ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        for child in text.split():
            found.append(int(child))
            found.extend(_children(int(child)))
    return found


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    """VmRSS of the process tree rooted at pid."""
    return sum(_status_kib(p, "VmRSS") for p in [pid, *_children(pid)]) / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(rss_mib(self.pid))
            self._stop_event.wait(SAMPLE_EVERY)

    def stop(self) -> list[float]:
        self._stop_event.set()
        self.join()
        self.samples.append(rss_mib(self.pid))
        return self.samples


def start_server(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "controlplane.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command, cwd=REPO, env=dict(os.environ), stdout=log_file, stderr=subprocess.STDOUT
        )


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code < 500:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=2048, help="artifact size in MiB")
    parser.add_argument("--fill", choices=("random", "sparse"), default="random")
    parser.add_argument("--no-redis", action="store_true", help="the server runs without REDIS_URL")
    args = parser.parse_args()

    db_name = f"bench_controlplane_{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="bench-download-"))
    create_database(db_name)
    try:
        return bench(args, db_name, data_dir)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception as error:
            print(f"(closing Django connections failed: {error!r})")
        drop_database(db_name)
        shutil.rmtree(data_dir, ignore_errors=True)


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> int:
    t0 = time.perf_counter()
    setup_django(db_name, data_dir, redis=not args.no_redis)
    print(f"database {db_name} migrated in {time.perf_counter() - t0:.1f} s")

    from django.conf import settings
    from django.contrib.auth import get_user_model

    from accounts.tokens import do_issue_token
    from runs.models import Artifact, Run, RunStatus

    size = args.size_mib * MIB
    user = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe(16))
    token = do_issue_token(user).plaintext
    run = Run.objects.create(
        name="download", owner=user, program="bench", queue="training", status=RunStatus.SUCCEEDED, attempt=1
    )
    storage_key = f"{run.pk}/1/model.bin"
    path = Path(settings.ARTIFACTS_DIR) / storage_key
    t0 = time.perf_counter()
    sha256 = make_file(path, size, args.fill)
    print(f"{args.fill} file of {size / MIB:,.0f} MiB written and hashed in {time.perf_counter() - t0:.1f} s")
    artifact = Artifact.objects.create(
        run=run, attempt=1, name="model.bin", kind="model", size=size, sha256=sha256, storage_key=storage_key
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/api/v1/artifacts/{artifact.pk}/download/"
    auth = {"Authorization": f"Bearer {token}"}
    server_log = data_dir / "server.log"
    server = start_server(port, server_log)
    try:
        ready = wait_ready(base, server)
        print(f"uvicorn pid {server.pid} on port {port}, ready in {ready:.1f} s")
        return measure(server.pid, url, auth, path, size, sha256)
    except Exception:
        print("server log tail:\n" + server_log.read_text(errors="replace")[-3000:])
        raise
    finally:
        stop_server(server)


def measure(pid: int, url: str, auth: dict[str, str], path: Path, size: int, sha256: str) -> int:
    failures: list[str] = []
    with httpx.Client(timeout=httpx.Timeout(30.0), headers=auth) as client:
        warm = client.get(url, headers={"Range": "bytes=0-65535"})
        if warm.status_code != 206 or len(warm.content) != 65536:
            failures.append(f"warm-up range request answered {warm.status_code}, {len(warm.content)} bytes")
        time.sleep(0.5)
        settle = []
        for _ in range(10):
            settle.append(rss_mib(pid))
            time.sleep(SAMPLE_EVERY)
        baseline = statistics.median(settle)
        hwm_before = hwm_mib(pid)

        sampler = Sampler(pid)
        sampler.start()
        digest = hashlib.sha256()
        received = 0
        started = time.perf_counter()
        try:
            with client.stream("GET", url) as response:
                status = response.status_code
                length = response.headers.get("Content-Length")
                for chunk in response.iter_bytes(MIB):
                    digest.update(chunk)
                    received += len(chunk)
        finally:
            elapsed = time.perf_counter() - started
            samples = sampler.stop()
        hwm_after = hwm_mib(pid)

        tail_start = size - MIB
        tail = client.get(url, headers={"Range": f"bytes=-{MIB}"})
        with path.open("rb") as handle:
            handle.seek(tail_start)
            expected_tail = handle.read()

    peak = max(samples)
    growth = peak - baseline
    match = digest.hexdigest() == sha256
    if status != 200:
        failures.append(f"download answered {status}")
    if received != size or length != str(size):
        failures.append(f"received {received:,} bytes, Content-Length {length}, expected {size:,}")
    if not match:
        failures.append("sha256 mismatch")
    expected_range = f"bytes {tail_start}-{size - 1}/{size}"
    range_ok = (
        tail.status_code == 206
        and tail.headers.get("Content-Range") == expected_range
        and tail.content == expected_tail
    )
    if not range_ok:
        failures.append(
            f"range request: {tail.status_code}, Content-Range {tail.headers.get('Content-Range')!r} "
            f"(expected {expected_range!r}), {len(tail.content):,} bytes, "
            f"content {'matches' if tail.content == expected_tail else 'differs'}"
        )

    print(
        f"download:        {received / MIB:,.0f} MiB in {elapsed:.2f} s "
        f"= {received / MIB / elapsed:,.0f} MiB/s"
    )
    print(f"sha256 match:    {'yes' if match else 'NO'} ({digest.hexdigest()[:16]}...)")
    print(
        f"server RSS:      baseline {baseline:.1f} MiB, peak {peak:.1f} MiB, growth {growth:.1f} MiB "
        f"({len(samples)} samples every {SAMPLE_EVERY * 1000:.0f} ms)"
    )
    print(f"server VmHWM:    {hwm_before:.1f} MiB before the download, {hwm_after:.1f} MiB after")
    print(
        f"range last 1MiB: {tail.status_code}, Content-Range {tail.headers.get('Content-Range')}, "
        f"bytes {'match' if tail.content == expected_tail else 'DIFFER'}"
    )
    for failure in failures:
        print(f"check failed: {failure}")
    passed = growth < TARGET_GROWTH_MIB and not failures
    verdict = "PASS" if passed else "FAIL"
    print(
        f"{verdict}: server RSS growth {growth:.1f} MiB while streaming {size / MIB:,.0f} MiB "
        f"(ratio {growth / TARGET_GROWTH_MIB:.2f} of the {TARGET_GROWTH_MIB:.0f} MiB limit)"
        + ("" if not failures else f"; {len(failures)} check(s) failed")
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
