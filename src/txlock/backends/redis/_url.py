"""Redis URLs: what a manager's URL says (the server, redis-py's options, txlock's own) and
the canonical URL a manager shows and rebuilds from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from txlock._errors import ConfigurationError
from txlock._options import COMMON_OPTIONS, check_liveness, common_options, parse_seconds, redact
from txlock._url import check_url_form

__all__ = [
    "DEFAULT_LIVENESS",
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "DEFAULT_WAIT_TIMEOUT",
    "OWN_OPTIONS",
    "REDIS_OPTIONS",
    "SCHEMES",
    "SENTINEL_OPTIONS",
    "SENTINEL_SCHEMES",
    "RedisUrl",
    "SentinelTarget",
    "check_prefix",
    "check_wait_replicas",
    "check_wait_timeout",
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
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel", "rediss+sentinel")
#: The schemes of Redis Sentinel URLs (``rediss+sentinel``: TLS to the servers and the sentinels).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: The port of a sentinel whose address in the URL has none.
DEFAULT_SENTINEL_PORT = 26379
#: How long a grant waits for its replicas (``wait_replicas``) unless ``wait_timeout`` says otherwise.
DEFAULT_WAIT_TIMEOUT = 1.0

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
#: Options of Sentinel URLs only: the credentials of the sentinels themselves.
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
#: txlock's own options (beside the common ones).
OWN_OPTIONS = ("prefix", "liveness", "wait_replicas", "wait_timeout")


class SentinelTarget(NamedTuple):
    """Where a Sentinel URL points: the sentinels, the service they watch, how to talk to it."""

    #: The sentinels' addresses, in the URL's order.
    sentinels: tuple[tuple[str, int], ...]
    #: The name Sentinel knows the primary by (``sentinel monitor <name> ...``).
    service: str
    #: A ``redis://`` (or ``rediss://``) URL without a host carrying the servers' credentials,
    #: database and redis-py options, for redis-py's ``parse_url``.
    server_url: str
    #: ``username`` / ``password`` of the sentinels themselves (``sentinel_username`` / ``sentinel_password``).
    sentinel_auth: dict[str, str]


class RedisUrl(NamedTuple):
    """A manager's URL, taken apart."""

    #: What redis-py connects to: the URL without txlock's options (``redis://`` for Cluster;
    #: for Sentinel, the canonical Sentinel URL, see ``sentinel``).
    redis_url: str
    #: The scheme the manager was given (``redis+cluster`` for Cluster).
    scheme: str
    #: The passwords, to scrub from error messages (empty: there are none).
    secrets: tuple[str, ...]
    #: The URL without its query, password redacted: how messages name the server.
    where: str
    #: Commands kept in flight per client (see ``DEFAULT_MAX_CONNECTIONS``).
    max_connections: int
    #: txlock's options found in the query, parsed: ``prefix``, ``liveness``, the common ones.
    options: dict[str, Any]
    #: The sentinels and service of a ``redis+sentinel://`` URL (``None`` for the others).
    sentinel: SentinelTarget | None = None

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
            f"{redact(url)!r} is not a Redis URL; use redis://, rediss://, unix://, redis+cluster:// or "
            "redis+sentinel://"
        )
    sentinel = scheme in SENTINEL_SCHEMES
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
    allowed = (*REDIS_OPTIONS, *OWN_OPTIONS, *(SENTINEL_OPTIONS if sentinel else ()))
    options = common_options(query, allowed)
    if "prefix" in query:
        options["prefix"] = query["prefix"]
    if "liveness" in query:
        options["liveness"] = check_liveness(parse_seconds("liveness", query["liveness"], positive=True))
    if "wait_replicas" in query:
        options["wait_replicas"] = check_wait_replicas(query["wait_replicas"])
    if "wait_timeout" in query:
        options["wait_timeout"] = check_wait_timeout(parse_seconds("wait_timeout", query["wait_timeout"]))
    for name in (*OWN_OPTIONS, *COMMON_OPTIONS):
        query.pop(name, None)
    path = parts.path
    if scheme in ("redis", "rediss") and path in ("", "/"):
        path = "/0"
    target = None
    if sentinel:
        target, path = _sentinel_target(url, scheme, parts.netloc, path, query)
    cluster = scheme == "redis+cluster"
    found = (parts.password, _password(url), query.get("sentinel_password"))
    secrets = tuple(dict.fromkeys(secret for secret in found if secret))
    return RedisUrl(
        redis_url=join("redis" if cluster else scheme, parts.netloc, path, urlencode(sorted(query.items()))),
        scheme=scheme,
        secrets=secrets,
        where=redact(join(scheme, parts.netloc, path, "")),
        max_connections=max_connections,
        options=options,
        sentinel=target,
    )


