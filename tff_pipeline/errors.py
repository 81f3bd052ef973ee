"""The base of every error the simulation side raises on purpose (data, config, run folders,
checkpoints, export, TFF workers, divergence); see `protocol.errors` for the whole family."""

from __future__ import annotations

from protocol.errors import FedrecError


class PipelineError(FedrecError):
    """A simulation-side condition the user can fix; the message names what and where."""
