"""Fixtures and markers shared by the fault lab's scenarios.

* :func:`make_lab_url` / the ``lab_url`` fixture: a URL naming a fresh, private namespace on
  one backend (``file``, ``sqlite``, ``redis``, ``postgres``, ...), built on
  :func:`conftest.url_for` (so a missing server skips, or fails under ``CI``), with extra
  URL options (``liveness=1`` for quick crash recovery, ...).
* :func:`lab_backends`: the ``pytest.param`` list of backends, each carrying its backend
  marker and ``processes``, for scenarios that run worker processes.
* The ``lab`` marker, set on every test of this folder, so ``pytest -m lab`` runs the lab.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from conftest import _with_query, url_for

#: The backends whose holders and workers live in separate processes.
PROCESS_BACKENDS = ("file", "sqlite", "redis", "postgres")

_namespaces = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    """Register the lab's marker (the suite runs with ``--strict-markers``)."""
    config.addinivalue_line("markers", "lab: a fault-lab scenario (tests/lab)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder with ``lab``."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.lab)


def lab_backends(names: Iterable[str] = PROCESS_BACKENDS, *, processes: bool = True) -> list[Any]:
    """``pytest.param`` per backend, marked with the backend's marker (and ``processes``)."""
    params = []
    for name in names:
        marks = [getattr(pytest.mark, name)]
        if processes:
            marks.append(pytest.mark.processes)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def make_lab_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path, **options: object) -> str:
    """A URL naming a fresh, private namespace on ``backend``, with ``options`` in its query.

    Each call gets its own namespace (a new directory for ``file`` and ``sqlite``, a new key
    prefix on the shared servers for ``redis`` and ``postgres``).
    """
    directory = tmp_path / f"ns-{next(_namespaces)}"
    directory.mkdir(parents=True, exist_ok=True)
    url = url_for(backend, request, directory)
    if options:
        url = _with_query(url, **{name: _option(value) for name, value in options.items()})
    return url


def _option(value: object) -> str:
    """A URL option's text (``True`` -> ``true``, ``1.0`` -> ``1``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@pytest.fixture
def lab_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., str]:
    """``lab_url(backend, **options)``: see :func:`make_lab_url`."""

    def build(backend: str, **options: object) -> str:
        return make_lab_url(backend, request, tmp_path, **options)

    return build
