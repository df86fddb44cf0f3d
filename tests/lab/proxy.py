"""A small TCP fault proxy on loopback: forwards bytes both ways, and on demand lets a
request through but loses its reply.

The point is the *ambiguous reply*: the server applied a command (granted a lock) and the
client never learns it. :class:`FaultProxy` listens on ``127.0.0.1:<free port>`` and
forwards every connection to one target. Armed with :meth:`FaultProxy.drop_next_reply`, it
marks the next connection whose client sends a request chunk (one that ``when`` accepts,
if given), forwards that chunk to the server, and then swallows the first chunk the
server sends back on that connection. Then it either cuts the client's connection (the
client sees a connection error at once, ``cut=True``) or keeps it open and silent (the
client sees nothing until its own timeout, ``cut=False``). The server side of a cut
connection is closed too, as a client that vanished would leave it.

The proxy runs an asyncio loop in one daemon thread; every public method is thread-safe.

Limits (it is protocol-agnostic, so it reasons in chunks, not in messages):

* A "request" is one chunk read from the client (up to 64 KiB). Drivers send one command
  in one write, so a short command is one chunk; a request split over several chunks is
  matched (``when``) on each chunk separately, and a pipeline of several commands in one
  chunk counts as one request.
* The "reply" is the first chunk the server sends after the marked request. A reply that
  the server flushes in several chunks is lost whole only when the connection is cut
  (``cut=True``); with ``cut=False`` every later chunk of that connection is swallowed
  too (it stays silent until the client gives up).
* Bytes the server pushes without being asked (pub/sub messages, PostgreSQL
  notifications) count as the reply if they come first on a marked connection; give
  ``when`` to mark only the connection that carries the request of interest.
* Loopback only: the target must be a 127.0.0.0/8 address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["FaultProxy"]

#: The most bytes read from either side in one go.
CHUNK = 65536


class _Link:
    """One proxied connection: the client's and the server's streams, and its fault state."""

    __slots__ = ("client", "marked", "server", "silent")

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.marked: bool | None = None  # None: forward; True: cut at the reply; False: stay silent
        self.silent = False  # the reply was swallowed and the connection kept open: swallow the rest

    def abort(self) -> None:
        """Close both sides at once, without flushing."""
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class FaultProxy:
    """A loopback TCP proxy to ``(host, port)`` that can lose replies on demand.

    Use it as a context manager (or call :meth:`start` and :meth:`close`); clients connect
    to :attr:`port` on ``127.0.0.1``.
    """

    def __init__(self, host: str, port: int) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the fault proxy only forwards to loopback addresses, not {host!r}")
        self.target = (host, port)
        self.port = 0
        self._mutex = threading.Lock()
        self._armed = 0
        self._cut = True
        self._when: Callable[[bytes], bool] | None = None
        self._dropped = 0
        self._marked = 0
        self._connections = 0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    # ------------------------------------------------------------------ control (any thread)

    def drop_next_reply(self, times: int = 1, *, cut: bool = True, when: Callable[[bytes], bool] | None = None) -> None:
        """Lose the replies of the next ``times`` requests (chunks ``when`` accepts, or any).

        ``cut=True`` closes each such connection once its reply is swallowed; ``cut=False``
        keeps it open and silent. Replaces an earlier arming; :meth:`pass_all` disarms.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._mutex:
            self._armed, self._cut, self._when = times, cut, when

    def pass_all(self) -> None:
        """Forward everything from now on (requests already marked still lose their reply)."""
        with self._mutex:
            self._armed, self._when = 0, None

    def cut_silent(self) -> int:
        """Close every connection kept silent after a lost reply (frees a client stuck on
        one); how many were closed."""
        loop = self._loop
        if loop is None:
            return 0

        def close() -> int:
            stuck = [link for link in self._links if link.silent or link.marked is False]
            for link in stuck:
                link.abort()
            return len(stuck)

        async def run() -> int:
            return close()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    @property
    def dropped(self) -> int:
        """Replies swallowed so far."""
        with self._mutex:
            return self._dropped

    @property
    def marked(self) -> int:
        """Requests marked so far (their replies are lost when they come)."""
        with self._mutex:
            return self._marked

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._mutex:
            return self._connections

    @property
    def armed(self) -> int:
        """Requests still to be marked."""
        with self._mutex:
            return self._armed

    # ------------------------------------------------------------------ lifetime

    def start(self) -> FaultProxy:
        """Start listening (returns once the port is bound)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # reported to start() if it happens before ready
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fault proxy -> {self.target[1]}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"the fault proxy did not start: {failure[:1]}")
        return self

    def close(self) -> None:
        """Stop listening and close every connection."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop's side

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            for link in list(self._links):
                link.abort()
            if self._tasks:  # their reads end now that both sides are closed
                await asyncio.wait(list(self._tasks), timeout=5)
            for task in list(self._tasks):
                task.cancel()  # _accept absorbs the cancellation: nothing is left pending
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        with self._mutex:
            self._connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._requests(link, reader), self._replies(link, up_reader))
        except asyncio.CancelledError:
            pass  # the proxy is closing; the streams' callback must not see a cancelled task
        finally:
            self._links.discard(link)
            link.abort()

    def _mark(self, link: _Link, chunk: bytes) -> None:
        """Mark ``link`` if the proxy is armed and ``chunk`` is a request it aims at."""
        with self._mutex:
            if self._armed <= 0 or link.marked is not None:
                return
            when = self._when
            if when is not None and not when(chunk):
                return
            self._armed -= 1
            self._marked += 1
            link.marked = self._cut

    async def _requests(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Client -> server: forward every chunk, marking the connection when armed."""
        try:
            while chunk := await reader.read(CHUNK):
                self._mark(link, chunk)
                link.server.write(chunk)
                await link.server.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.abort()

    async def _replies(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Server -> client: forward every chunk, unless the connection is marked."""
        try:
            while chunk := await reader.read(CHUNK):
                if link.silent:
                    continue
                if link.marked is not None:
                    with self._mutex:
                        self._dropped += 1
                    if link.marked:
                        break  # cut: the finally below closes both sides
                    link.silent = True
                    continue
                link.client.write(chunk)
                await link.client.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.abort()
