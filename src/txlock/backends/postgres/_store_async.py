"""The connections of a store for async calls.

Written once, in ``_store_async.py``; ``scripts/unasync.py`` generates the blocking twin
(``Connections`` in ``_store_sync.py``) from it, and CI checks that regenerating changes
nothing. Both run a query the same way: a connection from the caller's pool or from a
small per-process cache (at most ``MAX_CONNECTIONS`` in use, per event loop in the async
world), the tables checked (created) on first use, one retry on a fresh connection when
the server closed ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
from psycopg.rows import tuple_row

from txlock.backends.postgres._compat import AsyncSlots, async_wait_for
from txlock.backends.postgres._listener import BACKEND_PID
from txlock.backends.postgres._query import (
    MAX_CONNECTIONS,
    NO_TRANSACTION,
    Query,
    Rows,
    broken,
    ignore_notification,
    reusable,
)

if TYPE_CHECKING:
    from txlock.backends.postgres._store import Store

__all__ = ["AsyncConnections"]

AsyncLink: TypeAlias = tuple[psycopg.AsyncConnection[Any], psycopg.AsyncCursor[Any]]


class AsyncConnections:
    """The connections of one store, for async calls."""

    def __init__(self, store: Store, pool: Any) -> None:
        self.store = store
        self.pool = pool  # the caller's psycopg_pool pool, or None
        # Idle connections, each with its cursor (made once: a statement costs no new objects).
        self.idle: list[AsyncLink] = []
        self.slots = AsyncSlots(MAX_CONNECTIONS)

    def drop_idle(self) -> None:
        """Close the idle connections (the server closed them, or the store closes)."""
        with self.store.mutex:
            idle, self.idle = self.idle, []
        for conn, _ in idle:
            conn.pgconn.finish()  # no await needed to drop an idle socket

    async def run(self, query: Query) -> Any:
        """Run ``query`` (creating the tables first if needed) and what follows it; the reply."""
        store = self.store
        if not store.active:
            store.reopen()
        if not store.ready:
            store.check_version(await self.chain(store.version_query()))
        if query.listen is not None:
            await async_wait_for(query.listen)
            store.fill_session(query)
        return await self.chain(query)

    async def chain(self, query: Query) -> Any:
        """Run ``query`` and the queries its ``then`` asks for; the final reply."""
        try:
            reply = await self._round_trip(query)
            while query.then is not None:
                follow = query.then(reply)
                if not isinstance(follow, Query):
                    return follow
                query = follow
                reply = await self._round_trip(query)
            return reply
        except BaseException:
            if query.on_failure is not None:
                query.on_failure()
            raise

    async def _round_trip(self, query: Query) -> Rows:
        attempt = 0
        while True:
            link = None
            try:
                link = await self._get()
                try:
                    return await self._execute(link, query)
                finally:
                    await self._put(link)
            except Exception as exc:
                rows = self.store.failed(exc, query, attempt, link is not None and broken(link[0]))
                if rows is not None:
                    return rows
            attempt += 1

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(**self.store.bounded_connect_args())
        conn.add_notify_handler(ignore_notification)
        return conn

    async def _get(self) -> AsyncLink:
        if self.pool is not None:
            conn: psycopg.AsyncConnection[Any] = await self.pool.getconn()
            return conn, conn.cursor(row_factory=tuple_row)
        await self.slots.acquire()
        try:
            with self.store.mutex:
                if self.idle:
                    return self.idle.pop()
            conn = await self._connect()
        except BaseException:
            self.slots.release()
            raise
        return conn, conn.cursor(row_factory=tuple_row)

    async def _put(self, link: AsyncLink) -> None:
        conn = link[0]
        if self.pool is not None:
            await self.pool.putconn(conn)
            return
        try:
            if reusable(conn):
                with self.store.mutex:
                    if self.store.active:
                        self.idle.append(link)
                        return
            await conn.close()
        finally:
            self.slots.release()

    async def _execute(self, link: AsyncLink, query: Query) -> Rows:
        guard = self.store.deadline_guard(link[0])
        try:
            return await self._statements(link, query)
        finally:
            if guard is not None:
                guard.cancel()

    async def _statements(self, link: AsyncLink, query: Query) -> Rows:
        conn, cursor = link
        store = self.store
        async with conn.transaction() if len(query.statements) > 1 or not conn.autocommit else NO_TRANSACTION:
            direct = store.kinds.get(conn)
            if direct is None:
                probe = await conn.execute(BACKEND_PID, prepare=False)
                direct = store.classify(conn, await probe.fetchone())
            prepare = direct and store.prepare
            for statement in query.statements:
                await cursor.execute(statement, query.params, prepare=prepare)
            return await cursor.fetchall()  # every query ends with a statement that returns rows
