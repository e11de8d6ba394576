"""Hostile text through the CLI and the stores: bytes that are not UTF-8, quotes, SQL,
very long ids. Always one clear error line (or a clean miss), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import cli, cli_env  # tests/ is on sys.path

from stageline import RunNotFound, StoreError
from stageline.core.store import RunRecord
from stageline.stores import MemoryStore, SqliteStore

pytestmark = pytest.mark.timeout(60)

NOT_UTF8 = os.fsdecode(b"run-\xff\xfe")  # what Python makes of such argv bytes
ODD_IDS = ["x'; DROP TABLE runs; --", 'quote"d', "%s{s}\\", "ü" * 300, "a" * 5000]


@pytest.mark.parametrize("command", [["show"], ["logs"], ["resume", "--no-wait"],
                                     ["retry", "--no-wait"], ["abort", "--no-wait"]])  # fmt: skip
def test_cli_refuses_non_utf8_run_ids_in_one_line(tmp_path: Path, command: list[str]) -> None:
    SqliteStore(tmp_path / "runs.db").close()  # read-only commands never create a store
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "stageline", command[0], os.fsencode(NOT_UTF8), *command[1:]],
        env=env, cwd=tmp_path, capture_output=True, timeout=30,
    )  # fmt: skip
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("stageline: error:")
    assert ("not valid" in err and "UTF-8" in err) or "is not in this store" in err, err


def test_cli_start_with_a_non_utf8_run_id_or_pipeline(tmp_path: Path) -> None:
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}")
    for args in (["start", "p", "--run-id", NOT_UTF8], ["start", NOT_UTF8]):
        raw = [os.fsencode(a) for a in args]
        result = subprocess.run(
            [sys.executable, "-m", "stageline", *raw, b"--no-wait"],
            env=env, cwd=tmp_path, capture_output=True, timeout=30,
        )  # fmt: skip
        err = result.stderr.decode(errors="replace")
        assert result.returncode == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("run_id", ODD_IDS, ids=range(len(ODD_IDS)))
def test_cli_looks_up_odd_run_ids_safely(tmp_path: Path, run_id: str) -> None:
    SqliteStore(tmp_path / "runs.db").close()  # read-only commands never create a store
    env = cli_env(f"sqlite:///{tmp_path / 'runs.db'}")
    result = cli("show", run_id, env=env, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not in this store" in result.stderr
    assert cli("runs", env=env, cwd=tmp_path).returncode == 0  # the table is still there


def test_stores_answer_non_utf8_text_with_a_stageline_error(store: Any) -> None:
    """Per store: text that is not UTF-8 (lone surrogates, from argv bytes) is never
    stored. Writing it is refused with a StoreError that says so; looking it up is a
    clean miss (no run can have such an id), never a driver error."""
    if isinstance(store, MemoryStore):
        pytest.skip("a MemoryStore keeps Python strings as they are")
    for run_id, pipeline_id in ((NOT_UTF8, "p"), ("run-ok", NOT_UTF8)):
        record = RunRecord(
            run_id=run_id,
            pipeline_id=pipeline_id,
            pipeline_version=1,
            status="pending",
            state={},
            stage=None,
        )
        with pytest.raises(StoreError) as refused:
            store.create_run(record)
        message = str(refused.value)
        assert "not valid Unicode" in message and "not UTF-8" in message, message
        assert "use valid UTF-8 text" in message and "\n" not in message, message
    assert store.list_runs() == [], "a refused run was stored"
    for read in (store.get_run, store.load_run, store.read_events):
        with pytest.raises(RunNotFound, match="is not in this store"):
            read(NOT_UTF8)
