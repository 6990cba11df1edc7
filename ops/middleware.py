from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import psycopg
import structlog
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.request import RawPostDataException
from django.utils import timezone
from psycopg_pool import PoolTimeout

from ops.collectors import register_web_collectors
from ops.errors import invalid_input
from ops.inputs import InvalidInput, check_pairs, text_problem
from ops.metrics import HTTP_REQUESTS_REJECTED
from ops.metrics_access import refusal
from ops.request_id import clean_request_id, enter_request, leave_request
from ops.transactions import transaction_statuses

log = structlog.get_logger(__name__)
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


class RequestIdMiddleware:
    """Binds `request_id` for the whole request and returns it as `X-Request-ID`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = clean_request_id(request.headers.get("X-Request-ID"))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        request.request_id = request_id  # type: ignore[attr-defined]
        token = enter_request(request)  # so log lines can name the authenticated user
        try:
            response = self.get_response(request)
        finally:
            leave_request(token)
            structlog.contextvars.clear_contextvars()
        response["X-Request-ID"] = request_id
        return response


class MetricsAccessMiddleware:
    """`/metrics` only for the configured token and/or networks (see ops.metrics_access); the
    first allowed scrape registers the web-state collectors, so only the web process has them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info != "/metrics":  # what URL resolution matches, prefix or not
            return self.get_response(request)
        refused = refusal(
            remote_addr=str(request.META.get("REMOTE_ADDR", "")),
            authorization=request.headers.get("Authorization", ""),
            token=settings.METRICS_TOKEN,
            networks=settings.METRICS_ALLOWED_NETWORKS,
        )
        if refused == "metrics_network":
            HTTP_REQUESTS_REJECTED.labels(reason=refused).inc()
            return JsonResponse({"detail": "Metrics are not served to this network."}, status=403)
        if refused == "metrics_token":
            HTTP_REQUESTS_REJECTED.labels(reason=refused).inc()
            response = JsonResponse({"detail": "A valid metrics bearer token is required."}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        register_web_collectors()
        return self.get_response(request)


# Statements that change nothing a re-run could duplicate; anything else counts as a write.
_NOT_WRITES = ("SELECT", "SHOW", "SET ", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK")


_REPEATABLE_WRITES: ContextVar[bool] = ContextVar("repeatable_writes", default=False)


@contextmanager
def repeatable_writes() -> Iterator[None]:
    """Writes a repeat of the request may do again without harm (a last-used timestamp): they do
    not stop the middleware from repeating a request whose connection died."""
    token = _REPEATABLE_WRITES.set(True)
    try:
        yield
    finally:
        _REPEATABLE_WRITES.reset(token)


class _WriteWatch:
    """Execute wrapper: may this request have changed data that a repeat would change again?

    A write outside a transaction counts at once, before it runs: if the connection dies under it,
    whether it committed is unknown. A write inside a transaction records that transaction's id
    instead; after a lost connection, Postgres says whether it committed (`txid_status`): one killed
    before its COMMIT was rolled back, so the request changed nothing and may be repeated."""

    def __init__(self) -> None:
        self.wrote = False
        self.transactions: set[int] = set()

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if _REPEATABLE_WRITES.get() or str(sql).lstrip().upper().startswith(_NOT_WRITES):
            return execute(sql, params, many, context)
        wrapper = context["connection"]
        if not (wrapper.in_atomic_block and wrapper.vendor == "postgresql"):
            self.wrote = True
            return execute(sql, params, many, context)
        result = execute(sql, params, many, context)  # a statement that raised left no new txid
        with wrapper.cursor() as cursor:  # a SELECT: this wrapper lets it through
            cursor.execute("SELECT txid_current()")
            self.transactions.add(int(cursor.fetchone()[0]))
        return result


DATABASE_ERROR = "controlplane.database_error"  # request.META key: the error behind a 503


def note_database_error(request: HttpRequest, error: Exception) -> None:
    request.META[DATABASE_ERROR] = error


def _held_connection_died(error: Any) -> bool:
    """The request's pooled connection was lost (terminated backend, closed socket), as opposed to
    a real outage (no connection to be had: PoolTimeout) or a query's own failure (timeout,
    deadlock), which a repeat would not cure."""
    cause = getattr(error, "__cause__", None)
    if isinstance(cause, PoolTimeout):
        return False
    if isinstance(cause, psycopg.InterfaceError):
        return True
    # No SQLSTATE: the socket broke; 57P01/57P02: the backend was terminated or crashed.
    return isinstance(cause, psycopg.OperationalError) and cause.sqlstate in (None, "57P01", "57P02")


RETRY_CONNECT_SECONDS = 2.0  # how long a repeat may wait for a fresh connection


def _all_rolled_back(transactions: set[int]) -> bool:
    """Whether every transaction the request wrote in was rolled back (asked on a fresh
    connection). A terminated backend may still be aborting its transaction ("in progress") for a
    moment: wait for it, up to RETRY_CONNECT_SECONDS. Committed, or unknown (NULL: too old to
    tell), means the request may have changed data: not repeated."""
    deadline = time.monotonic() + RETRY_CONNECT_SECONDS
    while True:
        statuses = set(transaction_statuses(transactions).values())
        if statuses == {"aborted"}:
            return True
        if "in progress" not in statuses or time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _fresh_connection_ready() -> bool:
    """Return the broken connection (the pool discards it), drain the pool and wait briefly for a
    new connection: whether the database is there at all.

    Drained, not `pool.check()`ed: connections die together (a restart, a proxy's sweep), and a
    backend signalled with the others that has not exited yet still answers a check, then dies
    under the repeat (measured: bench/db_kill_loop.py). A real outage answers within
    RETRY_CONNECT_SECONDS, not the pool's full timeout, and keeps its 503."""
    connection.close()
    pool = getattr(connection, "pool", None)  # None on SQLite and without a pool
    if pool is None:
        return True
    pool.drain()
    try:
        fresh = pool.getconn(timeout=RETRY_CONNECT_SECONDS)
    except PoolTimeout:
        return False
    pool.putconn(fresh)  # the repeat's checkout takes it: the pool was just emptied
    return True


def _replayable(request: HttpRequest) -> bool:
    """Whether the request can be handed to the view a second time: its body, if any, is read
    into memory first (a stream is consumed by the first try). Large uploads are not repeated."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return True
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        return False
    try:
        request.body  # noqa: B018 - cached on the request, so the repeat parses it again
    except RawPostDataException:
        return False  # already read as a stream (a form parsed above us): not repeatable
    return True


def _repeatable(replayable: bool, watch: _WriteWatch, error: Any) -> bool:
    """Safe to repeat: nothing was written (a read), or every write was inside a transaction that
    Postgres rolled back when the connection died. Not repeated: a write outside a transaction or
    one that committed, and a real outage, where no connection could be had."""
    if not (replayable and not watch.wrote and _held_connection_died(error)):
        return False
    if not _fresh_connection_ready():
        return False  # no connection to be had: a real outage
    if watch.transactions and not _all_rolled_back(watch.transactions):
        log.warning("database_connection_lost_after_commit", transactions=len(watch.transactions))
        return False  # its writes may have landed: the client decides
    return True


REPEATING_SINCE = "controlplane.repeating_since"  # request.META key: when the first try began


def repeating_since(request: HttpRequest) -> datetime | None:
    """On a repeat by this middleware: when the request's first try began (a view whose writes
    commit before its response, a launch, finds what that try created instead of doing it again).
    None on a first try."""
    since = request.META.get(REPEATING_SINCE)
    return since if isinstance(since, datetime) else None


# Tries of one request whose connection keeps dying under it (connections die together: a
# restart, a proxy's sweep, a kill round can reach the repeat too); a real outage stops sooner.
MAX_TRIES = 3


class DatabaseUnavailableMiddleware:
    """Turns a lost database into a short 503 instead of a 500 with a trace, and repeats (at most
    MAX_TRIES - 1 times) a request whose pooled connection died before it changed anything durably."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        replayable = _replayable(request)
        began = timezone.now()
        for tries in range(1, MAX_TRIES + 1):
            watch = _WriteWatch()
            with connection.execute_wrapper(watch):
                response = self.get_response(request)
            error = request.META.pop(DATABASE_ERROR, None)
            if response.status_code != 503 or tries == MAX_TRIES or not _repeatable(replayable, watch, error):
                break
            log.warning("database_connection_retried", path=request.path, method=request.method, tries=tries)
            request.META[REPEATING_SINCE] = began
        if tries > 1 and response.status_code == 503:
            log.warning("database_connection_retry_failed", path=request.path, tries=tries)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OperationalError | InterfaceError) or (
            isinstance(exception, DatabaseError) and "connection" in str(exception).lower()
        ):
            note_database_error(request, exception)
            log.error(
                "database_unavailable", path=request.path, error=str(exception)[:200], exc_info=exception
            )
            HTTP_REQUESTS_REJECTED.labels(reason="database_unavailable").inc()
            response = JsonResponse(
                {"detail": "The database is unavailable; try again shortly.", "code": "database_unavailable"},
                status=503,
            )
            response["Retry-After"] = "5"
            return response
        return None


class InputGuardMiddleware:
    """Refuses NUL and unpaired surrogates in the path, query string and form fields, and turns
    an InvalidInput raised by a view (an id beyond bigint, say) into the same 400 naming the field,
    for every page and endpoint at once. JSON bodies are checked by ops.parsers.SafeJSONParser."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            problem = text_problem(request.path_info)
            if problem:
                raise InvalidInput("path", problem)
            check_pairs(list(request.GET.lists()))
            # Pages only: the API takes JSON alone (ops.parsers), and parsing a form here would
            # consume the body DRF reads.
            if request.method == "POST" and request.content_type in _FORMS and not _is_api(request):
                check_pairs(list(request.POST.lists()))
        except InvalidInput as error:
            return invalid_input(request, error.field, error.message)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, InvalidInput):
            return invalid_input(request, exception.field, exception.message)
        return None
