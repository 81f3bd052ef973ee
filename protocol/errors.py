"""The root of every error the project raises on purpose, and the protocol package's own base.

Each package has one base under `FedrecError` (`ProtocolError` here, `SecAggError`,
`DeviceError`, `CoordinatorError`, `PipelineError`); concrete errors keep their builtin parent
too (ValueError, OSError) so callers that catch those still do. The command line maps a
`FedrecError` to a one-line message and exit status 2; anything else is a bug and is reported
as one (`fedrec_cli.errors`).
"""

from __future__ import annotations


class FedrecError(Exception):
    """Something the user or the environment can fix: bad input, a refused message, a busy folder."""


class ProtocolError(FedrecError):
    """A message, file, address or lock that the shared protocol code refuses."""
