"""The PostgreSQL backend: locks shared by every process on every host that reaches one database.

Holds are rows of a table (``txlock.locks`` by default) judged by the *server's* clock:
acquire, release, extend and inspect are each one SQL statement. Fencing tokens are seeded
from the server's clock and kept per key (never regressing, without any WAL write), waiters
sleep on ``LISTEN`` (one listening connection per process and database), and they are
served in arrival order through a small queue table: the releasing statement hands the lock
straight to the oldest queued call and its ``NOTIFY`` carries the grant. Holds without
``hold_timeout`` last a liveness window renewed by one heartbeat statement per process, so
they end a bounded time after their process dies, also behind a transaction-pooling proxy
such as pgbouncer.

The rooms of this package:

* ``manager.py``: :class:`PostgresLockManager`, its options and its primitives (each
  builds one :class:`~txlock.backends.postgres._query.Query` and reads its reply);
* ``sql/``: every statement and the schema, as ``.sql`` files (``_statements.py`` loads
  them and fills in the quoted table names);
* ``_store.py``: what the managers of a process share per database and table (the
  heartbeat, the janitor, the schema check, the translation of driver errors);
* ``_store_async.py``: the connections and the way a query runs, written once;
  ``_store_sync.py`` is generated from it by ``scripts/unasync.py``;
* ``_listener.py``: the LISTEN connection's thread and the waiters it wakes;
* ``_config.py``: URLs, conninfo and options.
"""

from txlock.backends.postgres._config import DEFAULT_LIVENESS
from txlock.backends.postgres._store import SCHEMA_VERSION
from txlock.backends.postgres.manager import MAX_KEY_CHARS, PostgresLockManager

__all__ = ["DEFAULT_LIVENESS", "MAX_KEY_CHARS", "SCHEMA_VERSION", "PostgresLockManager"]
