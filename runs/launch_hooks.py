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


# () -> [(pool, largest GPU count of one worker in it, worker count)], for the launch form's
# pool choices and their help (the fleet knows its pools; runs sits below it).
PoolLister = Callable[[], list[tuple[str, int, int]]]
_pool_listers: list[PoolLister] = []


def register_pool_lister(lister: PoolLister) -> None:
    if lister not in _pool_listers:
        _pool_listers.append(lister)


def known_pools() -> list[tuple[str, int, int]]:
    found: dict[str, tuple[str, int, int]] = {}
    for lister in tuple(_pool_listers):
        for pool in lister():
            found[pool[0]] = pool
    return [found[name] for name in sorted(found)]


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
    if position == 0:
        # First in line, yet not placed: what it needs is held by runs already admitted.
        return f"next in {pool}, waiting for devices to free up"
    return f"{position} run{'s' if position != 1 else ''} ahead of it in {pool}"


def waiting_reasons(runs: list[Any]) -> dict[int, str]:
    """Why each queued run of a page waits (the runs list and its live poll); other runs are left
    out. One placement read for the whole page, as the run serializer does."""
    queued = [run for run in runs if run.status == "queued"]
    if not queued:
        return {}
    placements = placements_of(queued)
    return {run.pk: waiting_reason(run, placements[run.pk]["queue_position"]) for run in queued}


def placements_of(runs: list[Any]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {run.pk: dict(EMPTY_PLACEMENT) for run in runs}
    for reader in tuple(_readers):
        for run_id, placement in reader(runs).items():
            found.setdefault(run_id, dict(EMPTY_PLACEMENT)).update(placement)
    return found
