"""Check the package layout: imports point one way, and the wheel holds every subpackage.

    python scripts/check_layout.py            # import direction only
    python scripts/check_layout.py --wheel    # also build a wheel and list its packages

Rules: core imports nothing of ours but core, and never pykka; stores import core only;
actors import core and stores; the facade may import all. No import cycle anywhere in the
library, counting every import (function-local and TYPE_CHECKING ones included). Sizes:
no module over 500 lines, no class over 350, no function over 40, and the median
function under 10 lines (library and scripts).
"""

from __future__ import annotations

import argparse
import ast
import statistics
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
PACKAGE_OF = {
    "core": "stageline.core",
    "actors": "stageline.actors",
    "stores": "stageline.stores",
    "stageline": "stageline",
}
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES, MAX_MEDIAN = 500, 350, 40, 10


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


def library_modules() -> dict[str, Path]:
    """Every module of the library by its dotted name (packages by their own name)."""
    modules = {}
    for folder, package in PACKAGE_OF.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT / folder).with_suffix("").as_posix().replace("/", ".")
            modules[package if name == "__init__" else f"{package}.{name}"] = path
    return modules


def imports_of(path: Path, package: str, known: set[str]) -> set[str]:
    """The library modules `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else (node.module or "")
            if node.level and node.module:
                base = f"{package}.{node.module}"
            names = {f"{base}.{alias.name}" for alias in node.names}
            found.update(names & known)  # `from pkg import module`: the module itself
            if names - known:  # names defined in `base` itself
                found.add(base)
    return {_known_prefix(name, known) for name in found} - {None}  # type: ignore[misc]


def _known_prefix(name: str, known: set[str]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_cycles() -> list[list[str]]:
    """Each import cycle among the library's modules (strongly connected components)."""
    modules = library_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = imports_of(path, package, known) - {name}
    return [sorted(c) for c in _components(graph) if len(c) > 1]


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root not in index:
            _visit(root, graph, index, low, stack, found)
    return found


def _visit(root, graph, index, low, stack, found) -> None:  # type: ignore[no-untyped-def]
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    while work:
        node, children = work[-1]
        child = next(children, None)
        if child is None:
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
        elif child not in index:
            index[child] = low[child] = len(index)
            stack.append(child)
            work.append((child, iter(sorted(graph[child]))))
        elif child in stack:
            low[node] = min(low[node], index[child])


def cycle_problems() -> list[str]:
    return [f"import cycle: {' <-> '.join(cycle)}" for cycle in import_cycles()]


def size_problems() -> list[str]:
    problems: list[str] = []
    lengths: list[int] = []
    paths = [
        p for folder in (*PACKAGE_OF, "scripts") for p in sorted((ROOT / folder).rglob("*.py"))
    ]
    for path in paths:
        where = path.relative_to(ROOT)
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            problems.append(f"{where}: {source.count(chr(10))} lines, over {MAX_MODULE_LINES}")
        for node in ast.walk(ast.parse(source)):
            size = (
                (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            )
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths.append(size)
                if size > MAX_FUNCTION_LINES:
                    problems.append(f"{where}:{node.lineno}: function {node.name} has {size} lines")
            elif isinstance(node, ast.ClassDef) and size > MAX_CLASS_LINES:
                problems.append(f"{where}:{node.lineno}: class {node.name} has {size} lines")
    median = statistics.median(lengths)
    if median >= MAX_MEDIAN:
        problems.append(f"the median function has {median} lines, not under {MAX_MEDIAN}")
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
    problems = layout_problems() + cycle_problems() + size_problems()
    problems += wheel_problems() if args.wheel else []
    for problem in problems:
        print(problem)
    print("layout ok" if not problems else f"{len(problems)} layout problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
