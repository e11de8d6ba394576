"""Store files hold every run's state: a new SQLite store is owner-only (issue: security)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stageline import Pipeline, PipelineFactory, Stage, Step
from stageline.stores import SqliteStore

pytestmark = pytest.mark.timeout(30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_store_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask would make 0644 files
    try:
        store = SqliteStore(tmp_path / "runs.db")
        pipeline = Pipeline("p", [Stage("a", 1, steps=[Step("x", lambda s, c: {"x": 1})])])
        assert PipelineFactory(pipeline, store=store).prepare().run().status == "succeeded"
        files = sorted(tmp_path.iterdir())
        assert [f.name for f in files] == ["runs.db", "runs.db-shm", "runs.db-wal"]
        assert {f.name: mode(f) for f in files} == dict.fromkeys(
            ["runs.db", "runs.db-shm", "runs.db-wal"], 0o600
        )
        store.close()
    finally:
        os.umask(old)


def test_an_existing_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SqliteStore(path).close()
    path.chmod(0o640)  # an operator shares it with a group on purpose
    SqliteStore(path).close()
    assert mode(path) == 0o640
