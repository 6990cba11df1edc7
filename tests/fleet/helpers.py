"""Fleet test helpers: workers as rows (no processes), runs waiting for admission."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from fleet.agent import register
from fleet.inventory import DeviceSpec
from fleet.models import DeviceKind, Worker
from runs import lifecycle
from runs.models import Run


def gpu_worker(name: str, gpus: int, pool: str = "a100") -> Worker:
    return register(name, pool, [DeviceSpec(i, DeviceKind.GPU, "Fake A100", 80 * 2**30) for i in range(gpus)])


def cpu_worker(name: str, slots: int = 1, pool: str = "default") -> Worker:
    return register(name, pool, [DeviceSpec(i, DeviceKind.SLOT) for i in range(slots)])


def waiting_run(
    owner: User, *, pool: str = "a100", gpus: int = 1, priority: int = 50, nodes: int = 1, **fields: Any
) -> Run:
    """A launched run waiting for admission (queue ''), as do_launch_run leaves it; `nodes` > 1:
    a gang."""
    return lifecycle.create_run(
        {
            "name": "r",
            "owner": owner,
            "program": "scripted",
            "queue": "",
            "resources": {"pool": pool, "gpus": gpus, **({"nodes": nodes} if nodes > 1 else {})},
            "priority": priority,
            **fields,
        },
        actor=owner,
    )
