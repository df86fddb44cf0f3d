"""``txlock doctor``'s checks of a PostgreSQL store: server version, clock skew, the
schema version, whether ``LISTEN`` works (no transaction pooler), privileges and the
server's timeouts.

Every statement here reads, on a connection of its own made like the store's
(``Store.bounded_connect_args``), without prepared statements (a pooler may sit in
between). The manager's own connections are not used for this: their first statement
creates the tables when they are missing, and doctor changes nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from txlock._doctor import FAIL, PASS, WARN, Check, Findings, clock_skew, milliseconds, percentile, skew_check
from txlock.backends.postgres._listener import BACKEND_PID, POLL_INTERVAL
from txlock.backends.postgres._statements import PRE_RELEASE_TABLE
from txlock.backends.postgres._store import SCHEMA_VERSION, Store
from txlock.backends.postgres.manager import PostgresLockManager

__all__ = ["OLDEST_SUPPORTED", "checks"]

#: Older servers are out of community support and untested with txlock.
OLDEST_SUPPORTED = 13
#: The settings that can end txlock's sessions or statements.
TIMEOUTS = ("idle_session_timeout", "idle_in_transaction_session_timeout", "statement_timeout", "lock_timeout")
#: Privileges txlock needs on each of its tables.
TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "_waiters": ("SELECT", "INSERT", "UPDATE", "DELETE"),
}


def checks(manager: PostgresLockManager, scratch: str) -> Findings:
    """Every check of this module, in the order doctor prints them; ``blocker`` when the
    tables do not exist yet (the manager's first call would create them)."""
    store = manager._store
    with _connection(store) as conn:
        version = _server_version(conn)
        skew, uncertainty = clock_skew(lambda: _one(conn, "SELECT extract(epoch FROM clock_timestamp())::float8"),
                                       "PostgreSQL server")
        schema, blocker = _schema(conn, store)
        absent = blocker is not None and "do not exist" in blocker
        found = [
            version,
            skew_check(skew, uncertainty, "PostgreSQL server", "clock_timestamp()"),
            schema,
            _listen(conn, store, manager.liveness),
            _privileges(conn, store, tables_exist=not absent),
            _timeouts(conn, manager.liveness),
        ]
        if blocker is not None:
            found.insert(0, _round_trip(conn))
    return Findings(found, blocker)


@contextlib.contextmanager
def _connection(store: Store) -> Iterator[psycopg.Connection[Any]]:
    """A connection made like the store's, closed at the end; driver errors translated."""
    try:
        conn = psycopg.connect(**store.bounded_connect_args())
    except psycopg.Error as exc:
        raise store.error(exc) from exc
    conn.prepare_threshold = None  # never prepare: a transaction pooler may be in between
    try:
        yield conn
    except psycopg.Error as exc:
        raise store.error(exc) from exc
    finally:
        conn.close()


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params, prepare=False).fetchone()
    return None if row is None else row[0]


def _round_trip(conn: psycopg.Connection[Any]) -> Check:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        _one(conn, "SELECT 1")
        samples.append(time.perf_counter() - start)
    return Check("round-trip", PASS, f"median of 5 SELECT 1 on doctor's own connection: "
                 f"{milliseconds(percentile(samples, 0.5))} (is_locked would create the missing tables)")


def _server_version(conn: psycopg.Connection[Any]) -> Check:
    number = int(_one(conn, "SELECT current_setting('server_version_num')"))
    text = str(_one(conn, "SELECT current_setting('server_version')"))
    if number < OLDEST_SUPPORTED * 10000:
        return Check("server-version", WARN, f"PostgreSQL {text}: out of community support and untested with "
                     "txlock", f"upgrade to PostgreSQL {OLDEST_SUPPORTED} or later")
    return Check("server-version", PASS, f"PostgreSQL {text}")


