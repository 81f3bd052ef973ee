"""The coordinator's own errors: conditions a user can fix, printed by the CLI as one line.

Everything the coordinator refuses on purpose derives from `CoordinatorError`; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """A condition the user can fix; the message names what is wrong and where."""


class StateError(CoordinatorError):
    """The stored state cannot be used; the message names the file and what is wrong."""


class StateFolderBusy(StateError):
    """Another coordinator holds the state folder (one writer per ε ledger)."""


class ListenError(CoordinatorError):
    """The coordinator cannot listen where it was told to (the address is in use or not local)."""
