"""The device's refusal: one error type for every request it will not carry out."""

from __future__ import annotations


class DeviceError(ValueError):
    """A request the device refuses; the message says what is wrong and nothing was changed."""
