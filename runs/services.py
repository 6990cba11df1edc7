"""User-facing writes on runs: launch and cancel.

Names follow the contract: `check_*` validates, `do_*` mutates. Views, commands and tests all go
through these functions, so a rule lives in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from celery import current_app as celery_app  # the project app (controlplane.celery), set as current
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ops.middleware import repeatable_writes
from runs import lifecycle
from runs.dataset_params import check_dataset_params
from runs.lifecycle import Trigger
from runs.models import Run, RunKind, RunStatus
from runs.placement_request import PlacementRequest, check_placement
from runs.programs import ParamsError, Program, get_program, resolve_params
from runs.snapshots import CodeLaunch, check_code
from vault import services as secret_services

log = structlog.get_logger(__name__)

SUPERVISE_TASK = "workers.tasks.supervise_run"
MAX_NAME_LENGTH = 200
MAX_SECRETS = 64
_SECRET_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


class LaunchError(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class CancelError(Exception):
    pass


class RetryError(Exception):
    pass


LIMIT_FIELDS = {
    # name: (minimum, maximum); None means "no limit" for the duration and the queue TTL.
    "max_attempts": (1, 20),
    "max_duration_seconds": (1, 30 * 24 * 3600),
    "queue_ttl_seconds": (1, 30 * 24 * 3600),
}
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class LaunchRequest:
    name: str
    program: Program
    params: dict[str, Any]
    secrets: list[str]
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_duration_seconds: int | None = None
    queue_ttl_seconds: int | None = None
    placement: PlacementRequest = field(default_factory=PlacementRequest)
    code: CodeLaunch | None = None  # a code run: its snapshot and command (runs/snapshots.py)


def _check_limits(limits: dict[str, Any], errors: dict[str, str]) -> dict[str, int]:
    checked: dict[str, int] = {}
    for name, value in limits.items():
        low, high = LIMIT_FIELDS[name]
        if value is None and name != "max_attempts":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            errors[name] = "must be an integer"
        elif not low <= value <= high:
            errors[name] = f"must be between {low} and {high}"
        else:
            checked[name] = value
    return checked


def _check_secrets(secrets: Any, owner: User | None, errors: dict[str, str]) -> list[str]:
    """The distinct secret names a launch asks for; a problem goes into `errors["secrets"]`."""
    if secrets is None:
        return []
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        errors["secrets"] = "must be a list of secret names"
        return []
    bad = [s for s in secrets if not _SECRET_NAME.match(s)]
    secret_names = list(dict.fromkeys(secrets))
    if bad:
        errors["secrets"] = f"not a valid secret name: {bad[0][:64]!r}"
    elif len(secret_names) > MAX_SECRETS:
        errors["secrets"] = f"at most {MAX_SECRETS} secrets"
    elif secret_names:
        # Refusals are audited there; only names are stored with the run, never values.
        problems = secret_services.check_usable(owner, secret_names)
        if problems:
            errors["secrets"] = "; ".join(problems)
    return secret_names


def check_launch(
    *,
    name: Any,
    program: Any,
    params: Any,
    secrets: Any = None,
    limits: dict[str, Any] | None = None,
    owner: User | None = None,
    fleet: dict[str, Any] | None = None,
    code: Any = None,
) -> LaunchRequest:
    """Validate a launch; `owner` (the launching user) must be allowed every secret it names.
    `fleet` holds the body's `resources`, `priority` and `preemptible` (runs.placement_request).
    `code` (a code run: `{"snapshot", "command"}`) replaces `program` and `params`; whether the
    caller may run code at all is the policy's `RUN_CODE`, asked by the caller of this."""
    errors: dict[str, str] = {}
    found: Program | None = None
    code_launch = None
    if code is not None:
        code_launch = check_code(code, program, params, errors)
        found = code_launch.program if code_launch is not None else None
    elif not isinstance(program, str) or not program:
        errors["program"] = "a program name is required"
    else:
        found = get_program(program)
        if found is None:
            retired = get_program(program, include_retired=True) is not None
            errors["program"] = (
                f"program {program[:64]!r} is retired: it takes no new runs"
                if retired
                else f"unknown program {program[:64]!r}"
            )
    # The program's own `resources` (its pool, its GPUs) apply where the body names none.
    placement, placement_errors = check_placement(fleet or {}, owner, found.resources if found else None)
    errors.update(placement_errors)
    checked_limits = _check_limits(limits or {}, errors)
    if not isinstance(name, str) or not name.strip():
        errors["name"] = "a non-empty string is required"
    elif len(name) > MAX_NAME_LENGTH:
        errors["name"] = f"must be at most {MAX_NAME_LENGTH} characters"
    resolved: dict[str, Any] = {}
    if found is not None and code_launch is None:
        try:
            resolved = resolve_params(found, params)
        except ParamsError as error:
            errors.update(error.errors)
        errors.update(check_dataset_params(resolved))
    secret_names = _check_secrets(secrets, owner, errors)
    if errors:
        raise LaunchError(errors)
    assert found is not None
    return LaunchRequest(
        name=name.strip(),
        program=found,
        params=resolved,
        secrets=secret_names,
        placement=placement,
        code=code_launch,
        **checked_limits,
    )


