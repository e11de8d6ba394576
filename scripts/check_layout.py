"""Check the package layout: imports point one way, and the wheel holds every subpackage.

    python scripts/check_layout.py            # import direction only
    python scripts/check_layout.py --wheel    # also build a wheel and list its packages

Rules: core imports nothing of ours but core, and never pykka; stores import core only;
actors import core (and stores only for the default MemoryStore); the facade may import all.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "core": {"stageline.core"},
    "stores": {"stageline.core", "stageline.stores"},
    "actors": {"stageline.core", "stageline.actors", "stageline.stores"},
}
FORBIDDEN_THIRD_PARTY = {"core": {"pykka", "psycopg", "sqlite3", "threading", "asyncio"}}
SUBPACKAGES = ("stageline", "stageline/core", "stageline/actors", "stageline/stores")


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, f"stageline.{package}"))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def layout_problems() -> list[str]:
    problems: list[str] = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, module in imported_modules(path, folder):
                top = module.split(".")[0]
                where = f"{path.relative_to(ROOT)}:{line}"
                if top == "stageline" and not any(
                    module == ok or module.startswith(ok + ".") for ok in allowed
                ):
                    problems.append(f"{where}: {folder}/ must not import {module}")
                if top in FORBIDDEN_THIRD_PARTY.get(folder, set()):
                    problems.append(f"{where}: {folder}/ must stay pure, imports {module}")
    return problems


def wheel_problems() -> list[str]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, str(ROOT)],
            check=True,
        )
        [wheel] = Path(out).glob("stageline-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
    problems = [
        f"wheel lacks {pkg}/__init__.py" for pkg in SUBPACKAGES if f"{pkg}/__init__.py" not in names
    ]
    problems += [
        f"wheel lacks {pkg}/py.typed" for pkg in SUBPACKAGES if f"{pkg}/py.typed" not in names
    ]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wheel", action="store_true", help="also build and inspect a wheel")
    args = parser.parse_args()
    problems = layout_problems() + (wheel_problems() if args.wheel else [])
    for problem in problems:
        print(problem)
    print("layout ok" if not problems else f"{len(problems)} layout problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
