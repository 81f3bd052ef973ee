"""Shared test fixtures: the TFF runtime is installed once and its workers stopped at the end."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tff_runtime():
    """Install the tracked TFF context; stop its worker_binary when the session ends."""
    from tff_pipeline import runtime

    runtime.install()
    yield runtime
    runtime.shutdown()
    assert runtime.worker_pids() == []
