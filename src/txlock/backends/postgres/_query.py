"""One round trip's work, and what the two generated connection modules share."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import psycopg

__all__ = ["MAX_CONNECTIONS", "NO_TRANSACTION", "Query", "Rows", "broken", "ignore_notification", "reusable"]

#: Connections kept per process and store, for each world (per event loop for async).
MAX_CONNECTIONS = 8

Rows: TypeAlias = list[tuple[Any, ...]]

NO_TRANSACTION = contextlib.nullcontext()  # reusable, sync and async
_IDLE = psycopg.pq.TransactionStatus.IDLE


class Query:
    """One round trip: statements (one, or several in a transaction) and their parameters.

    Args:
        listen: a subscription to wait for first (the LISTEN that must be active before a
            waiter looks at the table); its session lock then fills the ``session`` parameter.
        missing_ok: answer no rows when the tables do not exist yet (instead of raising).
        then: what follows the reply: another query to run (its reply follows in turn), or
            the final reply. ``None``: the rows are the reply.
        on_failure: called when the query (or one that follows it) fails or is interrupted.
    """

    __slots__ = ("listen", "missing_ok", "on_failure", "params", "statements", "then")

    def __init__(
        self,
        statements: Sequence[str],
        params: Mapping[str, Any],
        *,
        listen: concurrent.futures.Future[bool] | None = None,
        missing_ok: bool = False,
        then: Callable[[Rows], Any] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.statements = statements
        self.params = dict(params)
        self.listen = listen
        self.missing_ok = missing_ok
        self.then = then
        self.on_failure = on_failure


def ignore_notification(_note: object) -> None:
    """Stray notifications on a statement connection (pgbouncer) must not pile up."""


def reusable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return not conn.closed and conn.pgconn.transaction_status == _IDLE


def broken(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return bool(conn.closed or getattr(conn, "broken", False))
