"""Downloads of a 2 GiB artifact: throughput against Debian's nginx (sendfile), and memory.

Three ways to fetch the same file, in the same run, interleaved (``--repeats`` rounds, the order
rotated each round), each timed with curl writing to /dev/null (the same cheap client for all):

1. ours, uvicorn alone: ``/api/v1/artifacts/<id>/download/`` with a bearer token, the file
   streamed by the view (``runs/downloads.py``), as compose publishes the web service by default;
2. the baseline, nginx alone: the same file at ``/files/<storage key>`` with ``sendfile on``
   (bench/nginx.py; ``apt-get install -y nginx-light``);
3. ours behind that nginx: the same download URL through nginx, the web server started with
   ``CONTROLPLANE_X_ACCEL_PREFIX`` so it authorizes, audits and hands the transfer back to nginx
   (``X-Accel-Redirect``), as compose's ``proxy`` profile deploys it.

Target: >= 0.9x nginx's throughput for 1 (3 is printed), and RSS growth of the product's
server (VmRSS of its process tree sampled every 50 ms, against the median before the download)
under 64 MiB. Also checks the sha256 of the whole body and a Range request for the last 1 MiB
(206, Content-Range, bytes) through each path.

Each invocation creates a throwaway database ``bench_controlplane_<pid>`` and temp data directory
(holding the file) and removes both at the end.

Usage: .venv/bin/python bench/bench_download.py [--size-mib 2048] [--fill random|sparse]
       [--repeats 3] [--no-nginx] [--no-redis]
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import nginx  # noqa: E402
from bench.nginx import X_ACCEL_PREFIX  # noqa: E402
from bench.throwaway import create_database, drop_database, setup_django  # noqa: E402

MIB = 1024 * 1024
TARGET_GROWTH_MIB = 64.0
TARGET_RATIO = 0.9
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


def start_server(
    port: int, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
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
            command,
            cwd=REPO,
            env={**os.environ, **(extra_env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
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
    parser.add_argument("--repeats", type=int, default=3, help="downloads of each kind, interleaved")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx comparison")
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


@dataclass
class Target:
    """One way of downloading the same file: a URL, its headers, and the processes serving it."""

    label: str
    url: str
    headers: dict[str, str]
    pid: int
    seconds: list[float] = field(default_factory=list)
    growth: list[float] = field(default_factory=list)

    def mib_s(self, size: int) -> float:
        return size / MIB / statistics.median(self.seconds)


def bench(args: argparse.Namespace, db_name: str, data_dir: Path) -> int:
    t0 = time.perf_counter()
    setup_django(db_name, data_dir, redis=not args.no_redis)
    print(f"database {db_name} migrated in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")

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
    artifacts = Path(settings.ARTIFACTS_DIR)
    path = artifacts / storage_key
    t0 = time.perf_counter()
    sha256 = make_file(path, size, args.fill)
    print(f"{args.fill} file of {size / MIB:,.0f} MiB written and hashed in {time.perf_counter() - t0:.1f} s")
    artifact = Artifact.objects.create(
        run=run, attempt=1, name="model.bin", kind="model", size=size, sha256=sha256, storage_key=storage_key
    )
    download = f"/api/v1/artifacts/{artifact.pk}/download/"
    auth = {"Authorization": f"Bearer {token}"}
    with contextlib.ExitStack() as stack:
        direct = _server(stack, data_dir / "server.log")
        targets = [Target("ours: uvicorn, streamed", f"{direct[0]}{download}", auth, direct[1].pid)]
        if not args.no_nginx:
            # The same product behind nginx, handing the transfer over with X-Accel-Redirect.
            proxied = _server(
                stack, data_dir / "server-xaccel.log", {"CONTROLPLANE_X_ACCEL_PREFIX": X_ACCEL_PREFIX}
            )
            port = free_port()
            workdir = data_dir / "nginx"
            reference = nginx.start(workdir, port, artifacts, upstream=proxied[0])
            stack.callback(nginx.stop, reference)
            base = f"http://127.0.0.1:{port}"
            targets.append(Target("nginx: sendfile", f"{base}/files/{storage_key}", {}, reference.pid))
            targets.append(
                Target("ours: nginx + X-Accel-Redirect", f"{base}{download}", auth, proxied[1].pid)
            )
        return measure(targets, args.repeats, path, size, sha256)


def _server(
    stack: contextlib.ExitStack, log: Path, extra_env: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, log, extra_env)
    stack.callback(stop_server, server)
    try:
        ready = wait_ready(base, server)
    except Exception:
        print("server log tail:\n" + log.read_text(errors="replace")[-3000:])
        raise
    print(f"uvicorn pid {server.pid} on port {port}, ready in {ready:.1f} s ({log.name})")
    return base, server


def curl(target: Target, *extra: str) -> list[str]:
    """curl for the timed downloads: a C client whose cost is small and the same for every server,
    so the figure is the server's (a Python client capped nginx at a third of what curl reads)."""
    headers = [arg for name, value in target.headers.items() for arg in ("-H", f"{name}: {value}")]
    return ["curl", "-s", *headers, *extra, target.url]


