"""The Redis backend: locks shared by every process on every host that reaches one Redis.

Works with a single server (``redis://``, ``rediss://``, ``unix://``) and with Redis Cluster
(``redis+cluster://``). Every step (acquire, release, extend, inspect, watch, withdraw) is one
Lua script, so one round trip; the holder, the fencing token and the waiting queue live in
Redis, so any process that knows the holder string can release, and every answer comes from
the server. See ``docs/redis.md`` for the design.

The rooms:

* ``manager.py``: :class:`RedisLockManager`: configuration, the one sync and one async
  transport (``_exec`` / ``_aexec``), and the primitives, each returning a request;
* ``_requests.py``: the kinds of work a primitive hands the transport, and the pure readers
  of the replies;
* ``_scripts.py`` and ``lua/``: the Lua scripts, one file each, and the functions their slow
  paths share;
* ``_hub.py``: what one process shares per server: the wake-up listener and the heartbeat;
* ``_connection.py``: clients, the gate that queues callers for their connections,
  connections bounded by the call's deadline, and the translation of redis-py's errors;
* ``_url.py``: the URL, its options, and the canonical URL a manager shows.
"""

from txlock.backends.redis._connection import DEFAULT_MAX_CONNECTIONS
from txlock.backends.redis._url import DEFAULT_LIVENESS, DEFAULT_PREFIX, DEFAULT_URL
from txlock.backends.redis.manager import RedisLockManager

__all__ = ["DEFAULT_LIVENESS", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_PREFIX", "DEFAULT_URL", "RedisLockManager"]
