"""The project's modules form no import circle, and the layers hold: nothing imports the command
line back, the protocol imports only itself, and the device side never imports TensorFlow.

Every import counts, the lazy ones inside functions too: a circle through a function-level
import is still a circle for a reader, and one refactoring away from an import-time failure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedrec_cli", "tff_pipeline", "coordinator", "edge_client", "secagg", "protocol", "tflite_models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        if (ROOT / package).is_dir():
            for path in (ROOT / package).rglob("*.py"):
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports, resolved to modules (`from a import b` is `a.b` when
    that is a module, else `a`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_graph_sees_the_whole_project():
    assert len(MODULES) > 100
    assert "coordinator.service" in GRAPH["coordinator.server"]
    assert "fedrec_cli.training_flags" in GRAPH["fedrec_cli.simulate"]


def test_no_circle_between_the_project_modules():
    circles = _circles(GRAPH)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "fedrec_cli"])
def test_nothing_imports_the_command_line(package):
    offenders = sorted(m for m in GRAPH if m.split(".")[0] == package and any(
        t.split(".")[0] == "fedrec_cli" for t in GRAPH[m]))
    assert not offenders, offenders


def test_the_protocol_imports_only_itself():
    offenders = {m: sorted(t for t in GRAPH[m] if not t.startswith("protocol"))
                 for m in GRAPH if m.split(".")[0] == "protocol"}
    assert not {m: t for m, t in offenders.items() if t}
