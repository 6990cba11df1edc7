"""Tracking mode: runs reported from anywhere over HTTP (docs/client.md, "Tracking mode").

An external run (`Run.kind = external`) is started by a script outside the control plane: no
queue, no admission, no worker. It is inserted `running` with attempt 1 open, and its launcher
gets a run-scoped token (accounts.policy.run_scoped_decision) that reports into it and nothing
else. Reports are batches of the programs' own JSON-lines events (runs/protocol.py), written by
the supervisor's own `runs.batches.write_batch`: the same seqs, points, rollups and frames.

Each batch carries its number (1, 2, ...): the conditional UPDATE that accepts batch N only after
N - 1 is applied in the batch's transaction, so a batch sent again after a lost response is
recognised (`duplicate`) and never written twice. Every accepted batch renews the run's lease by
`CONTROLPLANE_EXTERNAL_RUN_TIMEOUT_SECONDS`; the reconciler fails a run that stays silent longer
(`timeout`, `report_timeout`). The script ends its run with `{"type": "status", "status":
"succeeded" | "failed" | "cancelled"}`; its token is revoked when the run ends, however it ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from accounts.tokens import do_issue_run_token, revoke_run_tokens
from redaction import Redactor, redact, redact_value
from runs import lifecycle
from runs.attempts import Outcome, finish_attempt, system_line
from runs.batches import Batch, write_batch
from runs.lifecycle import LIVE_STATUSES, TERMINAL_STATUSES, TransitionEvent, Trigger
from runs.models import ErrorKind, LogStream, Run, RunKind, RunStatus
from runs.protocol import MAX_EVENT_LINE_BYTES, ParsedEvent, apply_event, parse_event

log = structlog.get_logger(__name__)

WORKER = "external"  # the attempt's worker column: nobody in the fleet runs it
MAX_PARAMS_BYTES = 64 * 1024
ENDINGS = {
    "succeeded": (RunStatus.SUCCEEDED, ""),
    "failed": (RunStatus.FAILED, ErrorKind.PROGRAM),
    "cancelled": (RunStatus.CANCELLED, ErrorKind.CANCELLED),
}


class ReportError(Exception):
    """A refused report: `status` is the HTTP answer (400, 409, 413), `errors` name the fields."""

    def __init__(self, status: int, errors: dict[str, Any]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.status = status
        self.errors = errors


def _deadline(now: datetime) -> datetime:
    return now + timedelta(seconds=float(settings.CONTROLPLANE["EXTERNAL_RUN_TIMEOUT_SECONDS"]))


def check_external_start(*, name: Any, params: Any) -> tuple[str, dict[str, Any]]:
    """Validated (name, params) of an external run: params are the script's own config, shown
    on the run, a JSON object of at most 64 KiB."""
    errors: dict[str, str] = {}
    if not isinstance(name, str) or not name.strip():
        errors["name"] = "a non-empty string is required"
    elif len(name) > 200:
        errors["name"] = "must be at most 200 characters"
    if params is None:
        params = {}
    if not isinstance(params, dict):
        errors["params"] = "must be a JSON object"
    elif len(repr(params)) > MAX_PARAMS_BYTES:
        errors["params"] = f"must be at most {MAX_PARAMS_BYTES} bytes"
    if errors:
        raise ReportError(400, errors)
    return str(name).strip(), dict(params)


def do_start_external_run(
    owner: User, name: str, params: dict[str, Any], *, request_id: str = ""
) -> tuple[Run, str]:
    """Insert a running external run with its attempt open, and issue its run-scoped token;
    returns the run and the token's plaintext (shown once)."""
    now = timezone.now()
    with transaction.atomic():
        run = lifecycle.create_run(
            {
                "name": name,
                "kind": RunKind.EXTERNAL,
                "owner": owner,
                "program": "",
                "params": redact_params(params),
                "queue": "",
                "attempt": 1,
                "max_attempts": 1,
                "started_at": now,
                "heartbeat_at": now,
                "lease_expires_at": _deadline(now),
                "worker": WORKER,
                "phase": "running",
                "request_id": request_id[:64],
            },
            actor=owner,
            audit_details={"kind": RunKind.EXTERNAL.value, "params": params},
            trigger=Trigger.START_EXTERNAL,
        )
        lifecycle.open_attempt(run.pk, 1, WORKER, now)
        issued = do_issue_run_token(owner, run.pk)
    log.info("external_run_started", run_id=run.pk, owner_id=owner.pk)
    return run, issued.plaintext


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    value = redact_value(params)
    return value if isinstance(value, dict) else {}