def download_once(target: Target, size: int) -> list[str]:
    """Download the whole file once; record seconds and the serving tree's RSS growth."""
    settle = []
    for _ in range(10):
        settle.append(rss_mib(target.pid))
        time.sleep(SAMPLE_EVERY)
    baseline = statistics.median(settle)
    sampler = Sampler(target.pid)
    sampler.start()
    started = time.perf_counter()
    try:
        command = curl(target, "-o", "/dev/null", "-w", "%{http_code} %{size_download}")
        answer = subprocess.run(command, capture_output=True, text=True, check=False).stdout.split()
    finally:
        target.seconds.append(time.perf_counter() - started)
        target.growth.append(max(sampler.stop()) - baseline)
    if answer != ["200", str(size)]:
        return [f"{target.label}: curl said {answer}"]
    return []


def check_body(target: Target, sha256: str) -> list[str]:
    """The whole body's sha256, through the same path (untimed)."""
    body = subprocess.Popen(curl(target), stdout=subprocess.PIPE)
    assert body.stdout is not None
    digest = hashlib.sha256()
    while chunk := body.stdout.read(MIB):
        digest.update(chunk)
    body.wait()
    return [] if digest.hexdigest() == sha256 else [f"{target.label}: sha256 mismatch"]


def check_range(client: httpx.Client, target: Target, path: Path, size: int) -> list[str]:
    """A Range request for the last 1 MiB answers 206 with the right bytes and Content-Range."""
    tail_start = size - MIB
    tail = client.get(target.url, headers={**target.headers, "Range": f"bytes=-{MIB}"})
    with path.open("rb") as handle:
        handle.seek(tail_start)
        expected_tail = handle.read()
    expected_range = f"bytes {tail_start}-{size - 1}/{size}"
    if (
        tail.status_code == 206
        and tail.headers.get("Content-Range") == expected_range
        and tail.content == expected_tail
    ):
        return []
    return [
        f"{target.label}: range request answered {tail.status_code}, Content-Range "
        f"{tail.headers.get('Content-Range')!r} (expected {expected_range!r}), {len(tail.content):,} bytes"
    ]


def measure(targets: list[Target], repeats: int, path: Path, size: int, sha256: str) -> int:
    failures: list[str] = []
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        for target in targets:  # warm-up: a small Range request through every path
            warm = client.get(target.url, headers={**target.headers, "Range": "bytes=0-65535"})
            if warm.status_code != 206 or len(warm.content) != 65536:
                failures.append(f"{target.label}: warm-up range answered {warm.status_code}")
        for repeat in range(repeats):
            # Interleaved, and the order rotated each round, so load from others hits all alike.
            for target in targets[repeat % len(targets) :] + targets[: repeat % len(targets)]:
                failures += download_once(target, size)
        for target in targets:
            failures += check_range(client, target, path, size)
            if target is not targets[1]:  # nginx's own file serving needs no check
                failures += check_body(target, sha256)
    print(f"\n{size / MIB:,.0f} MiB, {repeats} downloads of each, interleaved (median; all runs):")
    for target in targets:
        runs = ", ".join(f"{size / MIB / s:,.0f}" for s in target.seconds)
        print(
            f"  {target.label:<32} {target.mib_s(size):>7,.0f} MiB/s  ({runs})  "
            f"RSS growth max {max(target.growth):.1f} MiB"
        )
    growth = max(max(target.growth) for target in targets if target.label.startswith("ours"))
    passed = growth < TARGET_GROWTH_MIB and not failures
    if len(targets) == 3:
        # Judged: what compose ships by default (uvicorn streams). Through nginx + X-Accel-Redirect
        # the bytes are nginx's own sendfile, so that ratio only shows the per-request overhead
        # (and, on a loaded machine, the noise): printed, not judged.
        reference = targets[1]
        for target in (targets[0], targets[2]):
            ratio = target.mib_s(size) / reference.mib_s(size)
            met = ratio >= TARGET_RATIO
            passed &= met or target is targets[2]
            verdict = "met" if met else "NOT met"
            print(f"  ratio {target.label} / nginx: {ratio:.3f} (target >= {TARGET_RATIO}: {verdict})")
    for failure in failures:
        print(f"check failed: {failure}")
    print(
        f"{'PASS' if passed else 'FAIL'}: product RSS growth {growth:.1f} MiB (max) while sending "
        f"{size / MIB:,.0f} MiB (limit {TARGET_GROWTH_MIB:.0f} MiB)"
        + ("" if not failures else f"; {len(failures)} check(s) failed")
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
