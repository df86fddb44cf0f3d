"""Fuzzing of the file backend's key -> file name mapping (atheris; also importable).

Run as a script for the long run (``-atheris_runs=N`` as libFuzzer's ``-runs``)::

    python tests/lab/fuzz_file_names.py -atheris_runs=1000000

It prints one line ``FUZZ-SUMMARY {json}`` at the end (executions, escapes, collisions) and
exits non-zero when a property fails. ``tests/lab/test_fuzz.py`` runs it briefly in CI and
feeds the same properties to Hypothesis.

The properties, for every key the fuzzer builds (and a near twin of it, see :func:`keys_from`):

* **Confined.** The name (``txlock.backends.file.key_filename``) is a plain entry of the
  lock directory: no ``/``, no NUL, not ``.`` or ``..``, at most ``NAME_MAX`` bytes, ASCII
  (valid on every Linux file system), matching the backend's own ``NAME_PATTERN`` (what it
  lists and collects); ``manager.path_for(key)`` is that name joined to the directory.
* **Distinct.** Two different keys never map to one name: neither a key and its twin nor
  any two keys seen in the whole run. A shared name would not be a shared lock (the record
  stores the whole key, and ``_access.load`` compares ``record.key == encode(key)``), but
  the second key's writer would then take the record for a broken one and overwrite the
  first key's hold, so names must not collide at all. The stored key must also identify its
  key: ``encode`` is lossless and a record encoded and decoded by the backend's own
  ``encode_record`` / ``decode_record`` gives it back.
* **End to end** (every :data:`E2E_EVERY`-th input): on a real directory, holding one key
  makes the backend's file appear at ``path_for(key)`` inside the directory and leaves its
  twin free.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

try:
    import atheris
except ImportError:  # importable without it: test_fuzz.py feeds the properties to Hypothesis
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports():  # coverage feedback from the mapping and the record code
        from txlock._validate import decode, encode
        from txlock.backends.file import FileSystemLockManager, key_filename
        from txlock.backends.file._record import NAME_PATTERN, Record, decode_record, encode_record
else:
    from txlock._validate import decode, encode
    from txlock.backends.file import FileSystemLockManager, key_filename
    from txlock.backends.file._record import NAME_PATTERN, Record, decode_record, encode_record

#: Run the end-to-end check (a real acquire) on every this many inputs.
E2E_EVERY = 64
#: Names remembered across the run to find collisions between inputs (about 100 MB at most).
SEEN_LIMIT = 1_000_000

#: Pieces that made peers' lock names escape, collide or break (mode 3 of :func:`keys_from`).
FRAGMENTS = (
    "..", "/", "\0", ".", "~", "\\", "%2F", " ", "\n", "{", "}", "*", "a", "A", "1", "v1.2", "v1.3",
    "é", "e\u0301", "\u212b", "Å", "ß", "ss", "\ud800", "\udfff", "🔒", "\u202e", "\ufeff", "lock",
)


def keys_from(data: bytes) -> tuple[str, str]:
    """Two keys from fuzzer bytes: a key and a near twin of it (the pairs that fool weak
    mappings: Unicode normalization forms, case, one code unit more or less, a separator).

    The first byte picks how the key is decoded (so every ``str`` is reachable, lone
    surrogates included), the second how the twin is made.
    """
    if len(data) < 2:
        return data.decode("latin-1"), ""
    mode, twist, rest = data[0] % 4, data[1], data[2:]
    if mode == 0:
        key = rest.decode("utf-8", "surrogateescape")
    elif mode == 1:
        key = rest[: len(rest) // 2 * 2].decode("utf-16-le", "surrogatepass")
    elif mode == 2:
        key = "".join(chr(int.from_bytes(rest[i : i + 4], "little") % 0x110000) for i in range(0, len(rest) - 3, 4))
    else:
        key = "".join(FRAGMENTS[b % len(FRAGMENTS)] for b in rest)
    choice = twist % 8
    if choice == 0:
        twin = unicodedata.normalize("NFD", key)
    elif choice == 1:
        twin = unicodedata.normalize("NFC", key)
    elif choice == 2:
        twin = key.swapcase()
    elif choice == 3:
        twin = key[:-1]
    elif choice == 4:
        twin = key + chr(twist)
    elif choice == 5:
        twin = key.replace("/", "\\").replace("\0", "")
    elif choice == 6:
        twin = os.path.normpath(key) if key and "\0" not in key else key + "/"
    else:
        twin = key[::-1]
    return key, twin


@dataclass
class Outcome:
    """The run's figures."""

    executions: int = 0
    escapes: int = 0
    collisions: int = 0
    end_to_end: int = 0
    failures: list[str] = field(default_factory=list)


