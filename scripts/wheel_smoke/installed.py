"""Steps 2, 3 and 5: the installed wheel, run from outside the source tree; the SDK without Django."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts.wheel_smoke.build import present_packages
from scripts.wheel_smoke.common import ROOT, SmokeError, clean_env, run, say

IMPORT_CHECK = """
import importlib, json, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
assert not any(Path(p or ".").resolve() == root for p in sys.path), sys.path
prefix = Path(sys.prefix).resolve()
for name in sys.argv[2:]:
    where = Path(importlib.import_module(name).__file__).resolve()
    assert root not in where.parents, f"{name} imported from the source tree: {where}"
    assert prefix in where.parents, f"{name} is not from the virtualenv: {where}"
import controlplane_web
for folder in (controlplane_web.TEMPLATES_DIR, controlplane_web.STATIC_DIR):
    assert folder.is_dir() and prefix in folder.resolve().parents, folder
"""

SDK_PROGRAM = """
import importlib.util, sys
for heavy in ("django", "torch", "celery"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} is installed in the SDK-only virtualenv"
from workers.sdk import Reporter
with Reporter.from_env() as reporter:
    reporter.status("training")
    reporter.metric(3, {"train/loss": 1.25, "diverged": float("nan")})
    reporter.progress(3, 30)
    reporter.artifact("model.safetensors", "model")
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"django", "controlplane", "runs"})
assert not loaded, f"the SDK imported {loaded}"
"""
SDK_EVENTS = [
    {"type": "status", "phase": "training"},
    {"type": "metric", "step": 3, "values": {"train/loss": 1.25, "diverged": None}},
    {"type": "progress", "step": 3, "total": 30},
    {"type": "artifact", "path": "model.safetensors", "kind": "model"},
]
QUIET_PIP = ["--disable-pip-version-check", "--quiet", "--no-compile"]


def install(wheel: Path, venv: Path, outside: Path) -> str:
    """The wheel with its pinned dependencies (pip's mirrors or indexes) in a fresh venv; torch's version."""
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", *QUIET_PIP, str(wheel)])
    # As the image does after installing the wheel: its pins and the installed set agree.
    run([python, "-m", "pip", "check", "--disable-pip-version-check"])
    return run([python, "-c", "import torch; print(torch.__version__)"], cwd=outside).strip()


def deploy_env(work: Path) -> dict[str, str]:
    """Production-like settings, as `./dev lint`'s check --deploy (the database is never reached)."""
    return clean_env(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(48),
        ALLOWED_HOSTS="cp.example.com",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/controlplane",
        SECURE_SSL_REDIRECT="true",
        CONTROLPLANE_DATA_DIR=str(work / "deploy-data"),
        STATIC_ROOT=str(work / "deploy-static"),
    )


def manage_outside(venv: Path, outside: Path, env: dict[str, str], work: Path) -> None:
    """Imports, migrate, collectstatic and check --deploy, from `outside` with the tree on no path."""
    python, manage = str(venv / "bin" / "python"), str(venv / "bin" / "controlplane-manage")
    run([python, "-c", IMPORT_CHECK, str(ROOT), *present_packages()], env=env, cwd=outside)
    settings = {**env, "DJANGO_SETTINGS_MODULE": "controlplane.settings"}
    migrated = run([python, "-m", "django", "migrate", "--noinput"], cwd=outside, env=settings)
    applied = len(re.findall(r"Applying \S+", migrated))
    if not applied:
        raise SmokeError(f"migrate applied nothing:\n{migrated}")
    say(f"    python -m django migrate: {applied} migrations applied")
    # The image keeps only manage.py in /app (compose and deploy/k8s run `python manage.py …`).
    shutil.copy(ROOT / "manage.py", outside / "manage.py")
    run([python, "manage.py", "migrate", "--check"], cwd=outside, env=env)
    (outside / "manage.py").unlink()
    run([manage, "collectstatic", "--noinput", "-v0"], cwd=outside, env=env)
    if not (Path(env["STATIC_ROOT"]) / "vendor" / "uplot" / "uPlot.esm.js").is_file():
        raise SmokeError(f"collectstatic did not collect the vendor files into {env['STATIC_ROOT']}")
    checked = run([manage, "check", "--deploy", "--fail-level", "WARNING"], cwd=outside, env=deploy_env(work))
    say(f"    controlplane-manage check --deploy: {checked.strip().splitlines()[-1]}")


def sdk_without_django(wheel: Path, venv: Path, outside: Path) -> list[dict[str, Any]]:
    """The wheel alone (--no-deps) in a venv without pip: a program reports to a pipe."""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", *QUIET_PIP, "--no-deps", str(wheel)])
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader:
        try:
            env = clean_env(CONTROLPLANE_EVENTS_FD=str(write_fd), CONTROLPLANE_RUN_DIR=str(outside))
            process = subprocess.Popen(
                [python, "-c", SDK_PROGRAM],
                cwd=outside,
                env=env,
                pass_fds=(write_fd,),
                stderr=subprocess.PIPE,
            )
        finally:
            os.close(write_fd)  # the child holds its own copy: the reader sees EOF when it exits
        lines = reader.read().decode().splitlines()
    _, errors = process.communicate(timeout=60)
    if process.returncode != 0:
        raise SmokeError(f"the SDK program exited {process.returncode}:\n{errors.decode()}")
    events = [json.loads(line) for line in lines]
    if events != SDK_EVENTS:
        raise SmokeError(f"the SDK reported {events}, expected {SDK_EVENTS}")
    return events
