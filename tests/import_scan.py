"""The imports a source file makes, read with `ast` (no import runs): what the layering tests check."""

from __future__ import annotations

import ast
from pathlib import Path


def top_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file, at any depth (function-level
    ones too); a call of `__import__` or `import_module` as "<dynamic import>"."""
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
