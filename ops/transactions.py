"""What Postgres says about a transaction whose connection was lost before its answer came back.

A COMMIT can reach the server and its answer be lost with the connection: the client sees an
error, yet the transaction committed. Whoever wrote in it noted its id (`txid_current()`) and asks
here, on a connection other than the lost one, before doing the writes again: the web middleware
(ops.middleware) before repeating a request, the supervisor's writer (workers.writer) before
writing a batch again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from django.db import connection

# txid_status's answers; None: too old to tell (its commit status was truncated away).
TransactionStatus = Literal["committed", "aborted", "in progress"] | None


def transaction_statuses(txids: Iterable[int]) -> dict[int, TransactionStatus]:
    """`txid_status` of each transaction, asked on the default connection: the caller makes sure
    it is not the one that was lost (closed, so this takes a fresh one). A transaction whose
    backend is still going away may read "in progress" for a moment: ask again later."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT t, txid_status(t) FROM unnest(%s::bigint[]) AS t", [sorted(set(txids))])
        return {int(txid): status for txid, status in cursor.fetchall()}
