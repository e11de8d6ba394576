"""Packaging, layout, lint and types; the README's promises hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=280)


def test_import_direction_and_wheel_contents():
    result = run(sys.executable, "scripts/check_layout.py", "--wheel")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format():
    lint = run(sys.executable, "-m", "ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout
    fmt = run(
        sys.executable, "-m", "ruff", "format", "--check", "core", "actors", "stores", "stageline"
    )
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_on_core_and_clean_elsewhere():
    result = run(sys.executable, "-m", "mypy", "core", "actors", "stores", "stageline")
    assert result.returncode == 0, result.stdout


def _readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _readme_blocks("bash")[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_first_python_block_runs_as_is(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_readme_blocks("python")[0])
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "failed {'total': 60, 'in_stock': True}" in result.stdout
    assert "1 step(s) failed in Ship:ship: label: ValueError('no address')" in result.stdout
    assert result.stderr == ""  # the library prints nothing when logging is not configured


def test_quickstart_script_runs():
    result = run(sys.executable, "scripts/quickstart.py")
    assert result.returncode == 0, result.stderr
    assert "Ship:ship" in result.stdout


def test_library_never_configures_structlog(tmp_path):
    code = (
        "import structlog, stageline\n"
        "from stageline import Pipeline, Stage, Step, PipelineFactory\n"
        "p = Pipeline('p', [Stage('s', 1, steps=[Step('a', lambda s, c: {'a': 1})])])\n"
        "assert PipelineFactory(p).prepare().run(timeout=10).status == 'succeeded'\n"
        "assert not structlog.is_configured()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_public_api_is_exported():
    import stageline

    for name in stageline.__all__:
        assert hasattr(stageline, name), name
    for name in (
        "Pipeline",
        "Stage",
        "Step",
        "Pause",
        "TERMINATE",
        "DELETE",
        "PipelineFactory",
        "RunContext",
        "RunResult",
        "PIPELINE_DATA_KEY",
        "StagelineError",
    ):
        assert name in stageline.__all__


def _check_layout_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "scripts/check_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_layout_check_finds_a_cycle_through_a_local_import(tmp_path, monkeypatch):
    """The checker counts imports inside functions, so a cycle hidden there is found."""
    check = _check_layout_module()
    for folder in ("core", "actors", "stores", "stageline"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "actors" / "run.py").write_text("from .child import Child\n")
    (tmp_path / "actors" / "child.py").write_text("def f():\n    from .run import Run\n")
    (tmp_path / "actors" / "leaf.py").write_text("from . import child\n")
    monkeypatch.setattr(check, "ROOT", tmp_path)
    assert check.import_cycles() == [["stageline.actors.child", "stageline.actors.run"]]
    (tmp_path / "actors" / "child.py").write_text("def f():\n    return 1\n")
    assert check.import_cycles() == []


def test_the_layout_check_measures_sizes(tmp_path, monkeypatch):
    check = _check_layout_module()
    for folder in ("core", "actors", "stores", "stageline", "scripts"):
        (tmp_path / folder).mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(45))
    (tmp_path / "core" / "big.py").write_text(f"def long():\n{body}\n\ndef short():\n    pass\n")
    monkeypatch.setattr(check, "ROOT", tmp_path)
    problems = check.size_problems()
    assert any("function long has 46 lines" in p for p in problems)
    assert any("median function" in p for p in problems)