class NameChecker:
    """Checks the properties of the module docstring, input after input, on one real lock
    directory (created here, removed by :meth:`close`)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._temporary = directory is None
        self.directory = os.path.realpath(tempfile.mkdtemp(prefix="txlock-fuzz-") if directory is None else directory)
        self.name_max = os.pathconf(self.directory, "PC_NAME_MAX")
        self.manager = FileSystemLockManager(self.directory)
        self.seen: dict[int, int] = {}
        self.outcome = Outcome()

    def close(self) -> None:
        """Close the manager (its collector removes the files it freed) and the directory."""
        self.manager.close()
        if self._temporary:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)

    def fail(self, kind: str, detail: str) -> None:
        """Count a broken property (kind ``escape`` or ``collision``) and raise."""
        if kind == "escape":
            self.outcome.escapes += 1
        else:
            self.outcome.collisions += 1
        self.outcome.failures.append(f"{kind}: {detail}")
        raise AssertionError(f"{kind}: {detail}")

    def confined(self, key: str) -> str:
        """The name of ``key``, checked to be a plain, valid entry of the directory."""
        name = key_filename(key)
        raw = name.encode("ascii", "replace")
        if (
            not name.isascii() or "/" in name or "\0" in name or name in (".", "..")
            or not 0 < len(raw) <= self.name_max or not NAME_PATTERN.fullmatch(name)
        ):
            self.fail("escape", f"key {key!r} -> name {name!r}")
        path = self.manager.path_for(key)
        if path != os.path.join(self.directory, name) or os.path.dirname(os.path.normpath(path)) != self.directory:
            self.fail("escape", f"key {key!r} -> path {path!r} outside {self.directory}")
        return name

    def distinct(self, key: str, twin: str, name: str) -> None:
        """Different keys never share a name, in this input or across the run, and the
        stored key identifies its key (what the backend compares on every read)."""
        stored = encode(key)
        if decode(stored) != key:
            self.fail("collision", f"key {key!r} is not stored losslessly")
        record, _ = decode_record(encode_record(Record(7, stored)))
        if record is None or record.key != stored:
            self.fail("collision", f"the record of key {key!r} does not give the key back")
        if twin != key and (key_filename(twin) == name or encode(twin) == stored):
            self.fail("collision", f"keys {key!r} and {twin!r} share a lock")
        for one in (key, twin):
            if len(self.seen) < SEEN_LIMIT:
                # Small ints, not the strings: a million long keys would not fit in memory.
                # The name's first 128 bits stand for the name (a false alarm is negligible
                # and errs on the safe side); a BLAKE2b digest of the stored key, a hash
                # unrelated to the name's SHA-256, stands for the key.
                name_bits = int(key_filename(one)[:32], 16)
                fingerprint = int.from_bytes(hashlib.blake2b(encode(one), digest_size=8).digest(), "little")
                if self.seen.setdefault(name_bits, fingerprint) != fingerprint:
                    self.fail("collision", f"key {one!r} shares the file {key_filename(one)} with another key")

    def end_to_end(self, key: str, twin: str) -> None:
        """Hold ``key`` for real: its file appears where it should, and ``twin`` stays free."""
        manager = self.manager
        if not manager.acquire_lock(key, "fuzz", acquire_timeout=0, hold_timeout=60):
            self.fail("collision", f"key {key!r} was not free")
        try:
            path = manager.path_for(key)
            if not os.path.isfile(path) or os.path.realpath(os.path.dirname(path)) != self.directory:
                self.fail("escape", f"key {key!r}: no record file at {path!r}")
            if twin != key and manager.is_locked(twin):
                self.fail("collision", f"holding {key!r} locked {twin!r}")
        finally:
            manager.release_lock(key, "fuzz")
        self.outcome.end_to_end += 1

    def check(self, data: bytes) -> None:
        """All the properties for one fuzzer input."""
        self.outcome.executions += 1
        key, twin = keys_from(data)
        name = self.confined(key)
        self.confined(twin)
        self.distinct(key, twin, name)
        if self.outcome.executions % E2E_EVERY == 0:
            self.end_to_end(key, twin)


def summary(outcome: Outcome) -> str:
    """The line the run ends with (parsed by test_fuzz.py)."""
    figures: dict[str, Any] = asdict(outcome)
    figures["failures"] = figures["failures"][:5]
    return "FUZZ-SUMMARY " + json.dumps(figures, sort_keys=True)


def main(argv: list[str]) -> None:
    """Fuzz with atheris until ``-atheris_runs`` inputs have run (or forever), then print
    :func:`summary`."""
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (Linux, CPython 3.11: atheris==3.0.0)")
    runs = next((int(arg.split("=", 1)[1]) for arg in argv if arg.startswith(("-atheris_runs=", "-runs="))), None)
    for default in ("-max_len=4096", "-len_control=0"):  # long keys from the start
        if not any(arg.startswith(default.split("=")[0] + "=") for arg in argv):
            argv = [*argv, default]
    checker = NameChecker()

    def one_input(data: bytes) -> None:
        try:
            checker.check(data)
        except AssertionError:
            print(summary(checker.outcome), flush=True)
            checker.close()
            raise
        if runs is not None and checker.outcome.executions >= runs:
            # libFuzzer ends the process with exit() on its own, past Python's clean-up.
            print(summary(checker.outcome), flush=True)
            checker.close()
            os._exit(0)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