def enqueue_run(run_id: int, queue: str, request_id: str) -> None:
    """Hand the run to a worker. A broker failure leaves the run queued, never lost:
    the row is the truth, and the reconciler re-sends queued runs whose enqueue failed."""
    try:
        celery_app.send_task(SUPERVISE_TASK, args=[run_id], queue=queue, headers={"request_id": request_id})
    except Exception as error:  # the broker client raises many kinds; none may fail the request
        log.error("run_enqueue_failed", run_id=run_id, error=repr(error)[:300])
        return
    Run.objects.filter(pk=run_id, enqueued_at__isnull=True).update(
        enqueued_at=timezone.now(), dispatch_count=F("dispatch_count") + 1
    )
    log.info("run_enqueued", run_id=run_id, queue=queue)


def dispatch_on_commit(run_id: int, queue: str, request_id: str) -> None:
    """Send the run to `queue` once committed, unless the fleet admits queued runs: then the
    lifecycle listener runs a scheduler pass instead, which picks the worker and its devices."""
    if lifecycle.admission_is_external():
        return
    # Enqueue only once the row is committed: a worker must never see a run that may roll back.
    transaction.on_commit(lambda: enqueue_run(run_id, queue, request_id))


def do_launch_run(
    owner: User, launch: LaunchRequest, *, request_id: str = "", repeating_since: datetime | None = None
) -> Run:
    """Create, audit and dispatch a run. `repeating_since`: this request is a repeat (its
    connection died), begun then; a run its earlier try committed is returned, not launched again."""
    if repeating_since is not None and request_id:
        earlier = Run.objects.filter(owner=owner, request_id=request_id[:64], created_at__gte=repeating_since)
        if (found := earlier.order_by("-pk").first()) is not None:
            log.info("run_launch_repeated", run_id=found.pk)
            return found
    # With the fleet, "" until a scheduler pass admits it and names its worker's queue.
    program_queue = launch.program.queue or celery_app.conf.task_default_queue
    queue = "" if lifecycle.admission_is_external() else program_queue
    code = launch.code
    kind = {"kind": "code", "snapshot_id": code.snapshot, "command": list(code.command)} if code else {}
    # Repeatable: a repeat of this request finds the run instead of creating another (above).
    with repeatable_writes(), transaction.atomic():
        run = lifecycle.create_run(
            {
                "name": launch.name,
                "owner": owner,
                "program": launch.program.name,
                "params": launch.params,
                "secrets": launch.secrets,
                "queue": queue,
                "max_attempts": launch.max_attempts,
                "max_duration_seconds": launch.max_duration_seconds,
                "queue_ttl_seconds": launch.queue_ttl_seconds,
                "request_id": request_id[:64],
                "resources": launch.placement.resources,
                "priority": launch.placement.priority,
                "preemptible": launch.placement.preemptible,
                **kind,
            },
            actor=owner,
            audit_details={
                "program": launch.program.name,
                "params": launch.params,
                "secrets": launch.secrets,
                **{key: value for key, value in kind.items() if key != "snapshot_id"},
                **({"snapshot": code.snapshot} if code else {}),
            },
        )
        dispatch_on_commit(run.pk, queue, request_id)
        run_id = run.pk
    log.info("run_launched", run_id=run_id, program=run.program, owner_id=owner.pk)
    return run


def do_clone_run(run: Run, owner: User, *, request_id: str = "") -> Run:
    """Launch a new run like `run`: the same program and params, or the same snapshot and
    command; checked like any launch (its secrets and priority must still be `owner`'s to use)."""
    code = {"snapshot": run.snapshot_id, "command": list(run.command)} if run.kind == RunKind.CODE else None
    launch = check_launch(
        name=f"{run.name} (clone)"[:MAX_NAME_LENGTH],
        program=None if code else run.program,
        params=None if code else dict(run.params),
        secrets=list(run.secrets) or None,
        limits={"max_attempts": run.max_attempts, "max_duration_seconds": run.max_duration_seconds},
        owner=owner,
        fleet={"resources": run.resources or None, "priority": run.priority, "preemptible": run.preemptible},
        code=code,
    )
    return do_launch_run(owner, launch, request_id=request_id)


