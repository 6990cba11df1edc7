"""Who else hears of a run's status change: a registry that higher layers register into.

`runs` must not import the fleet (it sits above runs), yet the fleet must know when a run is
launched, ends or is queued again: to free its devices and to run a scheduler pass. The fleet
registers a callback here when its app is ready (`fleet.apps`), the same "register into" pattern
`ops` and `audit` use.

Callbacks run INSIDE the transaction of the change, right after its conditional UPDATE matched:
so freeing a run's devices commits or rolls back with its status (a crash between the two cannot
leak a reservation). A callback that must wait for the commit (a scheduler pass, a broker
message) defers itself with `transaction.on_commit`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runs.models import RunStatus


@dataclass(frozen=True)
class TransitionEvent:
    run_id: int
    trigger: str
    sources: frozenset[RunStatus]  # the row's source statuses (empty for a launch)
    target: RunStatus


TransitionListener = Callable[[TransitionEvent], None]
_listeners: list[TransitionListener] = []
_admission: list[bool] = []


def on_transition(callback: TransitionListener, *, admits: bool = False) -> None:
    """Register `callback`; `admits=True` says it decides where queued runs go (the fleet
    scheduler), so the services stop sending launches to the program's queue themselves."""
    if callback not in _listeners:
        _listeners.append(callback)
        if admits:
            _admission.append(True)


def notify(event: TransitionEvent) -> None:
    for callback in tuple(_listeners):
        callback(event)


def admission_is_external() -> bool:
    """True when a registered listener admits queued runs (the fleet is installed)."""
    return bool(_admission)
