"""Shared helpers for data tests: locating the (non-redistributable) ML-100K."""

from __future__ import annotations

from pathlib import Path

import pytest

# tests/data/conftest.py -> repo root is parents[2]; the data lives beside the repo.
ML100K_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"


def ml100k_dir() -> Path:
    """Path to MovieLens-100K, or skip the test when it is not available."""
    if not (ML100K_DIR / "u.data").is_file():
        pytest.skip(
            f"MovieLens-100K not found at {ML100K_DIR}: its license forbids "
            "redistribution, so it is not in the repo"
        )
    return ML100K_DIR


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    return ml100k_dir()
