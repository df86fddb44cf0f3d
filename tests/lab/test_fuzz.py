"""The fuzzing of the file backend's key -> file name mapping, run briefly in CI.

* :func:`test_fuzz_file_names_atheris`: ``tests/lab/fuzz_file_names.py`` under atheris
  (coverage-guided) for :func:`lab.report.scaled` runs (CI 20,000; long 1,000,000), in a
  child process because libFuzzer ends the process it runs in.
* :func:`test_file_names_hypothesis`: the same properties fed by Hypothesis (bytes decoded by
  the harness, and arbitrary ``str`` pairs with lone surrogates).
* :func:`test_checker_catches_weak_mappings`: negative controls: the checker flags a name
  that escapes the directory and two keys that share a name.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lab.fuzz_file_names as harness
from _support import need_module
from lab.report import long_run, record, scaled

HARNESS = Path(harness.__file__)


@pytest.fixture
def checker(tmp_path: Path) -> Iterator[harness.NameChecker]:
    """A checker on a private lock directory."""
    (tmp_path / "locks").mkdir()
    checking = harness.NameChecker(tmp_path / "locks")
    yield checking
    checking.close()


@pytest.mark.file
@pytest.mark.timeout(0)
def test_fuzz_file_names_atheris(tmp_path: Path) -> None:
    """Coverage-guided fuzzing finds no escape and no collision."""
    need_module("atheris", "fuzz")
    runs = scaled(20_000, 1_000_000)
    done = subprocess.run(
        [sys.executable, str(HARNESS), f"-atheris_runs={runs}", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=3600 if long_run() else 120, cwd=tmp_path, check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("FUZZ-SUMMARY ")]
    assert lines, f"no summary (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    figures = json.loads(lines[-1].removeprefix("FUZZ-SUMMARY "))
    record("fuzz_names", "file", executions=figures["executions"], escapes=figures["escapes"],
           collisions=figures["collisions"], end_to_end=figures["end_to_end"], engine="atheris")
    assert done.returncode == 0, f"{figures['failures']}\n{done.stderr[-4000:]}"
    assert figures["escapes"] == 0 and figures["collisions"] == 0, figures["failures"]
    assert figures["executions"] >= runs


@pytest.mark.file
def test_file_names_hypothesis(checker: harness.NameChecker) -> None:
    """The harness's properties on Hypothesis's inputs: its byte decodings, and any two
    ``str`` (surrogates included) as key and twin."""
    any_text = st.text(st.characters(exclude_categories=()), max_size=300)

    @settings(max_examples=scaled(400, 20_000), deadline=None, database=None)
    @given(st.binary(max_size=600))
    def from_bytes(data: bytes) -> None:
        checker.check(data)

    @settings(max_examples=scaled(400, 20_000), deadline=None, database=None)
    @given(any_text, any_text)
    def from_text(key: str, twin: str) -> None:
        name = checker.confined(key)
        checker.confined(twin)
        checker.distinct(key, twin, name)
        checker.end_to_end(key, twin)

    from_bytes()
    from_text()
    outcome = checker.outcome
    record("fuzz_names", "file", executions=outcome.executions, escapes=outcome.escapes,
           collisions=outcome.collisions, end_to_end=outcome.end_to_end, engine="hypothesis")
    assert outcome.escapes == 0 and outcome.collisions == 0


@pytest.mark.file
def test_checker_catches_weak_mappings(checker: harness.NameChecker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded bugs: a mapping that keeps the key (Prefect's: ``../x`` escapes) and one that
    folds case (``v1.A`` and ``v1.a`` share a file) are both caught."""
    monkeypatch.setattr(harness, "key_filename", lambda key: key + ".lock")
    with pytest.raises(AssertionError, match="escape"):
        checker.confined("../x")
    assert checker.outcome.escapes == 1

    def folded(key: str) -> str:
        return hashlib.sha256(key.casefold().encode("utf-8", "surrogatepass")).hexdigest() + ".lock"

    monkeypatch.setattr(harness, "key_filename", folded)
    with pytest.raises(AssertionError, match="collision"):
        checker.distinct("v1.A", "v1.a", folded("v1.A"))
    assert checker.outcome.collisions == 1
