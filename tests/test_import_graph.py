"""The first-party import graph has no cycles and follows the layers of docs/design.md#layers.

The graph is read from the source with ``ast``: every ``import`` statement anywhere in a file
counts, the ones inside functions and ``if __name__ == "__main__":`` too, since they tie the
modules together just the same. Cycles are looked for at every level: between modules, between
sub-packages (``dpnet.train`` <-> ``dpnet.eval``) and between the four packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
# Folder -> import name (pyproject's package-dir), bottom layer first.
_PACKAGES = {
    "runtime": "dpnet_runtime",
    "serve": "dpnet_serve",
    "dpnet": "dpnet",
    "export": "dpnet_export",
    "benchmarks": "dpnet_bench",
}
_LAYER = {name: rank for rank, name in enumerate(_PACKAGES.values())}

Graph = dict[str, set[str]]


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in _PACKAGES.items():
        for path in sorted((_ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(_ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a.b import c` imports the module a.b.c when there is one, else names of a.b.
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [name if name in known else base for name in names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def _graph() -> Graph:
    modules = _modules()
    known = set(modules)
    return {module: set(_imported(module, path, known)) for module, path in modules.items()}


def _collapse(graph: Graph, depth: int) -> Graph:
    collapsed: Graph = {}
    for module, targets in graph.items():
        node = ".".join(module.split(".")[:depth])
        edges = collapsed.setdefault(node, set())
        edges.update(".".join(t.split(".")[:depth]) for t in targets)
        edges.discard(node)
    return collapsed


def _cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path(graph: Graph, start: str, goal: str) -> list[str]:
    # Breadth-first, so a failure message shows the shortest chain of imports.
    previous = {start: start}
    queue = [start]
    for node in queue:
        for target in sorted(graph.get(node, ())):
            if target not in previous:
                previous[target] = node
                queue.append(target)
    if goal not in previous:
        return []
    chain = [goal]
    while chain[-1] != start:
        chain.append(previous[chain[-1]])
    return chain[::-1]


def _describe(graph: Graph, cycles: list[list[str]]) -> str:
    lines = []
    for members in cycles:
        first, second = members[0], sorted(graph[members[0]] & set(members))[0]
        lines.append(" -> ".join([first, *_path(graph, second, first)]))
    return "; ".join(lines)


def test_the_graph_reads_every_package() -> None:
    graph = _graph()
    # The reader itself must see real edges, or every check below passes vacuously.
    assert "dpnet_runtime.errors" in graph["dpnet_runtime.preprocess"]
    assert "dpnet.checkpoint" in graph["dpnet_export.torch_to_onnx"]
    assert "dpnet_runtime.backends.base" in graph["dpnet_runtime.backends.ort"]
    assert len(graph) > 60


@pytest.mark.parametrize("depth", [1, 2, None], ids=["packages", "subpackages", "modules"])
def test_no_import_cycles(depth: int | None) -> None:
    graph = _graph() if depth is None else _collapse(_graph(), depth)
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {_describe(graph, cycles)}"


def test_packages_import_only_lower_layers() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _LAYER[target.split(".")[0]] > _LAYER[module.split(".")[0]]
    )
    assert not upward, "; ".join(upward)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a.x": {"b.y"}, "b.y": {"a.z"}, "a.z": set(), "c": {"c"}}
    assert _cycles(graph) == []
    assert _cycles(_collapse(graph, 1)) == [["a", "b"]]
    assert _describe(_collapse(graph, 1), [["a", "b"]]) == "a -> b -> a"
