"""The SQLite backend: locks shared by the processes of one host through one database file.

It is also the embedded default store: :func:`txlock.from_url` with no URL (and the CLI
without ``--url``) uses a file in the user's state directory
(:func:`txlock._options.default_sqlite_path`), unless ``$TXLOCK_URL`` says otherwise.

``manager.py``
    :class:`SQLiteLockManager`: the primitives (each returns a request whose work names an
    operation) and the one sync and one async transport that run them.
``_operations.py``
    The operations: the statements each runs on one connection, and the raw reply.
``_schema.py``
    What a txlock database is: the schema, the statements, the checks a file passes before
    txlock writes to it.
``_database.py``
    What one process knows about one database: its connections, the proof of life of its
    process-bound holds, its waiters and the release signals that wake them; reset at fork.

See ``docs/sqlite.md`` for the full story.
"""

from txlock.backends.sqlite._schema import SCHEMA_VERSION
from txlock.backends.sqlite.manager import SQLiteLockManager

__all__ = ["SCHEMA_VERSION", "SQLiteLockManager"]