@dataclass
class ParsedReport:
    batch: Batch = field(default_factory=Batch)
    ending: tuple[RunStatus, str, str] | None = None  # status, error kind, message
    skipped: int = 0


def parse_report(body: bytes) -> ParsedReport:
    """A report body (JSON lines) as a batch, through the programs' own event rules; a malformed
    line becomes a `system` line in the run's log, as the supervisor writes it."""
    report = ParsedReport()
    batch, redactor = report.batch, Redactor()
    max_line = int(settings.CONTROLPLANE["MAX_LOG_LINE_BYTES"])
    for data in body.split(b"\n"):
        if not data.strip() or report.ending is not None:
            continue
        if len(data) > MAX_EVENT_LINE_BYTES:
            problem: str | None = f"event line longer than {MAX_EVENT_LINE_BYTES} bytes"
        else:
            parsed = parse_event(data, redactor)
            problem = parsed.problem or (_unencodable(parsed) if b"\\u" in data else None)
            if problem is None and parsed.points is not None:
                if batch.text_points == len(batch.points):
                    batch.texts.extend(parsed.texts)
                    batch.text_points += len(parsed.points)
                batch.points.extend(parsed.points)
            elif problem is None:
                problem = _apply(parsed.event, report, max_line)
        if problem is not None:
            report.skipped += 1
            preview = redact(data[:200].decode("utf-8", "replace"))
            batch.lines.append(system_line(f"skipped a malformed event ({problem}): {preview}"))
    return report