def _password(url: str) -> str | None:
    """The password in a URL's user information (percent-decoded), if any."""
    netloc = urlsplit(url).netloc
    userinfo, at, _ = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return unquote(userinfo.partition(":")[2]) or None


def _sentinel_target(
    url: str, scheme: str, netloc: str, path: str, query: dict[str, str]
) -> tuple[SentinelTarget, str]:
    """Read ``redis+sentinel://[user:password@]host1:port1,host2:port2/service[/db]``; the
    target and the canonical path (``/service/db``)."""
    example = "redis+sentinel://host1:26379,host2:26379/service_name[/db]"
    userinfo, at, hosts = netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        address = _sentinel_address(item.strip())
        if address is None:
            raise ConfigurationError(
                f"{redact(url)!r}: {item.strip()!r} is not a sentinel address (host or host:port); use {example}"
            )
        sentinels.append(address)
    names = [unquote(name) for name in path.split("/")[1:]]
    if not names or not names[0] or len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
        raise ConfigurationError(f"{redact(url)!r} must name the service Sentinel monitors (and a db); use {example}")
    if len(names) == 2 and "db" in query and query["db"] != names[1]:
        raise ConfigurationError(f"{redact(url)!r} names db {names[1]} in its path and db={query['db']} in its query")
    db = names[1] if len(names) == 2 else query.get("db", "0")
    if not db.isdigit():
        raise ConfigurationError(f"db={db!r} must be a whole number >= 0")
    query.pop("db", None)
    auth = {name.removeprefix("sentinel_"): query[name] for name in SENTINEL_OPTIONS if query.get(name)}
    servers = {name: value for name, value in query.items() if name not in SENTINEL_OPTIONS}
    server_scheme = "rediss" if scheme == "rediss+sentinel" else "redis"
    credentials = f"{userinfo}@" if at else ""
    server_url = join(server_scheme, credentials, f"/{db}", urlencode(sorted(servers.items())))
    target = SentinelTarget(tuple(sentinels), names[0], server_url, auth)
    return target, f"/{quote(names[0], safe='')}/{db}"


def _sentinel_address(item: str) -> tuple[str, int] | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host, port); ``None`` if malformed."""
    if item.startswith("["):
        host, close, rest = item[1:].partition("]")
        if not close or not host or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else str(DEFAULT_SENTINEL_PORT)
    else:
        host, _, port = item.partition(":")
        port = port or str(DEFAULT_SENTINEL_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_wait_replicas(value: object) -> int:
    """Validate ``wait_replicas``: how many replicas must confirm a grant (0: none)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"wait_replicas={value!r} must be a whole number >= 0 (0: do not wait for replicas)")
    return value


def check_wait_timeout(value: object) -> float:
    """Validate ``wait_timeout``: the longest a grant waits for its replicas, in seconds."""
    if value is None:
        raise ConfigurationError("wait_timeout must be a number of seconds > 0 (a grant cannot wait forever)")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"wait_timeout={value!r} must be a finite number of seconds > 0")
    return float(value)


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
    query = parse_qsl(parts.query, keep_blank_values=True)
    if redacted:
        query = [(name, "***" if name == "sentinel_password" and value else value) for name, value in query]
    return (redact(base) if redacted else base), query


def with_query(base: str, query: list[tuple[str, str]]) -> str:
    """``base`` with ``query`` appended (after the one it may already have)."""
    if not query:
        return base
    return base + ("&" if "?" in base else "?") + urlencode(query, quote_via=quote)


def from_options(url: str, options: Mapping[str, str]) -> str:
    """The URL of ``url``'s server with ``options`` as its whole query (for ``from_url``)."""
    sentinel = urlsplit(url).scheme.lower() in SENTINEL_SCHEMES
    common_options(options, allowed=(*OWN_OPTIONS, *REDIS_OPTIONS, *(SENTINEL_OPTIONS if sentinel else ())))
    parts = urlsplit(url)
    return join(parts.scheme, parts.netloc, parts.path, urlencode(list(options.items())))
