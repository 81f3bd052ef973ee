"""Fixtures of the device-process tests (tests/edge/processes.py starts them)."""

from __future__ import annotations

import pytest

from tests.edge.processes import kill_leftovers, no_tensorflow_env


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """Kill any device process a test started and left running (a test that failed midway)."""
    yield
    kill_leftovers()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """An environment in which the device processes cannot import TensorFlow or the server side."""
    return no_tensorflow_env(tmp_path_factory.mktemp("blockers"))
