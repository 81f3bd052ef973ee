"""The refusals of secure aggregation: one base type, so callers can catch every protocol error."""

from __future__ import annotations

from protocol.errors import FedrecError


class SecAggError(FedrecError, ValueError):
    """A message, call or round that secure aggregation refuses; the message says what is wrong."""


class QuantizationError(SecAggError):
    """A value that does not fit the round's fixed-point encoding, or a malformed packed vector."""
