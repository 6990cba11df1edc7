"""The launch form's fleet fields: pool, GPUs, priority, preemptible.

As with the params (runs/web/launch.py), nothing is validated here: posted strings become the
JSON values they spell and go to `services.check_launch` as the API's body would, so the rule
(`runs.placement_request.check_placement`, which asks the fleet whether the pool exists and a
worker is big enough) has one home and one set of messages. Its error keys (`resources.pool`,
`resources.gpus`, `priority`, `preemptible`) are the inputs' names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import QueryDict

from runs import launch_hooks
from runs.models import Run
from runs.placement_request import DEFAULT_PRIORITY, MAX_GPUS, max_priority

POOL, GPUS, PRIORITY, PREEMPTIBLE = "resources.pool", "resources.gpus", "priority", "preemptible"
FIELD_NAMES = frozenset({POOL, GPUS, PRIORITY, PREEMPTIBLE, "resources"})


@dataclass(frozen=True)
class PoolChoice:
    name: str
    largest_gpus: int
    workers: int

    @property
    def capacity(self) -> str:
        if self.largest_gpus:
            return f"up to {self.largest_gpus} GPU{'s' if self.largest_gpus != 1 else ''} a run"
        return "CPU only"

    @property
    def text(self) -> str:
        return f"{self.name} ({self.capacity})"


@dataclass(frozen=True)
class ResourceFields:
    """What the form shows: the values (as typed, or the defaults) and each field's error."""

    pool: str
    gpus: str
    priority: str
    preemptible: bool
    max_priority: int
    pools: list[PoolChoice]
    errors: dict[str, str]
    max_gpus: int = MAX_GPUS

    @property
    def pool_error(self) -> str:
        return self.errors.get(POOL) or self.errors.get("resources", "")

    @property
    def gpus_error(self) -> str:
        return self.errors.get(GPUS, "")

    @property
    def priority_error(self) -> str:
        return self.errors.get(PRIORITY, "")

    @property
    def preemptible_error(self) -> str:
        return self.errors.get(PREEMPTIBLE, "")

    @property
    def error_list(self) -> list[tuple[str, str, str]]:
        """(input id, label, message) for the error summary, in the form's order."""
        labelled = (
            ("id_pool", "Pool", self.pool_error),
            ("id_gpus", "GPUs", self.gpus_error),
            ("id_priority", "Priority", self.priority_error),
            ("id_preemptible", "Preemptible", self.preemptible_error),
        )
        return [(input_id, label, message) for input_id, label, message in labelled if message]


def defaults(clone_of: Run | None = None) -> dict[str, Any]:
    """The values a fresh form shows: the defaults, or those of the run being cloned."""
    if clone_of is None:
        return {"pool": "", "gpus": "", "priority": str(DEFAULT_PRIORITY), "preemptible": True}
    resources = clone_of.resources or {}
    pool = str(resources.get("pool") or "")
    return {
        "pool": "" if pool == "default" else pool,
        "gpus": str(resources.get("gpus") or ""),
        "priority": str(clone_of.priority),
        "preemptible": bool(clone_of.preemptible),
    }


def fields(owner: Any, values: dict[str, Any], errors: dict[str, str]) -> ResourceFields:
    return ResourceFields(
        pool=str(values.get("pool", "")),
        gpus=str(values.get("gpus", "")),
        priority=str(values.get("priority", "")),
        preemptible=bool(values.get("preemptible", True)),
        max_priority=max_priority(owner),
        pools=[PoolChoice(*pool) for pool in launch_hooks.known_pools()],
        errors={key: message for key, message in errors.items() if key in FIELD_NAMES},
    )


def _integer(raw: str) -> Any:
    """An integer when the text spells one, else the text itself (so the check says "must be an
    integer" about it, as the API would about a string)."""
    try:
        return int(raw)
    except ValueError:
        return raw


def posted(data: QueryDict) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the launch body's fleet part for check_launch, the values to show again). An empty field
    means its default, as an absent key does in the API."""
    pool = data.get(POOL, "").strip()
    gpus = data.get(GPUS, "").strip()
    priority = data.get(PRIORITY, "").strip()
    # The form sends "false" from a hidden input and "true" from the checkbox when ticked; a post
    # with neither (an older form) keeps the default.
    marks = data.getlist(PREEMPTIBLE)
    preemptible = ("true" in marks) if marks else True
    resources: dict[str, Any] = {}
    if pool:
        resources["pool"] = pool
    if gpus:
        resources["gpus"] = _integer(gpus)
    body: dict[str, Any] = {"preemptible": preemptible}
    if resources:
        body["resources"] = resources
    if priority:
        body["priority"] = _integer(priority)
    shown = {"pool": pool, "gpus": gpus, "priority": priority, "preemptible": preemptible}
    return body, shown