def _unencodable(parsed: ParsedEvent) -> str | None:
    """A JSON escape may spell a lone surrogate, which no UTF-8 column can hold: refused here
    (a skipped line) rather than failing the batch's write."""
    keys = {point[0] for point in parsed.points or ()}
    try:
        json.dumps([parsed.event, sorted(keys)], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8 (a lone surrogate escape)"
    return None


def _apply(event: Any, report: ParsedReport, max_line: int) -> str | None:
    """Events only HTTP reports carry (`log`, a status that ends the run), else the protocol's."""
    if not isinstance(event, dict):
        return "an event must be a JSON object"
    kind = event.get("type")
    if kind == "log":
        line, stream = event.get("line"), event.get("stream", "stdout")
        if not isinstance(line, str) or stream not in ("stdout", "stderr"):
            return "log needs a line string and stream stdout or stderr"
        text = redact(line.replace("\x00", ""))
        if len(text.encode()) > max_line:
            text = text.encode()[:max_line].decode("utf-8", "ignore") + " [truncated]"
        report.batch.lines.append((timezone.now(), LogStream(stream).value, text))
        return None
    if kind == "status" and "status" in event:
        ending = ENDINGS.get(str(event.get("status")))
        if ending is None:
            return f"status must be one of {', '.join(ENDINGS)}"
        message = event.get("message")
        report.ending = (ending[0], ending[1], redact(message)[:4000] if isinstance(message, str) else "")
        if not isinstance(event.get("phase"), str):
            return None
    if kind in ("checkpoint", "artifact"):
        return f"{kind} events name files on a worker; upload with PUT /api/v1/runs/<id>/artifacts/<name>"
    return apply_event(event, report.batch, [])


def do_report(run: Run, batch_number: int, body: bytes) -> dict[str, Any]:
    """Apply report batch `batch_number` to an external run, once; what happened, as JSON."""
    if run.kind != RunKind.EXTERNAL:
        raise ReportError(409, {"detail": f"run {run.pk} is not an external run", "code": "not_external"})
    report = parse_report(body)
    max_rows = int(settings.CONTROLPLANE["REPORT_MAX_ROWS"])
    if report.batch.rows > max_rows:
        raise ReportError(413, {"detail": f"a report batch holds at most {max_rows} rows (lines + points)"})
    now = timezone.now()
    with transaction.atomic():
        # The batch number is the idempotency key: of a batch sent twice (a lost response, a retry)
        # only the first matches `report_seq = N - 1`; the row lock orders concurrent senders.
        accepted = Run.objects.filter(
            pk=run.pk, kind=RunKind.EXTERNAL, status__in=LIVE_STATUSES, report_seq=batch_number - 1
        ).update(report_seq=batch_number, heartbeat_at=now, lease_expires_at=_deadline(now))
        if not accepted:
            return _not_accepted(run.pk, batch_number)
        first, last = write_batch(run.pk, run.attempt, report.batch, {}) if report.batch else (0, 0)
        status = Run.objects.values_list("status", flat=True).get(pk=run.pk)
        if report.ending is not None:
            ended, kind, message = report.ending
            code = "reported_failure" if ended == RunStatus.FAILED else ""
            status = finish_attempt(run.pk, run.attempt, Outcome(ended, None, kind, code, message)) or status
    return {
        "batch": batch_number,
        "duplicate": False,
        "lines": len(report.batch.lines),
        "points": len(report.batch.points),
        "first_seq": first,
        "last_seq": last,
        "skipped": report.skipped,
        "status": str(status),
    }


def _not_accepted(run_id: int, batch_number: int) -> dict[str, Any]:
    current = Run.objects.values("status", "report_seq").get(pk=run_id)
    if current["report_seq"] >= batch_number:
        return {"batch": batch_number, "duplicate": True, "status": current["status"]}
    if current["status"] not in LIVE_STATUSES:
        raise ReportError(409, {"detail": f"run {run_id} is {current['status']}", "code": "not_running"})
    raise ReportError(
        409,
        {
            "detail": f"batch {batch_number} is ahead: send batch {current['report_seq'] + 1} first",
            "code": "batch_gap",
            "expected_batch": current["report_seq"] + 1,
        },
    )


def expire_silent_runs(now: datetime, limit: int = 200) -> list[int]:
    """Fail the external runs that reported nothing within their timeout (the reconciler's)."""
    silent = lifecycle.live_runs().filter(kind=RunKind.EXTERNAL, lease_expires_at__lt=now)
    failed: list[int] = []
    timeout = float(settings.CONTROLPLANE["EXTERNAL_RUN_TIMEOUT_SECONDS"])
    for run_id in silent.values_list("pk", flat=True)[:limit]:
        with transaction.atomic():
            # Locked and re-checked: a batch that arrived since the listing keeps the run alive.
            run = silent.select_for_update().filter(pk=run_id).first()
            if run is None:
                continue
            outcome = Outcome(
                RunStatus.CANCELLED if run.status == RunStatus.CANCELLING else RunStatus.FAILED,
                None,
                ErrorKind.TIMEOUT,
                "report_timeout",
                f"no report for {timeout:g} s (last at {run.heartbeat_at}): the script stopped without "
                "ending its run",
            )
            if finish_attempt(run.pk, run.attempt, outcome) is not None:
                failed.append(run.pk)
    return failed


def revoke_tokens_of_ended_runs(event: TransitionEvent) -> None:
    """A lifecycle listener: the run-scoped tokens of a run that just ended stop working with it."""
    if event.target in TERMINAL_STATUSES and not event.sources & TERMINAL_STATUSES:
        revoke_run_tokens(event.run_id)
