"""`secagg` stays a pure package: the math, both roles and the stage table, importing only
`protocol`, numpy, the crypto primitives and the standard library (never the coordinator, the
device, gRPC or TensorFlow), so both sides and the slim edge image can carry it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import secagg

PACKAGE = Path(secagg.__file__).parent
ALLOWED = set(sys.stdlib_module_names) | {"secagg", "protocol", "numpy", "cryptography", "Crypto"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file, at any depth; dynamic imports as such."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in {"__import__", "import_module"}:
                found.append((node.lineno, "<dynamic import>"))
    return found


def test_secagg_imports_only_protocol_numpy_the_crypto_libraries_and_the_standard_library():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "errors.py", "quantize.py", "prg.py", "keys.py", "shamir.py",
                                         "graph.py", "params.py", "stages.py", "phases.py", "participant.py",
                                         "server.py"}
    offending = [f"{p.relative_to(PACKAGE.parent)}:{line}: {name}" for p in modules for line, name in _imports(p)
                 if name not in ALLOWED]
    assert offending == []
