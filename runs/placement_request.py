"""What a launch asks of the fleet: `resources` (pool, gpus, nodes), `priority`, `preemptible`.

Shapes and ranges are checked here; whether the pool exists and a worker is big enough is asked
of the fleet through `runs.launch_hooks` (the fleet sits above runs). Errors name the field:
`resources.pool`, `resources.gpus`, `resources.nodes`, `priority`, `preemptible`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from accounts.roles import Role, role_of
from runs import launch_hooks

MAX_GPUS = 64
MAX_NODES = 64
DEFAULT_PRIORITY = 50
_POOL = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class PlacementRequest:
    resources: dict[str, Any] = field(default_factory=dict)
    priority: int = DEFAULT_PRIORITY
    preemptible: bool = True


def max_priority(owner: Any) -> int:
    if owner is not None and (getattr(owner, "is_superuser", False) or role_of(owner) == Role.ADMIN):
        return 100
    return int(settings.FLEET["MAX_PRIORITY_OPERATOR"] or 0)


def resources_problem(resources: Any) -> tuple[str, str] | None:
    """The first (field, message) wrong with a `resources` object, or None; also checks the
    defaults a programs file declares."""
    errors: dict[str, str] = {}
    _check_resources(resources, errors, {})
    return next(iter(errors.items()), None)


def _check_resources(resources: Any, errors: dict[str, str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    if resources is None:
        resources = {}
    if not isinstance(resources, dict):
        errors["resources"] = 'must be an object such as {"pool": "a100", "gpus": 2}'
        return {}
    unknown = sorted(set(resources) - {"pool", "gpus", "nodes"})
    if unknown:
        errors[f"resources.{str(unknown[0])[:32]}"] = "unknown field"
    pool = resources.get("pool", defaults.get("pool", "default"))
    gpus = resources.get("gpus", defaults.get("gpus", 0))
    nodes = resources.get("nodes", defaults.get("nodes", 1))
    if not isinstance(pool, str) or not _POOL.match(pool):
        errors["resources.pool"] = "a pool name: lowercase letters, digits, '.', '_', '-' (at most 64)"
    if isinstance(gpus, bool) or not isinstance(gpus, int):
        errors["resources.gpus"] = "must be an integer"
    elif not 0 <= gpus <= MAX_GPUS:
        errors["resources.gpus"] = f"must be between 0 and {MAX_GPUS}"
    if isinstance(nodes, bool) or not isinstance(nodes, int):
        errors["resources.nodes"] = "must be an integer"
    elif not 1 <= nodes <= MAX_NODES:
        errors["resources.nodes"] = f"must be between 1 and {MAX_NODES}"
    if nodes == 1:
        return {"pool": pool, "gpus": gpus}
    # A gang (docs/distributed.md): `gpus` on each of `nodes` workers, all placed at once.
    return {"pool": pool, "gpus": gpus, "nodes": nodes}


def check_placement(
    body: dict[str, Any], owner: Any, defaults: Mapping[str, Any] | None = None
) -> tuple[PlacementRequest, dict[str, str]]:
    """The checked request from the launch body's fields, and field errors (empty when valid).
    `defaults` are the program's own resources, for the fields the body leaves out."""
    resources, priority, preemptible = body.get("resources"), body.get("priority"), body.get("preemptible")
    errors: dict[str, str] = {}
    checked = _check_resources(resources, errors, defaults or {})
    if priority is None:
        priority = DEFAULT_PRIORITY
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors["priority"] = "must be an integer"
    elif not 0 <= priority <= 100:
        errors["priority"] = "must be between 0 and 100"
    elif priority > max_priority(owner):
        errors["priority"] = f"your role may launch with priority at most {max_priority(owner)}"
    if preemptible is None:
        preemptible = True
    if not isinstance(preemptible, bool):
        errors["preemptible"] = "must be true or false"
    if not errors:
        errors.update(launch_hooks.validate(owner, checked))
    if errors:
        return PlacementRequest(), errors
    return PlacementRequest(checked, int(priority), bool(preemptible)), {}
