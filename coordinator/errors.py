"""The coordinator's own errors: conditions a user can fix, printed by the CLI as one line.

Everything the coordinator refuses on purpose derives from `CoordinatorError`; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from protocol.errors import FedrecError


class CoordinatorError(FedrecError):
    """A condition the user can fix; the message names what is wrong and where."""


class StateError(CoordinatorError):
    """The stored state cannot be used; the message names the file and what is wrong."""


class StateFolderBusy(StateError):
    """Another coordinator holds the state folder (one writer per ε ledger)."""


class ListenError(CoordinatorError):
    """The coordinator cannot listen where it was told to (the address is in use or not local)."""


class Refused(CoordinatorError, ValueError):
    """A device message the coordinator does not accept (an unknown device, a message for another
    phase, a malformed value). `reason` is a short label for the metrics, str() the detail, and
    `status` the name of the gRPC status code the device receives (no gRPC import here: the round
    logic that raises most refusals has no network)."""

    def __init__(self, reason: str, detail: str, status: str = "FAILED_PRECONDITION") -> None:
        super().__init__(detail)
        self.reason, self.status = reason, status