def do_cancel_run(run: Run, *, actor: User | None = None) -> Run:
    """Cancel a queued run at once; ask the supervisor of a running one to stop it."""
    now = timezone.now()
    unstarted = {
        "finished_at": now,
        "cancel_requested_at": now,
        "error_kind": "cancelled",
        "error_message": "cancelled before it started",
    }

    def cancel(trigger: Trigger, changes: dict[str, Any]) -> bool:
        details = {"status_before": run.status}
        return lifecycle.perform(run.pk, trigger, changes=changes, actor=actor, audit_details=details)

    with transaction.atomic():
        if run.kind == RunKind.EXTERNAL and cancel(
            Trigger.CANCEL_EXTERNAL,
            {**unstarted, "error_message": "cancelled by a user", "lease_expires_at": None, "phase": ""},
        ):
            # No supervisor will stop it: it ends here; the script's next report learns so (409).
            lifecycle.close_attempt(run.pk, run.attempt, RunStatus.CANCELLED, now)
            return Run.objects.get(pk=run.pk)
        # Tried in turn, each conditional: a run that starts or ends while we decide is not
        # overwritten (a claim between the first two makes the second one match).
        done = (
            cancel(Trigger.CANCEL_QUEUED, unstarted)
            or cancel(Trigger.CANCEL_REQUEST, {"cancel_requested_at": now})
            or cancel(Trigger.CANCEL_REPEATED, {})
        )
        if not done:
            raise CancelError(f"run {run.pk} is already {Run.objects.get(pk=run.pk).status}")
    log.info("run_cancel_requested", run_id=run.pk)
    return Run.objects.get(pk=run.pk)


def do_retry_run(run: Run, *, request_id: str = "", actor: User | None = None) -> Run:
    """Queue a finished-but-unsuccessful run again; its next attempt continues the same log."""
    cleared = {
        "finished_at": None,
        "enqueued_at": None,
        "cancel_requested_at": None,
        "error_kind": "",
        "error_code": "",
        "error_message": "",
        "exit_code": None,
        "phase": "",
        "request_id": request_id[:64],
    }
    if run.kind == RunKind.EXTERNAL:
        raise RetryError(f"run {run.pk} was reported from outside (external): start a new one instead")
    if run.kind == RunKind.PROGRAM and get_program(run.program) is None:
        # Retired (or gone): retrying is new work. Attempts the reliability layer retries on
        # its own after a worker loss still run (the supervisor reads retired programs too).
        raise RetryError(
            f"program {run.program!r} is retired or no longer registered; an admin can restore it"
        )
    with transaction.atomic():
        # Conditional: two retry clicks (or a retry racing a reconciler) queue the run once.
        retried = lifecycle.perform(
            run.pk, Trigger.RETRY, changes=cleared, actor=actor, audit_details={"status_before": run.status}
        )
        if not retried:
            current = Run.objects.get(pk=run.pk)
            raise RetryError(
                f"run {run.pk} is {current.status}; only failed, cancelled or dead runs can be retried"
            )
        dispatch_on_commit(run.pk, run.queue, request_id)
    log.info("run_retried", run_id=run.pk)
    return Run.objects.get(pk=run.pk)


class DeadLetterError(Exception):
    pass


def do_requeue_dead_run(run: Run, *, actor: User) -> Run:
    """Give a dead-lettered run a fresh budget of attempts; it resumes from its newest checkpoint."""
    with transaction.atomic():
        # The attempt counter only grows (it is the fencing token), so the budget moves up.
        # Conditional: a requeue racing a retry or a second requeue gives one fresh budget.
        requeued = lifecycle.perform(
            run.pk,
            Trigger.DEAD_LETTER_REQUEUE,
            changes={
                "max_attempts": F("attempt") + F("max_attempts"),
                "finished_at": None,
                "enqueued_at": None,
                "not_before": None,
                "discarded_at": None,
            },
            actor=actor,
            audit_details={"attempts_spent": run.attempt},
        )
        if not requeued:
            raise DeadLetterError(f"run {run.pk} is not dead-lettered")
        dispatch_on_commit(run.pk, run.queue, "")
    log.info("dead_letter_requeued", run_id=run.pk, actor_id=actor.pk)
    return Run.objects.get(pk=run.pk)


def do_discard_dead_run(run: Run, *, actor: User) -> Run:
    with transaction.atomic():
        # Conditional on the open dead letter: a discard racing a requeue leaves the run queued.
        if not lifecycle.perform(
            run.pk,
            Trigger.DEAD_LETTER_DISCARD,
            where=Q(discarded_at__isnull=True),
            changes={"discarded_at": timezone.now()},
            actor=actor,
            audit_details={"attempts_spent": run.attempt},
        ):
            raise DeadLetterError(f"run {run.pk} is not an open dead letter")
    log.info("dead_letter_discarded", run_id=run.pk, actor_id=actor.pk)
    return Run.objects.get(pk=run.pk)
