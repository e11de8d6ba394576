"""Shared fixtures: the `store` fixture runs a test once per store kind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stageline.stores import MemoryStore, SqliteStore
from stageline.testing import EventRecorder

STORE_KINDS = ["memory", "sqlite"]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """Every store stageline ships, one test run each."""
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "runs.db")
    yield s
    s.close()


Recorder = EventRecorder


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
