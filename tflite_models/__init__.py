"""Model packages shipped with fedrec, installed as package data so they are found in a wheel.

`synthetic/` is exported from the default synthetic run (`fedrec simulate` then `fedrec export`);
`fedrec-edge install` with no PACKAGE_DIR installs it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_DEFAULT = "synthetic"


def bundled_package(name: str = BUNDLED_DEFAULT) -> Path:
    """The folder of a bundled model package (a real directory: packages install unzipped)."""
    return Path(str(resources.files(__name__) / name))
