"""Launch checks and run details that need a layer above runs (the fleet's pools, capacity and
reservations).

The fleet registers a validator when its app is ready; `runs.services.check_launch` calls every
registered one with the resources the launch asks for, and reports their errors as field errors
(400s naming `resources.pool`, `resources.gpus`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (owner, resources) -> {field: message}
LaunchValidator = Callable[[Any, dict[str, Any]], dict[str, str]]
_validators: list[LaunchValidator] = []


def register_launch_validator(validator: LaunchValidator) -> None:
    if validator not in _validators:
        _validators.append(validator)


def validate(owner: Any, resources: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for validator in tuple(_validators):
        errors.update(validator(owner, resources))
    return errors


# runs -> {run id: {"assigned": {...} | None, "queue_position": int | None}}, read in bulk by the
# run serializer (one call per page, not per run).
PlacementReader = Callable[[list[Any]], dict[int, dict[str, Any]]]
_readers: list[PlacementReader] = []
EMPTY_PLACEMENT: dict[str, Any] = {"assigned": None, "queue_position": None}


def register_placement_reader(reader: PlacementReader) -> None:
    if reader not in _readers:
        _readers.append(reader)


def waiting_reason(run: Any, position: int | None) -> str:
    """Why a queued run waits, in words: the stored reason, else its place in its pool's queue."""
    if run.waiting_reason or position is None:
        return str(run.waiting_reason)
    pool = (run.resources or {}).get("pool") or "default"
    return f"{position} run{'s' if position != 1 else ''} ahead of it in {pool}"


def placements_of(runs: list[Any]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {run.pk: dict(EMPTY_PLACEMENT) for run in runs}
    for reader in tuple(_readers):
        for run_id, placement in reader(runs).items():
            found.setdefault(run_id, dict(EMPTY_PLACEMENT)).update(placement)
    return found
