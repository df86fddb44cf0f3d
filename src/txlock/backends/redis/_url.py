"""Redis URLs: what a manager's URL says (the server, redis-py's options, txlock's own) and
the canonical URL a manager shows and rebuilds from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from txlock._errors import ConfigurationError
from txlock._options import COMMON_OPTIONS, check_liveness, common_options, parse_seconds, redact
from txlock._url import check_url_form

__all__ = [
    "DEFAULT_LIVENESS",
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "OWN_OPTIONS",
    "REDIS_OPTIONS",
    "SCHEMES",
    "RedisUrl",
    "check_prefix",
    "client_url",
    "from_options",
    "join",
    "parse",
    "server_url",
    "with_query",
]

#: How long a hold without ``hold_timeout`` outlives its process's last heartbeat: a holder
#: killed with SIGKILL frees its locks at most this long after its last heartbeat.
DEFAULT_LIVENESS = 5.0
DEFAULT_PREFIX = "txlock:"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
SCHEMES = ("redis", "rediss", "unix", "redis+cluster")

#: Query options passed through to redis-py's ``from_url``.
REDIS_OPTIONS = (
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "client_name",
    "health_check_interval",
    "max_connections",
    "protocol",
)
#: txlock's own options (beside the common ones).
OWN_OPTIONS = ("prefix", "liveness")


class RedisUrl(NamedTuple):
    """A manager's URL, taken apart."""

    #: What redis-py connects to: the URL without txlock's options (``redis://`` for Cluster).
    redis_url: str
    #: The scheme the manager was given (``redis+cluster`` for Cluster).
    scheme: str
    #: The password, to scrub from error messages (``None``: there is none).
    secret: str | None
    #: The URL without its query, password redacted: how messages name the server.
    where: str
    #: Commands kept in flight per client (see ``DEFAULT_MAX_CONNECTIONS``).
    max_connections: int
    #: txlock's options found in the query, parsed: ``prefix``, ``liveness``, the common ones.
    options: dict[str, Any]

    @property
    def cluster(self) -> bool:
        return self.scheme == "redis+cluster"


def parse(url: str, default_max_connections: int) -> RedisUrl:
    """Take a Redis URL apart, checking its scheme and options."""
    check_url_form(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"{redact(url)!r} is not a Redis URL; use redis://, rediss://, unix:// or redis+cluster://"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    max_connections = default_max_connections
    if "max_connections" in query:
        raw = query["max_connections"]
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigurationError(
                f"max_connections must be a whole number >= 1, got {raw!r} (txlock's default is "
                f"{default_max_connections}: callers beyond it wait for a connection)"
            )
        max_connections = int(raw)
    options = common_options(query, (*REDIS_OPTIONS, *OWN_OPTIONS))
    if "prefix" in query:
        options["prefix"] = query["prefix"]
    if "liveness" in query:
        options["liveness"] = check_liveness(parse_seconds("liveness", query["liveness"], positive=True))
    for name in (*OWN_OPTIONS, *COMMON_OPTIONS):
        query.pop(name, None)
    path = parts.path
    if scheme in ("redis", "rediss") and path in ("", "/"):
        path = "/0"
    cluster = scheme == "redis+cluster"
    return RedisUrl(
        redis_url=join("redis" if cluster else scheme, parts.netloc, path, urlencode(sorted(query.items()))),
        scheme=scheme,
        secret=parts.password or None,
        where=redact(join(scheme, parts.netloc, path, "")),
        max_connections=max_connections,
        options=options,
    )


def check_prefix(prefix: object) -> str:
    """Validate the prefix of every Redis key of a manager."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"prefix {prefix!r} must not contain '{{' or '}}': they delimit the Redis Cluster hash "
            "tag that keeps every Redis key of one lock in one slot"
        )
    return prefix


def join(scheme: str, netloc: str, path: str, query: str) -> str:
    """``urlunsplit`` that keeps ``//`` before an empty host (``unix:///path``)."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def client_url(client: Any) -> str:
    """The URL of the server a caller-supplied client talks to (for display)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    host, port, db = kwargs.get("host", "?"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}" if "path" not in kwargs else f"unix://{kwargs['path']}?db={db}"


def server_url(url: RedisUrl, *, redacted: bool) -> tuple[str, list[tuple[str, str]]]:
    """The manager's URL without txlock's options, and redis-py's options from its query."""
    parts = urlsplit(url.redis_url)
    base = join(url.scheme, parts.netloc, parts.path, "")
    return (redact(base) if redacted else base), parse_qsl(parts.query, keep_blank_values=True)


def with_query(base: str, query: list[tuple[str, str]]) -> str:
    """``base`` with ``query`` appended (after the one it may already have)."""
    if not query:
        return base
    return base + ("&" if "?" in base else "?") + urlencode(query, quote_via=quote)


def from_options(url: str, options: Mapping[str, str]) -> str:
    """The URL of ``url``'s server with ``options`` as its whole query (for ``from_url``)."""
    common_options(options, allowed=(*OWN_OPTIONS, *REDIS_OPTIONS))
    parts = urlsplit(url)
    return join(parts.scheme, parts.netloc, parts.path, urlencode(list(options.items())))
