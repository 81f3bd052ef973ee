"""The device side's errors: `EdgeError` is the package's base; `DeviceError` is the device's
refusal, one type for every request it will not carry out."""

from __future__ import annotations

from protocol.errors import FedrecError


class EdgeError(FedrecError):
    """Something on the device side the user can fix (a request, a store, a pod, a model)."""


class DeviceError(EdgeError, ValueError):
    """A request the device refuses; the message says what is wrong and nothing was changed."""
