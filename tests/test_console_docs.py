"""The curl examples of docs/console.md, run as written against a real console and daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from console_fixtures import Console

from stageline.stores import SqliteStore

DOC = Path(__file__).resolve().parent.parent / "docs" / "console.md"
EXAMPLE_URL = "http://127.0.0.1:8080"


def curl_lines() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl")]


def test_the_docs_show_curl_examples():
    lines = curl_lines()
    assert len(lines) >= 8
    assert all(EXAMPLE_URL in line for line in lines)


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_every_curl_example_works_as_written(tmp_path):
    console = Console(SqliteStore(tmp_path / "runs.db"))
    try:
        console.paused_run("order-1")
        for line in curl_lines():
            command = line.replace(EXAMPLE_URL, console.url)
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  timeout=60)  # fmt: skip
            assert done.returncode == 0, f"{line}\n{done.stderr}"
            check_output(line, done.stdout)
    finally:
        console.close()
        console.store.close()


def check_output(line: str, out: str) -> None:
    if "/events" in line:
        assert "event: pipeline:start" in out or "Last-Event-ID" in line, out
        assert out.rstrip().endswith("data: {}"), f"the stream did not end: {out[-200:]}"
        return
    answer = json.loads(out)
    assert answer.get("error") is None, f"{line}\n{answer}"
    if "wait=true" in line:
        assert answer["status"] == "done", answer
