"""The import graph of the project's packages, function-level imports included, has no cycle: not
between modules, and not between packages (runtime -> platforms, export -> quantize -> runtime, never
back). Run alone: `python -m pytest -q tests/test_imports.py` (it reads the source; it imports nothing)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "platforms", "export", "quantize")
# Which packages each may import (a layering, bottom first); anything else is a violation.
ALLOWED = {"platforms": set(), "runtime": {"platforms"}, "quantize": {"runtime", "platforms"},
           "export": {"runtime", "platforms", "quantize"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports (anywhere in its body)."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, path.name == "__init__.py")
                names = [f"{target}.{alias.name}" for alias in node.names] + [target]
            else:
                continue
            for name in names:
                while name and name not in files:  # `from pkg import mod` or `import pkg.mod.attr`
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_imports_itself_back():
    graph = import_graph()
    # A package's __init__ importing its own submodules (re-exports) is not a cycle between concerns.
    graph = {m: {e for e in edges if not (m in PACKAGES and e.startswith(m + "."))} for m, edges in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_packages_are_layered():
    violations = []
    for module, edges in import_graph().items():
        package = module.split(".")[0]
        for edge in edges:
            other = edge.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                violations.append(f"{module} imports {edge}")
    assert not violations, violations


def test_the_checker_sees_function_level_imports(tmp_path):
    """A cycle through a function-level import is found (the checker is not blind to them)."""
    graph = {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    source = "def f():\n    from .static_step import X\n"
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _resolve("runtime.model", node, is_package=False) == "runtime.static_step"
