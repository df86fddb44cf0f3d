"""``txlock doctor``'s checks of a Redis server or Cluster: clock skew, deployment mode,
replication, persistence, eviction policy and ACL permissions.

Everything here reads: ``INFO``, ``TIME``, ``CONFIG GET``, ``PUBSUB NUMSUB``, ``ACL WHOAMI``
/ ``ACL DRYRUN``, and, where ``ACL DRYRUN`` is refused, harmless tries of txlock's commands
on the scratch key (``EVAL "return 1"``, ``HGET``, ``PUBLISH`` / ``SUBSCRIBE`` on a channel
nobody listens to). On a Cluster each question goes to every primary. Server errors are
translated as the manager's own (:func:`~txlock.backends.redis._connection.translate`).
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

from txlock._doctor import FAIL, PASS, WARN, Check, Findings, clock_skew, skew_check
from txlock.backends.redis import _scripts
from txlock.backends.redis._connection import DRIVER_ERRORS
from txlock.backends.redis.manager import RedisLockManager

__all__ = ["SCRIPT_COMMANDS", "checks", "sample_arguments"]

#: The commands txlock's Lua scripts call (ACLs apply to them one by one).
SCRIPT_COMMANDS = tuple(sorted({
    name.upper()
    for script in (_scripts.ACQUIRE, _scripts.RELEASE, _scripts.EXTEND, _scripts.INSPECT, _scripts.WATCH,
                   _scripts.WITHDRAW, _scripts.FORCE_RELEASE, _scripts.HEARTBEAT, _scripts.CONFIRM, _scripts.REVOKE)
    for name in re.findall(r"redis\.p?call\(\s*'(\w+)'", script.source)
}))
#: The commands txlock sends itself (beside the scripts; ``WAIT`` with ``wait_replicas``).
CLIENT_COMMANDS = ("EVALSHA", "EVAL", "HGET", "SCAN", "HMGET", "PTTL", "ZCARD", "SUBSCRIBE", "WAIT")


def checks(manager: RedisLockManager, scratch: str) -> Findings:
    """Every check of this module, in the order doctor prints them."""
    servers = _servers(manager)
    infos = _per_server(manager, servers, _info)
    return Findings([
        _guarded("clock-skew", lambda: _clock(manager, servers)),
        _guarded("deployment-mode", lambda: _mode(manager, servers, infos)),
        _replication(infos),
        _persistence(manager, servers),
        _eviction(manager, servers),
        _guarded("acl", lambda: _acl(manager, scratch)),
    ])


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """``check()``, or a warning when the server refuses one of its questions."""
    try:
        return check()
    except ResponseError as exc:
        return Check(name, WARN, f"the server refused doctor's question: {' '.join(str(exc).split())}",
                     "grant this user the command the message names, or check this by hand")


# ---------------------------------------------------------------------- asking the servers


Node = dict[str, Any]  # the keyword arguments that send a command to one server


def _call(manager: RedisLockManager, call: Callable[[Any], Any]) -> Any:
    """``call(client)``, with redis-py's connection errors translated as the manager's."""
    try:
        return call(manager._client())
    except ResponseError:
        raise  # a refusal: each check judges its own
    except DRIVER_ERRORS as exc:
        raise manager._error(exc) from exc


def _servers(manager: RedisLockManager) -> dict[str, Node]:
    """Each server to ask, by name: the one server, or every primary of a Cluster."""
    if not manager._cluster:
        return {manager._where: {}}
    primaries = _call(manager, lambda client: client.get_primaries())
    return {node.name: {"target_nodes": node} for node in primaries}


def _per_server(
    manager: RedisLockManager, servers: dict[str, Node], ask: Callable[..., Any]
) -> dict[str, Any]:
    """``ask(client, **node)`` on each server: its reply, or the ``ResponseError`` refusing it."""
    replies: dict[str, Any] = {}
    for name, node in servers.items():
        try:
            replies[name] = _call(manager, functools.partial(_ask_one, ask, node))
        except ResponseError as exc:
            replies[name] = exc
    return replies


def _ask_one(ask: Callable[..., Any], node: Node, client: Any) -> Any:
    return ask(client, **node)


def _info(client: Any, **node: Any) -> dict[str, Any]:
    return {**client.info("server", **node), **client.info("replication", **node)}


def _config(client: Any, name: str, **node: Any) -> str | None:
    reply = client.config_get(name, **node)
    value = {_text(key): value for key, value in reply.items()}.get(name)
    return None if value is None else _text(value)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _refusals(replies: dict[str, Any]) -> str | None:
    """The first refusal among ``replies``, as text (``None``: every server answered)."""
    for name, reply in replies.items():
        if isinstance(reply, ResponseError):
            return f"{name}: {' '.join(str(reply).split())}"
    return None


# ---------------------------------------------------------------------- the checks


def _clock(manager: RedisLockManager, servers: dict[str, Node]) -> Check:
    worst: tuple[float, float] | None = None
    for node in servers.values():
        def server_time(node: Node = node) -> float:
            seconds, micros = _call(manager, lambda client: client.time(**node))
            return int(seconds) + int(micros) / 1e6

        reading = clock_skew(server_time, "Redis server")
        if worst is None or abs(reading[0]) > abs(worst[0]):
            worst = reading
    assert worst is not None
    return skew_check(worst[0], worst[1], "Redis server", "TIME")


def _mode(manager: RedisLockManager, servers: dict[str, Node], infos: dict[str, Any]) -> Check:
    refused = _refusals(infos)
    if refused is not None:
        return Check("deployment-mode", WARN, f"cannot read INFO ({refused})",
                     "ask your provider whether this is a single server, a Sentinel setup or a Cluster")
    modes = {str(info.get("redis_mode", "standalone")) for info in infos.values()}
    version = ", ".join(sorted({str(info.get("redis_version", "?")) for info in infos.values()}))
    if "sentinel" in modes:
        return Check("deployment-mode", FAIL, f"the URL names a Redis Sentinel ({version}), not a data server",
                     "point the URL at the master Sentinel monitors (txlock does not discover it through Sentinel)")
    if manager._cluster:
        return Check("deployment-mode", PASS, f"Redis Cluster with {len(servers)} primaries (Redis {version}); "
                     "every key of one lock is in one slot")
    if "cluster" in modes:
        return Check("deployment-mode", FAIL, f"the server runs in cluster mode (Redis {version}) but the URL is "
                     "not redis+cluster://: keys in other nodes' slots are refused (MOVED)",
                     "use redis+cluster://host:port")
    try:
        hello = _call(manager, lambda client: client.pubsub_numsub("__sentinel__:hello"))
        sentinels = int(hello[0][1]) if hello else 0
    except ResponseError:
        sentinels = 0
    if sentinels:
        return Check(
            "deployment-mode", WARN, f"a standalone Redis {version} monitored by {sentinels} Sentinel(s) "
            "(subscribers of __sentinel__:hello): a failover moves the master, and txlock connects only to "
            "the address in its URL (it does not ask Sentinel)",
            "point the URL at an address that follows the master (a DNS name or proxy updated on failover); "
            "see the replication check for what a failover can lose",
        )
    return Check("deployment-mode", PASS, f"a standalone Redis {version}")


def _replication(infos: dict[str, Any]) -> Check:
    if _refusals(infos) is not None:
        return Check("replication", WARN, "cannot read INFO replication",
                     "ask your provider whether replicas and automatic failover are configured")
    replicas = [name for name, info in infos.items() if str(info.get("role")) in ("slave", "replica")]
    if replicas:
        return Check("replication", FAIL, f"{', '.join(replicas)} is a read-only replica: every acquire fails "
                     "(READONLY)", "point the URL at the primary (master)")
    count = sum(int(info.get("connected_slaves", 0)) for info in infos.values())
    if count:
        return Check(
            "replication", WARN, f"{count} connected replica(s): replication is asynchronous, so a failover "
            "can promote a replica that never received the latest grants, and a lock granted just before is "
            "granted again (two holders until the first one's hold ends)",
            "protect the resource with fencing tokens (a new grant's token is larger: it is seeded from the "
            "server clock); min-replicas-to-write narrows the window but does not close it",
        )
    return Check("replication", PASS, "no replicas: no failover can hand out a lock twice (a restart can: see "
                 "persistence)")


def _persistence(manager: RedisLockManager, servers: dict[str, Node]) -> Check:
    answers = _per_server(manager, servers, lambda client, **node: (
        _config(client, "appendonly", **node), _config(client, "appendfsync", **node), _config(client, "save", **node)
    ))
    refused = _refusals(answers)
    if refused is not None:
        return Check("persistence", WARN, f"cannot read the configuration (CONFIG GET refused: a managed Redis? "
                     f"{refused})", "ask your provider whether AOF persistence (appendonly yes, appendfsync "
                     "always) is on; without it a restart loses every hold")
    aof = [answer for answer in answers.values() if answer[0] != "yes"]
    fsync = {str(answer[1]) for answer in answers.values()}
    lost = (
        "holds survive restarts shorter than the liveness window "
        f"({manager.liveness:g} s) only with AOF and appendfsync always"
    )
    if aof:
        snapshots = ", ".join(sorted({f"save '{answer[2]}'" for answer in aof if answer[2]})) or "no RDB snapshots"
        return Check(
            "persistence", WARN, f"no AOF (appendonly no; {snapshots}): a restart of the server loses every hold and "
            "queue, so two holders may overlap after it (fencing tokens still increase: new ones are seeded from "
            f"the server clock); {lost}",
            "CONFIG SET appendonly yes and appendfsync always (and in redis.conf), or accept that a restart "
            "frees every lock and rely on fencing tokens",
        )
    if fsync != {"always"}:
        return Check(
            "persistence", WARN, f"AOF with appendfsync {'/'.join(sorted(fsync))}: a clean restart keeps the holds, "
            "but a crash (kill -9, power loss) loses the last second of grants and releases; " + lost,
            "CONFIG SET appendfsync always where a lock must survive a crash of the server",
        )
    return Check("persistence", PASS, f"AOF with appendfsync always: {lost.replace(' only with', ' with')}")


#: The eviction policies that can remove lock keys: (policy prefix, status, why, what to do).
_EVICTING = (
    ("allkeys-", FAIL, "when memory is full Redis evicts any key, lock keys included: a held lock silently "
     "disappears and another caller gets it", "CONFIG SET maxmemory-policy noeviction (and in redis.conf), or give "
     "txlock a Redis of its own; a cache's policy must not serve locks"),
    ("volatile-", WARN, "when memory is full Redis evicts keys with a TTL, and every txlock hold has one (its ttl "
     "or the liveness window): holds can be evicted", "CONFIG SET maxmemory-policy noeviction: writes then fail "
     "with OOM (txlock raises BackendError) instead of locks vanishing"),
)


def _eviction(manager: RedisLockManager, servers: dict[str, Node]) -> Check:
    answers = _per_server(manager, servers, lambda client, **node: (
        _config(client, "maxmemory-policy", **node), _config(client, "maxmemory", **node)
    ))
    refused = _refusals(answers)
    if refused is not None:
        return Check("eviction", WARN, f"cannot read the configuration (CONFIG GET refused: a managed Redis? "
                     f"{refused})", "ask your provider for maxmemory-policy: it must be noeviction")
    policies = sorted({str(answer[0]) for answer in answers.values()})
    limits = sorted({str(answer[1]) for answer in answers.values()})
    limit = "no maxmemory set now, but the policy applies as soon as one is" if limits == ["0"] else \
        f"maxmemory {'/'.join(limits)} bytes"
    shown = "/".join(policies)
    for start, status, meaning, advice in _EVICTING:
        if any(policy.startswith(start) for policy in policies):
            return Check("eviction", status, f"maxmemory-policy {shown} ({limit}): {meaning}", advice)
    return Check("eviction", PASS, f"maxmemory-policy {shown} ({limit}): lock keys are never evicted (when memory "
                 "is full, acquires fail with an error instead)")


# ---------------------------------------------------------------------- ACLs


def sample_arguments(command: str, keys: list[bytes], channel: str) -> list[Any]:
    """Arguments that make ``command`` a valid call on txlock's keys (for ``ACL DRYRUN``);
    ``KeyError`` for a command the table does not know (a test keeps it complete)."""
    hold, queue, entries, watchers = keys
    samples: dict[str, list[Any]] = {
        "DEL": [entries], "EXISTS": [queue], "HDEL": [hold, "holder"], "HGET": [hold, "holder"],
        "HEXISTS": [hold, "holder"], "INFO": ["cluster"], "WAIT": ["0", "1"],
        "HMGET": [hold, "holder"], "HSET": [hold, "holder", "x"], "HVALS": [entries], "PEXPIRE": [hold, "1000"],
        "PTTL": [hold], "PUBLISH": [channel, "x"], "SADD": [watchers, "x"], "SMEMBERS": [watchers],
        "SREM": [watchers, "x"], "TIME": [], "ZADD": [queue, "1", "x"], "ZRANGE": [queue, "0", "-1"],
        "ZREM": [queue, "x"], "ZSCORE": [queue, "x"], "ZCARD": [queue], "SCAN": ["0", "COUNT", "1"],
        "EVALSHA": [_scripts.INSPECT.sha, "4", *keys], "EVAL": ["return 1", "4", *keys], "SUBSCRIBE": [channel],
    }
    return samples[command]


def _acl(manager: RedisLockManager, scratch: str) -> Check:
    keys = manager._keys(scratch)
    channel = f"txlock:wake:doctor-{uuid.uuid4().hex[:8]}"
    try:
        user = _text(_call(manager, lambda client: client.execute_command("ACL", "WHOAMI")))
    except ResponseError as exc:
        if "unknown" in str(exc).lower():
            return Check("acl", PASS, "no ACLs on this server (Redis < 6): every client may run every command")
        user = "?"
    denied: dict[str, str] = {}
    try:
        for command in (*CLIENT_COMMANDS, *SCRIPT_COMMANDS):
            args = sample_arguments(command, keys, channel)
            reply = _text(_call(manager, functools.partial(_dry_run, user, command, args)))
            if reply != "OK":
                denied[command] = reply
    except ResponseError as exc:
        return _acl_by_trying(manager, keys, channel, user, " ".join(str(exc).split()))
    if denied:
        return _acl_denied(user, denied, manager.prefix)
    return Check("acl", PASS, f"ACL DRYRUN: user {user!r} may run every command txlock sends and its scripts "
                 f"call ({', '.join(SCRIPT_COMMANDS)}) on the keys {manager.prefix}* and the channels txlock:wake:*")


def _dry_run(user: str, command: str, args: list[Any], client: Any) -> Any:
    return client.execute_command("ACL", "DRYRUN", user, command, *args)


def _acl_denied(user: str, denied: dict[str, str], prefix: str) -> Check:
    why = "; ".join(f"{command}: {reason}" for command, reason in denied.items())
    return Check(
        "acl", FAIL, f"user {user!r} may not run what txlock needs: {why}",
        f"ACL SETUSER {user} +{' +'.join(c.lower() for c in (*CLIENT_COMMANDS, *SCRIPT_COMMANDS))} "
        f"~{prefix}* &txlock:wake:*  (or the categories +@read +@write +@scripting +@pubsub)",
    )


def _acl_by_trying(manager: RedisLockManager, keys: list[bytes], channel: str, user: str, why: str) -> Check:
    """Without ``ACL DRYRUN`` (it needs admin rights): try txlock's own commands, harmlessly."""
    hold = keys[0]
    tries: dict[str, Callable[[Any], Any]] = {
        "EVAL": lambda client: client.execute_command("EVAL", "return 1", 1, hold),
        "EVALSHA": lambda client: client.execute_command("EVALSHA", "0" * 40, 1, hold),
        "HGET": lambda client: client.execute_command("HGET", hold, "holder"),
        "PUBLISH": lambda client: client.execute_command("PUBLISH", channel, ""),
        "SUBSCRIBE": lambda client: _subscribe(client, channel),
    }
    denied: dict[str, str] = {}
    for command, attempt in tries.items():
        try:
            _call(manager, attempt)
        except NoScriptError:
            pass  # allowed to ask: the script is just not loaded
        except (NoPermissionError, ResponseError) as exc:
            if isinstance(exc, NoPermissionError) or "NOPERM" in str(exc) or "no permissions" in str(exc):
                denied[command] = " ".join(str(exc).split())
    if denied:
        return _acl_denied(user, denied, manager.prefix)
    return Check(
        "acl", PASS, f"ACL DRYRUN refused ({why}); tried instead on the scratch key: {', '.join(tries)} are "
        f"allowed for user {user!r}. The commands inside the scripts ({', '.join(SCRIPT_COMMANDS)}) are exercised "
        "by the live check", "",
    )


def _subscribe(client: Any, channel: str) -> None:
    """SUBSCRIBE and UNSUBSCRIBE ``channel`` on a connection of its own; a refusal raises."""
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message.get("type") == "subscribe":
                return
    finally:
        pubsub.close()
