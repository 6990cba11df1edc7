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


# run -> {"assigned": {...} | None, "queue_position": int | None}, read by the run serializer.
PlacementReader = Callable[[Any], dict[str, Any]]
_readers: list[PlacementReader] = []


def register_placement_reader(reader: PlacementReader) -> None:
    if reader not in _readers:
        _readers.append(reader)


def placement_of(run: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"assigned": None, "queue_position": None}
    for reader in tuple(_readers):
        found.update(reader(run))
    return found
