"""`secagg` stays a pure package: the math, both roles and the stage table, importing only
`protocol`, numpy, the crypto primitives and the standard library (never the coordinator, the
device, gRPC or TensorFlow), so both sides and the slim edge image can carry it."""

from __future__ import annotations

import sys
from pathlib import Path

import secagg
from tests.import_scan import top_level_imports

PACKAGE = Path(secagg.__file__).parent
ALLOWED = set(sys.stdlib_module_names) | {"secagg", "protocol", "numpy", "cryptography", "Crypto"}


def test_secagg_imports_only_protocol_numpy_the_crypto_libraries_and_the_standard_library():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "errors.py", "quantize.py", "prg.py", "keys.py", "shamir.py",
                                         "graph.py", "params.py", "stages.py", "phases.py", "participant.py",
                                         "server.py"}
    offending = [f"{p.relative_to(PACKAGE.parent)}:{line}: {name}" for p in modules for line, name in top_level_imports(p)
                 if name not in ALLOWED]
    assert offending == []
