"""Smoke test of scripts/chaos.py: a short chaos (kill -9, dropped connections, damaged
rows, poison requests, abort storms) on PostgreSQL and on SQLite ends with no violation.

The PostgreSQL run uses a schema of its own (conftest's `pg_url`, dropped after); without
a server it is skipped, loudly, unless STAGELINE_REQUIRE_PG=1. The full form, with the
figures in docs/guarantees.md ("Chaos"), is `python scripts/chaos.py --seconds 60`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CHAOS = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"


def chaos(tmp_path: Path, *args: str) -> str:
    """Run the script for 8 seconds; its output, once it exited 0 with 0 violations."""
    command = [sys.executable, str(CHAOS), "--seconds", "8", "--settle", "40", "--seed", "7",
               "--workdir", str(tmp_path / "work"), *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=110)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "invariant violations: 0" in result.stdout.splitlines(), output[-6000:]
    return result.stdout


def figure(output: str, prefix: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(prefix)]
    return line


def test_chaos_on_postgres_ends_with_no_violation(pg_url, tmp_path):
    output = chaos(tmp_path, "--store", pg_url)
    assert "killed 0 " not in figure(output, "daemons:")  # the chaos did happen
    assert figure(output, "backends terminated:") != "backends terminated: 0"
    assert "poison 0," not in figure(output, "requests:")


def test_chaos_on_sqlite_ends_with_no_violation(tmp_path):
    output = chaos(tmp_path, "--store", "sqlite")
    assert "killed 0 " not in figure(output, "daemons:")
    assert "(damaged 0)" not in figure(output, "runs:")
