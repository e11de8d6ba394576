"""Every ```console session in docs/*.md runs, in order, as one shell script per page.

A session line `$ command` is run by bash in a temporary folder (with `stageline` meaning
this checkout's CLI); the lines after it up to the next `$` are its expected output (stdout
and stderr together). `...` in an expected line matches anything. A command must exit 0
unless its expected output shows an error. Files the sessions use are the blocks headed
`<!-- file: NAME -->` on any page (the app module of docs/daemon.md).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import ROOT, cli_env  # tests/ is on sys.path

PAGES = sorted((ROOT / "docs").glob("*.md"))
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.S)
CONSOLE_BLOCK = re.compile(r"```console\n(.*?)```", re.S)
MARK = "@@stageline-doc-session@@"

pytestmark = pytest.mark.timeout(120)


def sessions(page: Path) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for every `$` line of the page's console blocks."""
    steps: list[tuple[str, list[str]]] = []
    for block in CONSOLE_BLOCK.findall(page.read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line.rstrip())
    return steps


def script(steps: list[tuple[str, list[str]]]) -> str:
    lines = ["trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
    for i, (command, _) in enumerate(steps):
        lines.append(f"echo {MARK}{i}")
        if command.rstrip().endswith("&"):
            lines.append(command)
        else:
            lines.append(f"{{ {command}\n}} 2>&1; echo {MARK}rc $?")
    return "\n".join(lines) + "\n"


def matches(expected: str, got: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, got) is not None


def check(steps: list[tuple[str, list[str]]], output: str) -> None:
    chunks = output.split(f"{MARK}")[1:]
    by_step: dict[int, tuple[list[str], int]] = {}
    for chunk in chunks:
        head, _, body = chunk.partition("\n")
        if head.startswith("rc "):
            index = max(by_step)
            by_step[index] = (by_step[index][0], int(head[3:]))
        else:
            by_step[int(head)] = ([line.rstrip() for line in body.splitlines()], 0)
    for i, (command, expected) in enumerate(steps):
        assert i in by_step, f"the session stopped before `{command}`:\n{output}"
        got, rc = by_step[i]
        shown_error = any("error" in line or "no answer" in line for line in expected)
        assert rc == 0 or shown_error, f"`{command}` exited {rc}:\n" + "\n".join(got)
        assert len(got) == len(expected) and all(map(matches, expected, got)), (
            f"`{command}` printed:\n" + "\n".join(got) + "\nthe docs show:\n" + "\n".join(expected)
        )


@pytest.mark.parametrize("page", [p for p in PAGES if sessions(p)], ids=lambda p: p.name)
def test_doc_sessions_run(page: Path, tmp_path: Path) -> None:
    for other in PAGES:
        for name, text in FILE_BLOCK.findall(other.read_text()):
            (tmp_path / name).write_text(text)
    steps = sessions(page)
    bin_dir = tmp_path / "bin"  # `stageline` is this checkout's CLI, exec'd (signals reach it)
    bin_dir.mkdir()
    (bin_dir / "stageline").write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m stageline \"$@\"\n"
    )
    (bin_dir / "stageline").chmod(0o755)
    env = cli_env(None, tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(
        ["bash", "-c", script(steps)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    check(steps, result.stdout)