def _schema(conn: psycopg.Connection[Any], store: Store) -> tuple[Check, str | None]:
    name = f"{store.schema}.{store.table}"
    if _one(conn, store.statements.pre_release, {"legacy": store.statements.pre_release_table}) is not None:
        return Check(
            "schema", FAIL, f"schema {store.schema!r} holds the tables of a pre-release txlock "
            f"({store.schema}.{PRE_RELEASE_TABLE}): txlock refuses them",
            f"with no lock held, DROP TABLE {store.schema}.{PRE_RELEASE_TABLE}, {name}, {name}_waiters",
        ), "the tables of a pre-release txlock are in the way"
    try:
        version = _one(conn, store.statements.version, {"name": store.table})
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName):
        version = None
    except pg_errors.InsufficientPrivilege as exc:
        return Check(
            "schema", FAIL, f"cannot read {store.schema}.txlock_schema: {' '.join(str(exc).split())}",
            f"GRANT USAGE ON SCHEMA {store.schema} and SELECT, UPDATE ON {store.schema}.txlock_schema to this user",
        ), None
    if version is None:
        creatable, where = _may_create(conn, store)
        if creatable:
            return Check("schema", PASS, f"txlock's tables ({name}, {name}_waiters, {store.schema}.txlock_schema) "
                         f"do not exist yet; this user may create them ({where}): txlock does on first use"
                         ), f"the tables {name} do not exist yet"
        return Check(
            "schema", FAIL, f"txlock's tables ({name}...) do not exist and this user may not create them ({where})",
            f"have an administrator run any txlock call once with this URL (it creates schema version "
            f"{SCHEMA_VERSION}), or GRANT CREATE ON {'DATABASE' if 'database' in where else 'SCHEMA'} to this user",
        ), f"the tables {name} do not exist yet"
    if int(version) > SCHEMA_VERSION:
        return Check("schema", FAIL, f"{name} has schema version {version}, made by a newer txlock (this one knows "
                     f"{SCHEMA_VERSION})", "upgrade txlock on this host"), None
    missing = [
        table for table in (store.table, store.table + "_waiters")
        if _one(conn, "SELECT to_regclass(%s)::text", [sql.Identifier(store.schema, table).as_string(None)]) is None
    ]
    if missing:
        return Check(
            "schema", FAIL, f"{store.schema}.txlock_schema names {name} (version {version}) but "
            f"{', '.join(missing)} is missing: every call fails", f"with no lock held, delete the row "
            f"of {store.table!r} from {store.schema}.txlock_schema (txlock then creates the tables again)",
        ), None
    return Check("schema", PASS, f"{name} and {name}_waiters exist, schema version {version} (current)"), None


