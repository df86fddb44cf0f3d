"""The PostgreSQL backend's configuration: URLs and libpq conninfo, txlock's options,
identifiers, and keeping the password out of every text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg

from txlock._errors import ConfigurationError
from txlock._options import common_options, parse_bool, parse_seconds, redact
from txlock._url import check_url_form

__all__ = [
    "DEFAULT_LIVENESS",
    "LIBPQ_KEYWORDS",
    "check_identifier",
    "conninfo_url",
    "parse_options",
    "pool_conninfo",
    "redact_text",
    "scrub",
    "split_url",
    "unsplit",
]

#: Default liveness window of a hold without ``hold_timeout``: how long it outlives the
#: last heartbeat of its process (see docs/postgres.md for why 10 s here, 5 s in Redis).
DEFAULT_LIVENESS = 10.0

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OPTIONS = ("schema", "table", "prefix", "liveness", "durable")
#: libpq's own parameters: they go to the driver, every other URL option is txlock's.
LIBPQ_KEYWORDS = frozenset(default.keyword.decode() for default in psycopg.pq.Conninfo.get_defaults())


def check_identifier(name: str, value: object, limit: int) -> str:
    """``value`` if it is a plain SQL identifier of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not _IDENTIFIER.match(value) or len(value) > limit:
        raise ConfigurationError(
            f"{name}={value!r} is not a plain SQL identifier: use letters, digits and _ (not first),"
            f" at most {limit} characters"
        )
    return value


def scrub(text: str, conninfo: Mapping[str, str]) -> str:
    """``text`` with the connection's password (if any) replaced by ``***``."""
    password = conninfo.get("password")
    return text.replace(password, "***") if password else text


def conninfo_url(conninfo: Mapping[str, str], *, hide: bool) -> str:
    """A ``postgresql://`` URL for a libpq parameter dict (password ``***`` when ``hide``)."""
    params = dict(conninfo)
    user = params.pop("user", "")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = params.pop("dbname", "")
    netloc = ""
    if user:
        netloc = quote(user, safe="")
        if password is not None:
            netloc += ":" + ("***" if hide else quote(password, safe=""))
        netloc += "@"
    elif password is not None:
        params["password"] = "***" if hide else password
    if host and (host.startswith("/") or "," in host or ":" in host):
        params["host"] = host
    else:
        netloc += host
        if port:
            netloc += f":{port}"
    if port and "host" in params:
        params["port"] = port
    return unsplit("postgresql", netloc, "/" + quote(dbname, safe="") if dbname else "", urlencode(params))


def unsplit(scheme: str, netloc: str, path: str, query: str) -> str:
    """A URL from its parts. Not ``urlunsplit``: it drops the ``//`` of a host-less URL
    (``postgresql:///db``, the local socket), which libpq then reads as a conninfo string."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def parse_options(ours: Mapping[str, str]) -> dict[str, Any]:
    """Parse txlock's URL options (not libpq's) into keyword arguments of the manager."""
    kwargs = common_options(ours, allowed=_OPTIONS)
    for name in ("schema", "table", "prefix"):
        if name in ours:
            kwargs[name] = ours[name]
    if "durable" in ours:
        kwargs["durable"] = parse_bool("durable", ours["durable"])
    if "liveness" in ours:
        kwargs["liveness"] = parse_seconds("liveness", ours["liveness"], positive=True) or DEFAULT_LIVENESS
    return kwargs


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """Separate txlock's options from a ``postgresql://`` URL: (what libpq gets, keyword arguments)."""
    check_url_form(url)
    if "://" not in url:
        return url, {}  # a key=value conninfo string: libpq's only
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name not in LIBPQ_KEYWORDS}
    if not ours:
        return url, {}
    libpq = urlencode([(name, value) for name, value in query if name in LIBPQ_KEYWORDS])
    return unsplit(parts.scheme, parts.netloc, parts.path, libpq), parse_options(ours)


def pool_conninfo(pool: Any) -> str | None:
    """The conninfo string of a caller's psycopg_pool pool, if it has one."""
    if pool is None:
        return None
    conninfo = getattr(pool, "conninfo", None)
    return conninfo if isinstance(conninfo, str) else None


def redact_text(url: str) -> str:
    """``url`` fit for an error message (password hidden)."""
    try:
        return redact(url)
    except ValueError:
        return "<unparsable URL>"
