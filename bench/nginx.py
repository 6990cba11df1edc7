"""Debian's nginx as a reference file server (and reverse proxy) for the download benches.

Starts ``nginx -c <our config>`` in the foreground (``daemon off``), listening on 127.0.0.1 only,
with every path it writes (pid, logs, temp dirs) inside a directory of ours. Two locations:

- ``/files/`` serves a directory with ``sendfile`` (zero-copy): the reference a download through
  the product is measured against;
- everything else is proxied to the product's uvicorn (when an upstream is given), and
  ``/_protected_artifacts/`` is the internal location the product hands a transfer to with
  ``X-Accel-Redirect`` when ``CONTROLPLANE_X_ACCEL_PREFIX`` is set: the layout of
  ``deploy/nginx/controlplane.conf``.

Not installed? ``apt-get install -y nginx-light`` (as root).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

X_ACCEL_PREFIX = "/_protected_artifacts/"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )


def write_config(workdir: Path, port: int, files: Path, upstream: str | None) -> Path:
    """An nginx.conf serving `files` at /files/ and, with an upstream, proxying the rest to it."""
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    proxied = ""
    if upstream:
        proxied = f"""
        location {X_ACCEL_PREFIX} {{
            internal;
            alias {files}/;
            etag off;
            add_header ETag $upstream_http_etag always;
        }}
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}"""
    config = workdir / "nginx.conf"
    config.write_text(
        f"""# Written by bench/nginx.py for one benchmark run.
daemon off;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{
            alias {files}/;
        }}
        location = /nginx-alive {{
            return 200 "ok";
        }}{proxied}
    }}
}}
"""
    )
    return config


def start(workdir: Path, port: int, files: Path, upstream: str | None = None) -> subprocess.Popen[bytes]:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx-light)")
    config = write_config(workdir, port, files, upstream)
    with (workdir / "stdout.log").open("wb") as log_file:
        process = subprocess.Popen(
            [binary, "-c", str(config), "-p", str(workdir)], stdout=log_file, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = (
                (workdir / "error.log").read_text(errors="replace")
                if (workdir / "error.log").exists()
                else ""
            )
            raise RuntimeError(f"nginx exited with {process.returncode}: {error[-1000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/nginx-alive", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("nginx did not answer within 15 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGQUIT is nginx's graceful stop; the master reaps its worker."""
    if process.poll() is None:
        process.send_signal(3)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