def _may_create(conn: psycopg.Connection[Any], store: Store) -> tuple[bool, str]:
    if _one(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", [store.schema]):
        allowed = bool(_one(conn, "SELECT has_schema_privilege(%s, 'CREATE')", [store.schema]))
        return allowed, f"CREATE on the existing schema {store.schema}"
    allowed = bool(_one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')"))
    return allowed, f"CREATE on the database, for the new schema {store.schema}"


def _listen(conn: psycopg.Connection[Any], store: Store, liveness: float) -> Check:
    announced = conn.info.backend_pid
    actual = _one(conn, BACKEND_PID)
    if actual == announced:
        return Check("listen", PASS, "a direct connection (the backend pid announced at connect is "
                     "pg_backend_pid()): txlock LISTENs, and waiters are woken by NOTIFY within milliseconds")
    return Check(
        "listen", WARN, f"LISTEN is not possible: the connection goes through a proxy (pgbouncer?): it announced "
        f"backend pid {announced}, the server says {actual}. txlock detects this on each new connection and then "
        f"neither LISTENs (a notification would reach whichever client holds the server connection) nor prepares "
        f"statements: waiters poll every {POLL_INTERVAL * 1000:g} ms, and the queue tickets of a killed waiter "
        f"count until the liveness window ({liveness:g} s) ends. Exclusion and fencing stay correct",
        "for wake-ups within milliseconds, give txlock a direct connection to PostgreSQL (it needs few: a small "
        "cache per process and one LISTEN connection); behind the pooler each waiter costs a statement every "
        f"{POLL_INTERVAL * 1000:g} ms and a hand-off up to {POLL_INTERVAL * 1000:g} ms more",
    )


def _privileges(conn: psycopg.Connection[Any], store: Store, *, tables_exist: bool) -> Check:
    user = str(_one(conn, "SELECT current_user"))
    if not tables_exist:
        allowed, where = _may_create(conn, store)
        if allowed:
            return Check("privileges", PASS, f"user {user!r} has {where} (the tables do not exist yet)")
        return Check("privileges", FAIL, f"user {user!r} lacks {where}, and the tables do not exist yet",
                     "have an administrator create the tables (run txlock once with an owner's URL), then "
                     f"GRANT USAGE ON SCHEMA {store.schema} and SELECT, INSERT, UPDATE, DELETE on its tables")
    lacking = []
    if not _one(conn, "SELECT has_schema_privilege(%s, 'USAGE')", [store.schema]):
        lacking.append(f"USAGE on schema {store.schema}")
    wanted = [(store.table + suffix, privileges) for suffix, privileges in TABLE_PRIVILEGES.items()]
    wanted.append(("txlock_schema", ("SELECT", "UPDATE")))  # the janitor folds tokens into hwm
    for table, privileges in wanted:
        qualified = sql.Identifier(store.schema, table).as_string(None)
        for privilege in privileges:
            if not _one(conn, "SELECT has_table_privilege(%s, %s)", [qualified, privilege]):
                lacking.append(f"{privilege} on {store.schema}.{table}")
    if lacking:
        return Check("privileges", FAIL, f"user {user!r} lacks {', '.join(lacking)}: txlock's calls fail",
                     "GRANT " + "; GRANT ".join(lacking) + f" TO {user}")
    return Check("privileges", PASS, f"user {user!r} may read and write txlock's tables in schema {store.schema}")


def _timeouts(conn: psycopg.Connection[Any], liveness: float) -> Check:
    rows = conn.execute(
        "SELECT name, setting::float8 FROM pg_settings WHERE name = ANY(%s)", [list(TIMEOUTS)], prepare=False
    ).fetchall()
    values = {str(name): float(setting) / 1000 for name, setting in rows}  # every one is in ms
    shown = ", ".join(f"{name} = {values[name]:g} s" if values[name] else f"{name} = 0 (off)"
                      for name in TIMEOUTS if name in values)
    beat = float(f"{liveness / 3:.3g}")
    problems, advice = [], []
    idle = values.get("idle_session_timeout", 0.0)
    if idle:
        problems.append(
            f"idle_session_timeout ends sessions idle for {idle:g} s: txlock's LISTEN connection is idle between "
            f"notifications, so it is cut and reopened (waiters re-check; meanwhile a killed waiter's queue tickets "
            f"count up to {liveness:g} s), and cached connections idle longer are replaced (a logged warning"
            + (f"; with the heartbeat every {beat:g} s, on every beat" if idle < beat else "") + "). Holds are "
            "rows, not sessions: none ends"
        )
        advice.append("ALTER ROLE <txlock's user> SET idle_session_timeout = 0")
    for name in ("statement_timeout", "lock_timeout"):
        limit = values.get(name, 0.0)
        if limit and limit < beat:
            problems.append(
                f"{name} = {limit:g} s is below the heartbeat interval ({beat:g} s): a heartbeat or release that "
                f"waits on a busy row longer is cancelled (BackendError); heartbeats failing for {liveness:g} s end "
                "the process's holds"
            )
            advice.append(f"ALTER ROLE <txlock's user> SET {name} = '{max(30, int(liveness * 3))}s' (or 0)")
    if problems:
        return Check("timeouts", WARN, f"{shown}. " + " ".join(problems), "; ".join(advice))
    return Check("timeouts", PASS, f"{shown}: none cuts a hold, a heartbeat (every {beat:g} s) or the LISTEN "
                 "connection (txlock never stays idle inside a transaction)")
