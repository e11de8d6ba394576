"""The built wheel works on its own (spec section 1): build it, install it into a bare
target directory, and use it from a process that cannot see the source checkout.

The wheel is built from a copy of the checkout (its files minus caches, build/ and
*.egg-info), because pip builds in the source tree: building /work/main itself would write
its build/ folder, race with other builds (scripts/check_layout.py --wheel) and could pick
up stale files left in build/lib.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import stageline

pytestmark = pytest.mark.timeout(300)

ROOT = Path(stageline.__file__).resolve().parent.parent
PACKAGES = {"stageline": "stageline", "core": "stageline/core", "actors": "stageline/actors",
            "stores": "stageline/stores"}  # fmt: skip
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", ".hypothesis", "*.db", "*.db-wal", "*.db-shm", "*.pyc",
)  # fmt: skip

SMOKE = textwrap.dedent(
    """
    import json
    import sys

    import stageline
    import stageline.actors
    import stageline.core
    import stageline.stores
    import stageline.testing
    from stageline import Pipeline, PipelineFactory, Stage, Step
    from stageline.stores import SqliteStore
    from importlib import metadata

    def hello(state, ctx):
        return {"hello": "world", "run": ctx.run_id}

    pipeline = Pipeline("smoke", [Stage("only", 1, steps=[Step("hello", hello)])])
    store = SqliteStore("smoke.db")
    try:
        result = PipelineFactory(pipeline, store=store).prepare(run_id="r1").run(timeout=60)
        journal = [e.name for e in store.read_events("r1")]
    finally:
        store.close()
    print(json.dumps({
        "modules": {name: getattr(module, "__file__", None)
                    for name, module in sorted(sys.modules.items())
                    if name == "stageline" or name.startswith("stageline.")},
        "path": list(stageline.__path__),
        "version": stageline.__version__,
        "dist": str(metadata.distribution("stageline").locate_file("")),
        "status": result.status,
        "state": result.state,
        "error": repr(result.error),
        "journal": journal,
    }))
    """
)


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def inside(path: str | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="not a source checkout")
def test_wheel_installs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)])
    [wheel] = dist.glob("stageline-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in PACKAGES.items():
        sources = {f"{package}/{p.name}" for p in (ROOT / folder).glob("*.py")}
        assert sources <= names, f"wheel lacks {sorted(sources - names)}"
        assert f"{package}/py.typed" in names
    top = {name.split("/")[0] for name in names}
    assert top == {"stageline", wheel.name.split("-py3")[0] + ".dist-info"}, top

    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)])  # fmt: skip
    # Dependencies (pykka, cbor2...) come from this interpreter's environment; stageline
    # itself must come from `site` only: PYTHONPATH is searched before site-packages (and
    # before the editable install's finder, which setuptools appends to sys.meta_path).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    result = run([sys.executable, "-c", SMOKE], cwd=work, env=env)
    report = json.loads(result.stdout.splitlines()[-1])

    assert inside(report["modules"]["stageline"], site), report["modules"]["stageline"]
    outside = {n: f for n, f in report["modules"].items() if not inside(f, site)}
    assert not outside, f"modules loaded from outside the installed wheel: {outside}"
    for name in ("stageline.core", "stageline.actors", "stageline.stores", "stageline.testing"):
        assert name in report["modules"], name
    assert report["path"] == [str(site / "stageline")], report["path"]  # no checkout shim
    assert report["version"] == stageline.__version__
    assert inside(report["dist"], site), report["dist"]
    assert report["status"] == "succeeded", report["error"]
    assert report["state"] == {"hello": "world", "run": "r1"}
    assert report["journal"] == [
        "pipeline:start",
        "stage:start",
        "stage:success",
        "pipeline:success",
    ]
    assert result.stderr == "", result.stderr  # nothing printed when logging is unconfigured

    cli = run([sys.executable, "-m", "stageline", "--version"], cwd=work, env=env)
    assert stageline.__version__ in cli.stdout, cli.stdout
