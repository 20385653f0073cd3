"""The shape docs/architecture.md promises: modules small enough to hold in your head, imports in one direction.

Read from the source with `ast` (nothing is imported), so a new module is checked the day it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlcap"
MAX_LINES = 400
# Data readers hold one format's strict checks each (file, line and what to do for every malformed input);
# they may run longer (docs/architecture.md "A new data format").
READERS = {"mlcap/data/comp5329.py", "mlcap/data/tabular.py", "mlcap/data/coco.py"}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the mlcap package (the conf/ link holds no Python)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The mlcap modules `name` imports, at module level or inside functions alike (both are dependencies)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in modules and t != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (a -> b -> a), or None: depth-first search with the path on a stack."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def _package_parents(name: str) -> set[str]:
    """A module's own packages: importing `mlcap.data.x` runs `mlcap/data/__init__.py`, which is no cycle."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_module_over_400_lines_other_than_data_readers() -> None:
    long = {
        path.relative_to(ROOT).as_posix(): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert {k: v for k, v in long.items() if k not in READERS} == {}


def test_no_import_cycle_between_mlcap_modules() -> None:
    modules = _modules()
    graph = {name: _imported(path, name, modules) - _package_parents(name) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
