"""What every step of the wheel smoke uses: running commands, waiting, a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
# Settings the caller may have set that must not reach the installed product (nor PYTHONPATH).
LEAKY = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL"}
LEAKY |= {"CELERY_BROKER_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "STATIC_ROOT"}

T = TypeVar("T")


class SmokeError(Exception):
    """A check failed; the message says which and why."""


def say(message: str) -> None:
    sys.stderr.write(f"==> {time.strftime('%H:%M:%S')} {message}\n")
    sys.stderr.flush()


@contextmanager
def step(name: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    say(name)
    started = time.monotonic()
    yield
    timings.append((name, time.monotonic() - started))


def run(
    command: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    expect_failure: bool = False,
    timeout: float = 600,
) -> str:
    """Runs `command`; its stdout and stderr together. Fails unless it exits as expected."""
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if (result.returncode != 0) != expect_failure:
        raise SmokeError(f"`{' '.join(command)}` exited {result.returncode}:\n{output[-6000:]}")
    return output


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise SmokeError(f"timed out after {timeout:.0f} s waiting for {what}")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without the product's settings; pip's (mirrors, indexes) stay."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY and not k.startswith("CONTROLPLANE_")}
    env.update(extra)
    return env
