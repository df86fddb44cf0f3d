"""The record format, pure: one key's state as bytes, and a key's file name.

A record file holds one :class:`Record`, rewritten in place (``pwrite`` at offset 0) by a
process holding the file's exclusive ``flock``. Two CRC-32 checks (one on the token
counter, one binding the counter to the body) let a reader that races a writer, or finds
the leftovers of a writer killed mid-write, see a torn record as such: the counter usually
survives a torn body, so fencing tokens never go back.

A timed hold also carries its expiry on the host clock (:mod:`txlock._hostclock`) and the boot
it belongs to, in a *trailer* after the body that the body's length does not count: readers
that predate it skip it, its own CRC-32 binds it to the body it was written with (a trailer
left behind by a longer record, or by a writer that does not know it, never passes), and a
record without a valid trailer is judged on its wall-clock expiry, as before.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import zlib

from txlock._hostclock import BOOT_ID
from txlock._validate import encode

__all__ = [
    "GRACE",
    "MAX_BELLS",
    "NAME_PATTERN",
    "NO_BOOT",
    "NO_LIFE",
    "NO_RESERVATION",
    "RESERVATION_STALE",
    "Bell",
    "Record",
    "decode_counter",
    "decode_high_water",
    "decode_record",
    "encode_high_water",
    "encode_record",
    "key_filename",
]

#: Processes with waiters that a record remembers (its *bells*), to ring the oldest at each release.
MAX_BELLS = 8
#: A reservation (or a bell) not refreshed for this long is void (its waiter stopped trying).
RESERVATION_STALE = 2.0
#: For this long after a reservation is made, the holder's process may still re-acquire
#: (batching hand-offs under contention); then only the reserver is served.
GRACE = 0.005

# counter u64, crc32(counter) u32, magic u32, body length u32, crc32(counter + body) u32
HEAD = struct.Struct("<QIIII")
# state, number of bells, acquired_at, expires_at (0 = bound to its process), ttl (0 = none),
# pid, life id, reservation id, reservation since (when its waiter began to wait),
# reservation last seen, reservation made at, reservation life id, key length, holder
# length; then the bells, the key and the holder bytes.
_BODY = struct.Struct("<BB2xdddI16s8sddd16sII")
# A bell: a process with waiters on the key (its life id), since when its oldest local
# waiter waits, when it last said so, and until when not to ring it (it looks by itself
# then). A release rings the first (the oldest) only.
_BELL = struct.Struct("<16sddd")
Bell = tuple[bytes, float, float, float]
_HEAD_AND_BODY = struct.Struct("<QIIII" + _BODY.format[1:])  # head and body in one unpack
_MAGIC = 0x324C5854  # b"TXL2"
# The host-clock trailer: magic, boot id, host-clock expiry, crc32(body crc + these fields).
_TRAILER = struct.Struct("<I16sdI")
_TRAILER_MAGIC = 0x48434C54  # b"TLCH"
#: The boot of a record without a host-clock expiry.
NO_BOOT = b""
# The ``tokens`` file: the highest counter of every record file ever removed, and its CRC-32.
_HIGH_WATER = struct.Struct("<QI")
#: The life id of no process (a timed hold, or no reservation's waiter).
NO_LIFE = bytes(16)
NO_RESERVATION = bytes(8)


class Record:
    """One decoded record (the state of one key)."""

    # decode_record builds records with _new_record and sets every slot itself.

    __slots__ = (
        "acquired_at",
        "bells",
        "boot",
        "counter",
        "expires_at",
        "held",
        "holder",
        "host_expires",
        "key",
        "life",
        "pid",
        "reservation",
        "reservation_life",
        "reservation_made",
        "reservation_seen",
        "reservation_since",
        "ttl",
    )

    def __init__(self, counter: int, key: bytes) -> None:
        self.counter = counter  # the last token issued for this key
        self.key = key
        self.held = False
        self.holder = b""
        self.acquired_at = 0.0
        self.expires_at = 0.0  # wall clock; 0 = bound to the life of its process
        self.host_expires = 0.0  # the same end on the host clock of boot ``boot``
        self.boot = NO_BOOT  # NO_BOOT: judged on the wall clock
        self.ttl = 0.0
        self.pid = 0  # for people only: never a proof of life
        self.life = NO_LIFE
        self.reservation = NO_RESERVATION  # the id of the waiter that reserved the next grant
        self.reservation_since = 0.0  # since when that waiter waits
        self.reservation_seen = 0.0  # when it last said it still waits
        self.reservation_made = 0.0
        self.reservation_life = NO_LIFE  # its process
        self.bells: list[Bell] = []  # oldest first

    def grant(
        self, holder: bytes, ttl: float | None, now: float, life: bytes, token: int, pid: int,
        host: float | None = None,
    ) -> None:
        self.held = True
        self.holder = holder
        self.counter = token
        self.acquired_at = now
        self.pid = pid
        self.bind(ttl, now, life, host)

    def bind(self, ttl: float | None, now: float, life: bytes, host: float | None = None) -> None:
        """Set the hold's end: ``ttl`` seconds from now (``now`` on the wall clock, ``host``
        on the host clock; without it, or without a host clock, the end is judged on the
        wall clock alone), or the life of process ``life``."""
        self.host_expires, self.boot = 0.0, NO_BOOT
        if ttl is None:
            self.expires_at, self.ttl, self.life = 0.0, 0.0, life
        else:
            self.expires_at, self.ttl, self.life = now + ttl, ttl, NO_LIFE
            if host is not None and BOOT_ID is not None:
                self.host_expires, self.boot = host + ttl, BOOT_ID

    def ends_in(self, now: float, host: float) -> float:
        """Seconds until a timed hold ends (``now``: the wall clock, ``host``: the host clock),
        on the host clock when the record was written in this boot."""
        if self.boot == BOOT_ID:
            return self.host_expires - host
        return self.expires_at - now

    def free(self) -> None:
        self.held = False
        self.holder = b""
        self.acquired_at = self.expires_at = self.ttl = self.host_expires = 0.0
        self.boot = NO_BOOT
        self.pid = 0
        self.life = NO_LIFE

    def reserve(self, reservation: bytes, since: float, now: float, life: bytes) -> None:
        self.reservation, self.reservation_since, self.reservation_life = reservation, since, life
        self.reservation_seen = self.reservation_made = now

    def unreserve(self) -> None:
        self.reservation, self.reservation_since, self.reservation_life = NO_RESERVATION, 0.0, NO_LIFE
        self.reservation_seen = self.reservation_made = 0.0

    def add_bell(self, life: bytes, since: float, now: float, quiet: float = 0.0) -> bool:
        """Ask to be rung at a release (process ``life``, waiting since ``since``, not before
        ``quiet``); whether the record changed. Stale bells go; beyond ``MAX_BELLS`` the
        youngest is left out (its waiters look again at the safety net and get in as older
        ones are served)."""
        bells = self.bells
        for index, (other, since_before, seen, quiet_before) in enumerate(bells):
            if other == life:
                if since < since_before or abs(now - seen) > RESERVATION_STALE / 4 or quiet != quiet_before:
                    bells[index] = (life, min(since, since_before), now, quiet)
                    bells.sort(key=_since)
                    return True
                return False
        kept = [bell for bell in bells if abs(now - bell[2]) < RESERVATION_STALE]
        kept.append((life, since, now, quiet))
        kept.sort(key=_since)
        del kept[MAX_BELLS:]
        changed = kept != bells
        self.bells = kept
        return changed

    def drop_bell(self, life: bytes) -> bool:
        """No more waiters in process ``life``; whether the record changed."""
        kept = [bell for bell in self.bells if bell[0] != life]
        changed = len(kept) != len(self.bells)
        self.bells = kept
        return changed

    def in_grace(self, now: float) -> bool:
        """Whether a reservation stands but is younger than ``GRACE`` (the holder's process
        may still re-acquire; the reserver sleeps until the grace ends). A reservation made
        "in the future" (by a process whose wall clock runs ahead, or before the clock was
        stepped back) is not in grace: a grace must never last longer than ``GRACE``."""
        made = self.reservation_made
        return self.reservation != NO_RESERVATION and made - GRACE <= now < made + GRACE


_new_record = object.__new__


def _since(bell: Bell) -> float:
    return bell[1]


def encode_record(record: Record) -> bytes:
    body = (
        _BODY.pack(
            1 if record.held else 0,
            len(record.bells),
            record.acquired_at,
            record.expires_at,
            record.ttl,
            record.pid & 0xFFFFFFFF,
            record.life,
            record.reservation,
            record.reservation_since,
            record.reservation_seen,
            record.reservation_made,
            record.reservation_life,
            len(record.key),
            len(record.holder),
        )
        + b"".join([_BELL.pack(*bell) for bell in record.bells])
        + record.key
        + record.holder
    )
    counter_crc = zlib.crc32(record.counter.to_bytes(8, "little"))
    body_crc = zlib.crc32(body, counter_crc)
    head = HEAD.pack(record.counter, counter_crc, _MAGIC, len(body), body_crc)
    if not (record.expires_at and record.boot):
        return head + body
    fields = _TRAILER.pack(_TRAILER_MAGIC, record.boot, record.host_expires, 0)[:-4]
    return head + body + fields + zlib.crc32(fields, body_crc).to_bytes(4, "little")


def decode_record(data: bytes) -> tuple[Record | None, int | None]:
    """``(record, counter)``: the record if ``data`` holds a whole one, and the token counter
    whenever its own check passes (it survives a body torn by a writer killed mid-write)."""
    if len(data) < _HEAD_AND_BODY.size:
        return None, decode_counter(data)
    (counter, counter_crc, magic, body_length, body_crc, state, bell_count, acquired, expires, ttl, pid, life,
     reservation, reservation_since, reservation_seen, reservation_made, reservation_life, key_length,
     holder_length) = _HEAD_AND_BODY.unpack_from(data)
    if zlib.crc32(data[:8]) != counter_crc:
        return None, None
    end = HEAD.size + body_length
    if (
        magic != _MAGIC
        or _BODY.size + bell_count * _BELL.size + key_length + holder_length != body_length
        or len(data) < end
    ):
        return None, counter
    if zlib.crc32(data[HEAD.size : end], counter_crc) != body_crc:
        return None, counter
    record = _new_record(Record)
    start = _HEAD_AND_BODY.size + bell_count * _BELL.size
    record.bells = (
        [_BELL.unpack_from(data, at) for at in range(_HEAD_AND_BODY.size, start, _BELL.size)] if bell_count else []
    )
    record.counter, record.key = counter, data[start : start + key_length]
    record.holder = data[start + key_length : end]
    record.held, record.acquired_at, record.expires_at, record.ttl, record.pid, record.life = (
        state == 1, acquired, expires, ttl, pid, life
    )
    record.reservation, record.reservation_since = reservation, reservation_since
    record.reservation_seen, record.reservation_made, record.reservation_life = (
        reservation_seen, reservation_made, reservation_life
    )
    record.host_expires, record.boot = 0.0, NO_BOOT
    if expires and len(data) >= end + _TRAILER.size:
        magic, boot, host_expires, crc = _TRAILER.unpack_from(data, end)
        if magic == _TRAILER_MAGIC and zlib.crc32(data[end : end + _TRAILER.size - 4], body_crc) == crc:
            record.host_expires, record.boot = host_expires, boot
    return record, counter


def decode_counter(data: bytes) -> int | None:
    """The token counter of a record whose body is not whole, if its own check passes."""
    if len(data) < HEAD.size:
        return None
    counter, counter_crc = HEAD.unpack_from(data)[:2]
    return counter if zlib.crc32(data[:8]) == counter_crc else None


def record_length(head: bytes) -> int:
    """The length of the record whose first bytes are ``head`` (as its head says), with the
    room of a host-clock trailer (which may or may not follow)."""
    return HEAD.size + int.from_bytes(head[16:20], "little") + _TRAILER.size


HIGH_WATER_SIZE = _HIGH_WATER.size


def encode_high_water(value: int) -> bytes:
    return _HIGH_WATER.pack(value, zlib.crc32(value.to_bytes(8, "little")))


def decode_high_water(data: bytes) -> int | None:
    if len(data) < _HIGH_WATER.size:
        return None
    value, crc = _HIGH_WATER.unpack_from(data)
    return value if zlib.crc32(data[:8]) == crc else None


#: The name of a record file (see :func:`key_filename`).
NAME_PATTERN = re.compile(r"[0-9a-f]{64}\.lock")


@functools.lru_cache(maxsize=1024)
def key_filename(key: str) -> str:
    """The name of ``key``'s record file: 64 hex digits of SHA-256 of the key + ``.lock``.

    Any ``str`` (empty, ``..``, ``/``, NUL, lone surrogates, any length) maps to a plain
    name inside the directory; distinct keys map to distinct names.
    """
    return hashlib.sha256(encode(key)).hexdigest() + ".lock"
