"""txlock._liveness: proof-of-life files under flock, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from txlock._liveness import BYTES_128, INT_63, IdFormat, LifeFiles

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="flock and fork: POSIX only")

_CHILD = """
import sys
from txlock._liveness import BYTES_128, INT_63, LifeFiles
ids = BYTES_128 if sys.argv[2] == "BYTES_128" else INT_63
lives = LifeFiles(sys.argv[1], ids, sweep_limit=0)  # leaves dead owners' files for the test
print(ids.name(lives.own_id()), flush=True)
sys.stdin.read()  # lives until killed or told to end
"""

FORMATS = pytest.mark.parametrize("ids", [BYTES_128, INT_63], ids=["BYTES_128", "INT_63"])

Owner = tuple[subprocess.Popen[str], str]


@pytest.fixture
def start_owner() -> Iterator[Callable[[Path, IdFormat[Any]], Owner]]:
    """Start a process that makes its owner file in a directory: ``(process, file name)``."""
    children: list[subprocess.Popen[str]] = []

    def start(directory: Path, ids: IdFormat[Any]) -> Owner:
        kind = "BYTES_128" if ids is BYTES_128 else "INT_63"
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(directory), kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None
        name = child.stdout.readline().strip()  # printed once its file is made and locked
        assert name, "the child made no owner file"
        return child, name

    yield start
    for child in children:
        child.kill()
        child.communicate()


def _kill(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.communicate()


@FORMATS
def test_a_live_owner_is_alive_and_a_killed_one_is_dead(
    tmp_path: Path, ids: IdFormat[Any], start_owner: Callable[[Path, IdFormat[Any]], Owner]
) -> None:
    lives = LifeFiles(str(tmp_path), ids)
    child, name = start_owner(tmp_path, ids)
    owner = ids.parse(name)
    assert owner is not None
    assert lives.alive(owner)
    assert (tmp_path / name).exists()
    _kill(child)  # SIGKILL: no clean-up of its own
    assert not lives.alive(owner)  # the kernel dropped its flock with the process
    assert not (tmp_path / name).exists()  # and the prober removed its file
    assert not lives.alive(owner)


@FORMATS
def test_own_id_is_alive_and_release_makes_it_dead(tmp_path: Path, ids: IdFormat[Any]) -> None:
    lives = LifeFiles(str(tmp_path), ids)
    other = LifeFiles(str(tmp_path), ids)
    own = lives.own_id()
    assert lives.own_id() == own
    assert ids.parse(ids.name(own)) == own
    assert lives.alive(own) and other.alive(own)
    assert not other.alive(ids.none) and not other.alive(None)
    assert not lives.release(keep=lambda _owner: True)  # a hold still names it
    assert other.alive(own)
    assert lives.release()
    assert lives.own is None
    assert not other.alive(own)
    assert os.listdir(tmp_path) == []


def test_making_an_id_sweeps_the_files_of_dead_owners(
    tmp_path: Path, start_owner: Callable[[Path, IdFormat[Any]], Owner]
) -> None:
    for _ in range(3):
        _kill(start_owner(tmp_path, BYTES_128)[0])
    (tmp_path / "not-an-owner").write_text("")
    _live, live_name = start_owner(tmp_path, BYTES_128)
    assert len(os.listdir(tmp_path)) == 5
    lives = LifeFiles(str(tmp_path), BYTES_128)
    own = lives.own_id()
    assert sorted(os.listdir(tmp_path)) == sorted([BYTES_128.name(own), live_name, "not-an-owner"])


def test_names_resolve_under_a_directory_descriptor(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        lives = LifeFiles("ignored", BYTES_128, dir_fd=fd)
        own = lives.own_id()
        assert (tmp_path / own.hex()).exists()
        assert lives.touch(own)
        assert not lives.touch(bytes(range(16)))
        lives.release()
        assert not (tmp_path / own.hex()).exists()
    finally:
        os.close(fd)


def test_a_forked_child_is_another_owner(tmp_path: Path) -> None:
    lives = LifeFiles(str(tmp_path), BYTES_128)
    parent = lives.own_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports, then exits without cleaning up
        try:
            ok = lives.own is None and lives.alive(parent) and lives.own_id() != parent
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert lives.own == parent and lives.alive(parent)
    assert len(os.listdir(tmp_path)) == 2  # the child's file outlives it until swept
    lives.sweep()  # the child is dead; its file goes, the parent's stays
    assert os.listdir(tmp_path) == [parent.hex()]


def test_an_unsure_probe_raises_or_counts_as_alive(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")  # probes fail with ENOTDIR: neither alive nor dead
    strict = LifeFiles(str(not_a_directory), INT_63)
    lenient = LifeFiles(str(not_a_directory), INT_63, on_error="alive")
    with pytest.raises(NotADirectoryError):
        strict.alive(1)
    assert lenient.alive(1)
