"""Every python block in docs/*.md runs, in order, as one script per page.

A page whose examples use PostgresStore gets the test server as $DATABASE_URL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
pytestmark = pytest.mark.timeout(120)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, request):
    script = tmp_path / f"{page.stem}.py"
    code = "\n\n".join(python_blocks(page))
    script.write_text(code)
    env = dict(os.environ)
    schemas_before = None
    if "PostgresStore(" in code:  # runs against the test server (skips or fails without it)
        env["DATABASE_URL"] = request.getfixturevalue("pg_dsn")
        schemas_before = example_schemas(env["DATABASE_URL"])
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    if schemas_before is not None:  # the page's examples clean up after themselves
        assert example_schemas(env["DATABASE_URL"]) <= schemas_before


def example_schemas(dsn: str) -> set[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'example%%'"
        ).fetchall()
    return {row[0] for row in rows}
