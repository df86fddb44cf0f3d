"""The Lua scripts, one file each under ``lua/``, read once when the backend is imported.

Every step of the Redis backend (acquire, release, extend, inspect, watch, withdraw, force
release, heartbeat; confirm and revoke for ``wait_replicas``) is one script, so one round
trip. Each script starts with its fast path; the functions its slow path shares with the
others (``lua/functions.lua``) are put in where the script has the line ``--#include
functions``, so the fast path does not pay for defining closures it does not use.
"""

from __future__ import annotations

import hashlib
from importlib import resources

__all__ = [
    "ACQUIRE",
    "CONFIRM",
    "EXTEND",
    "FORCE_RELEASE",
    "HEARTBEAT",
    "INSPECT",
    "RELEASE",
    "REVOKE",
    "WATCH",
    "WITHDRAW",
    "Script",
]

#: The line of a script that stands for ``lua/functions.lua``.
INCLUDE_FUNCTIONS = "--#include functions\n"


class Script:
    """A Lua script: its source and SHA1 (run by EVALSHA, falling back to EVAL)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _read(name: str) -> str:
    return resources.files("txlock.backends.redis").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


_FUNCTIONS = _read("functions")


def _load(name: str) -> Script:
    return Script(name, _read(name).replace(INCLUDE_FUNCTIONS, _FUNCTIONS, 1))


ACQUIRE = _load("acquire")
RELEASE = _load("release")
EXTEND = _load("extend")
INSPECT = _load("inspect")
WATCH = _load("watch")
WITHDRAW = _load("withdraw")
FORCE_RELEASE = _load("force_release")
HEARTBEAT = _load("heartbeat")
CONFIRM = _load("confirm")
REVOKE = _load("revoke")
