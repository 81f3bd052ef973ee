"""Tensors and limits on the wire: float32 little-endian bytes with their shape, checked on arrival."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protocol.errors import ProtocolError
from protocol.generated import rounds_pb2

# gRPC message size limit on both sides: a round task of the largest supported model
# (100,000 items x 32 dims x 4 bytes) plus headroom; larger messages are refused by gRPC itself.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class WireError(ProtocolError, ValueError):
    """A message whose content does not fit what was announced (shape, size, finiteness)."""


def to_wire(array: np.ndarray) -> rounds_pb2.Tensor:
    array = np.asarray(array, dtype="<f4")  # (not ascontiguousarray: it turns a scalar into shape (1,))
    return rounds_pb2.Tensor(shape=list(array.shape), float32_le=array.tobytes(order="C"))


def from_wire(tensor: rounds_pb2.Tensor, *, expected_shape: Sequence[int], what: str) -> np.ndarray:
    """The tensor as float32, refused unless its shape is `expected_shape` and every value is finite."""
    shape = tuple(int(s) for s in tensor.shape)
    if shape != tuple(expected_shape):
        raise WireError(f"{what}: shape {shape}, expected {tuple(expected_shape)}")
    expected_bytes = 4 * math.prod(shape)
    if len(tensor.float32_le) != expected_bytes:
        raise WireError(f"{what}: {len(tensor.float32_le)} bytes, expected {expected_bytes} for shape {shape}")
    array = np.frombuffer(tensor.float32_le, dtype="<f4").reshape(shape).astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise WireError(f"{what}: holds non-finite values")
    return array
