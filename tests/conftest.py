"""Shared fixtures: the `store` fixture runs a test once per store kind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from stageline.stores import MemoryStore, SqliteStore

STORE_KINDS = ["memory", "sqlite"]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """Every store stageline ships, one test run each."""
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "runs.db")
    yield s
    s.close()


class Recorder:
    """Collects events from a run; `wait_for(name)` blocks until one arrives (no sleeping)."""

    def __init__(self) -> None:
        self.events: list = []
        self._cond = threading.Condition()

    def __call__(self, event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def of(self, name: str) -> list:
        return [e for e in self.events if e.name == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0, **fields) -> list:
        def matching() -> list:
            return [
                e
                for e in self.events
                if e.name == name and all(getattr(e, k) == v for k, v in fields.items())
            ]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                raise AssertionError(
                    f"no {count} x {name} {fields} within {timeout}s: {self.names()}"
                )
            return matching()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
