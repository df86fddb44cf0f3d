"""Private network namespaces for the lab's partition scenarios.

A :class:`Lab` creates network namespaces (``ip netns add``), joins them with veth pairs
addressed from one random ``10.2xx.0.0/16`` block (each link a ``/30``), and cuts or heals a
namespace's traffic to a peer with ``nft`` rules *inside that namespace*. Nothing is routed
outside: the addresses exist only in namespaces the lab made, which have no default route
and no link to the root namespace. Every name starts with ``txlab-`` and a random suffix,
and everything is torn down by :meth:`Lab.close` (called by ``with``, and by ``atexit`` for a
run that dies before its ``finally``).

Processes started in a namespace with :meth:`Namespace.popen` are remembered and killed at
teardown only while they are still the process we started (their ``Popen`` has not been
reaped); ``ip netns exec`` execs the command in place, so that pid is the command's own.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PREFIX", "Lab", "Link", "Namespace", "unavailable_reason"]

#: Every namespace, interface and nft table the lab creates starts with this.
PREFIX = "txlab-"
#: The nft table the lab adds inside a namespace to cut its traffic.
NFT_TABLE = "txlab"

_IP = shutil.which("ip") or "/usr/sbin/ip"
_NFT = shutil.which("nft") or "/usr/sbin/nft"

_open_labs: set[Lab] = set()
_open_mutex = threading.Lock()
_probe: str | bool | None = False  # False: not probed yet; None: usable; str: why not


def _run(cmd: Sequence[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one administrative command, with its error text in the exception."""
    done = subprocess.run(list(cmd), check=False, input=stdin, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (not root, no ``ip`` / ``nft``, namespaces refused), or
    ``None`` when it can. Probed once per process by building and removing a namespace with
    an nft table in it."""
    global _probe
    if _probe is not False:
        return _probe if isinstance(_probe, str) else None
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "network namespaces need root (CAP_NET_ADMIN)"
    elif not os.path.exists(_IP):
        reason = "iproute2's `ip` is not installed"
    elif not os.path.exists(_NFT):
        reason = "`nft` is not installed (scripts/ci-system-deps.sh installs nftables)"
    else:
        try:
            with Lab() as lab:
                probe = lab.namespace("probe")
                probe.run([_NFT, "add", "table", "inet", NFT_TABLE])
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            reason = f"cannot create a network namespace with an nft table: {exc}"
    _probe = reason if reason is not None else None
    return reason


@dataclass
class Namespace:
    """One network namespace the lab created, and the processes started in it."""

    name: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` prefixed to run inside this namespace."""
        return [_IP, "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], *, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` to completion inside the namespace."""
        return _run(self.command(cmd), stdin=stdin, check=check)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace (``Popen`` keyword arguments pass through); the
        process is killed at teardown if it is still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(cmd), **kwargs)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process currently inside the namespace (``ip netns pids``)."""
        out = _run([_IP, "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]


@dataclass(frozen=True)
class Link:
    """A veth pair between a server namespace and a client namespace (one ``/30``)."""

    server: Namespace
    client: Namespace
    server_addr: str
    client_addr: str


class Lab:
    """Namespaces, links and nft cuts for one test; ``with Lab() as lab: ...``.

    ``namespace(role)`` makes ``txlab-<suffix>-<role>`` with its loopback up;
    ``link(server, client)`` joins two with a veth pair and returns the addresses;
    ``cut(ns, peer)`` drops every packet between ``ns`` and ``peer`` (input and output, in
    ``ns``'s own nft ruleset) and ``heal(ns)`` removes the rules.
    """

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.block = ipaddress.ip_network(f"10.{200 + secrets.randbelow(56)}.0.0/16")
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self.closed = False
        with _open_mutex:
            _open_labs.add(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __hash__(self) -> int:
        return id(self)

    def namespace(self, role: str) -> Namespace:
        """A new namespace named ``txlab-<suffix>-<role>``, loopback up."""
        if not role.isalnum() or len(role) > 8:
            raise ValueError(f"role {role!r}: up to 8 letters or digits")
        ns = Namespace(f"{PREFIX}{self.suffix}-{role}")
        _run([_IP, "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.run([_IP, "link", "set", "lo", "up"])
        return ns

    def link(self, server: Namespace, client: Namespace) -> Link:
        """Join ``server`` and ``client`` with a veth pair; ``.1`` of a fresh ``/30`` on the
        server side, ``.2`` on the client side. Nothing else is routed."""
        index = len(self.links)
        net = list(self.block.subnets(new_prefix=30))[index]
        server_addr, client_addr = str(net[1]), str(net[2])
        # Interface names are capped at 15 characters: "txlab-" + 6 hex + "s"/"c" + index.
        s_if, c_if = f"{PREFIX}{self.suffix}s{index}", f"{PREFIX}{self.suffix}c{index}"
        _run([_IP, "link", "add", s_if, "netns", server.name, "type", "veth", "peer", "name", c_if,
              "netns", client.name])
        for ns, ifname, addr in ((server, s_if, server_addr), (client, c_if, client_addr)):
            ns.run([_IP, "addr", "add", f"{addr}/30", "dev", ifname])
            ns.run([_IP, "link", "set", ifname, "up"])
        link = Link(server, client, server_addr, client_addr)
        self.links.append(link)
        return link

    def cut(self, ns: Namespace, peer_addr: str) -> None:
        """Drop every packet between ``ns`` and ``peer_addr`` (both ways), inside ``ns``."""
        ruleset = (
            f"table inet {NFT_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; ip saddr {peer_addr} drop; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; ip daddr {peer_addr} drop; }}\n"
            "}\n"
        )
        ns.run([_NFT, "-f", "-"], stdin=ruleset)

    def heal(self, ns: Namespace) -> None:
        """Remove the lab's nft rules from ``ns`` (no-op when there are none)."""
        ns.run([_NFT, "delete", "table", "inet", NFT_TABLE], check=False)

    def close(self) -> None:
        """Kill the processes the lab started that still run, then delete every namespace
        (which removes its veth ends and nft rules). Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for ns in self.namespaces:
            for proc in ns.procs:
                if proc.poll() is None:  # not reaped: the pid is still our child
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
        for ns in reversed(self.namespaces):
            _run([_IP, "netns", "delete", ns.name], check=False)
        with _open_mutex:
            _open_labs.discard(self)


@atexit.register
def _close_all() -> None:
    """Tear down labs a dying run left open."""
    with _open_mutex:
        labs = list(_open_labs)
    for lab in labs:
        lab.close()
