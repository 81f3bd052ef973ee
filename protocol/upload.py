"""The one vector a device uploads in a round, before secure aggregation masks it.

Layout (float64 before fixed-point encoding, `secagg.quantize`):

    [ part 0 | part 1 | part 2 | part 3 | weight | unclipped ]

- parts 0..3: the clipped model deltas (`new - old`, `protocol.updates`) of the global tensors,
  flattened in the order of `UPDATE_PARTS`: item embeddings [N, d], item biases [N], global
  mean [], and the ranking head's step of the item table [N, d].
- weight: what this device's rating-head parts were multiplied by. Without DP it is the
  device's example count (FedAvg's weight) divided by the round's `max_weight` (counts above it
  are capped), so at most 1, and the rating-head parts 0..2 are multiplied by it on the device:
  the secure sum is then the numerator of the example-weighted mean and the weight slot its
  denominator (the common factor 1 / max_weight cancels), while every uploaded value stays
  within the clip, which keeps the fixed-point bit width small. The ranking head's step (part 3)
  is averaged per device, as in the simulation (`federated/weighted_mean.py`).
  Under DP every device counts once (DP-FedAvg): the weight is 1, because the sum of example
  counts would be an un-noised release of the cohort's data sizes.
- unclipped: 1 if the update's norm before clipping was at most the round's clip, else 0: the
  record of the adaptive-clip quantile estimate (`QuantileEstimatorQuery` centres it by
  subtracting 0.5 on the server). 0 when the round does not adapt its clip.

Nothing else leaves the device: not the norm, not the loss, not the user's own vectors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from protocol.errors import ProtocolError

UPDATE_PARTS: tuple[str, ...] = (
    "item_embeddings_delta", "item_bias_delta", "global_mean_delta", "implicit_embeddings_delta",
)
# Parts averaged per device rather than per example (the ranking head's step).
PER_DEVICE_PARTS: tuple[int, ...] = (3,)
TRAILER: tuple[str, ...] = ("weight", "unclipped")


class UploadError(ProtocolError, ValueError):
    """An upload vector that does not fit the round's layout."""


@dataclasses.dataclass(frozen=True)
class UploadLayout:
    """Where each piece sits in the flat upload vector of a model with `num_items` items of `dim`."""

    num_items: int
    dim: int

    def __post_init__(self) -> None:
        for name in ("num_items", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UploadError(f"{name} must be a positive integer, got {value!r}")

    @property
    def part_shapes(self) -> tuple[tuple[int, ...], ...]:
        return (self.num_items, self.dim), (self.num_items,), (), (self.num_items, self.dim)

    @property
    def part_sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.part_shapes)

    @property
    def num_model_values(self) -> int:
        return sum(self.part_sizes)

    @property
    def length(self) -> int:
        return self.num_model_values + len(TRAILER)

    @property
    def weight_index(self) -> int:
        return self.num_model_values

    @property
    def unclipped_index(self) -> int:
        return self.num_model_values + 1

    def pack(self, parts: tuple[np.ndarray, ...], *, weight: float, unclipped: bool) -> np.ndarray:
        """The flat float64 vector; the rating-head parts are multiplied by `weight` here."""
        if len(parts) != len(self.part_shapes):
            raise UploadError(f"expected {len(self.part_shapes)} update parts, got {len(parts)}")
        pieces = []
        for index, (part, shape) in enumerate(zip(parts, self.part_shapes)):
            array = np.asarray(part, np.float64)
            if array.shape != shape:
                raise UploadError(f"{UPDATE_PARTS[index]}: shape {array.shape}, expected {shape}")
            factor = 1.0 if index in PER_DEVICE_PARTS else weight
            pieces.append(array.reshape(-1) * factor)
        pieces.append(np.array([weight, 1.0 if unclipped else 0.0]))
        vector = np.concatenate(pieces)
        if not np.all(np.isfinite(vector)):
            raise UploadError("the upload holds non-finite values")
        return vector

    def unpack(self, vector: np.ndarray) -> tuple[tuple[np.ndarray, ...], float, float]:
        """(parts reshaped, weight slot, unclipped slot) of a vector (or of a sum of vectors)."""
        vector = np.asarray(vector, np.float64)
        if vector.shape != (self.length,):
            raise UploadError(f"upload vector of shape {vector.shape}, expected ({self.length},)")
        parts, start = [], 0
        for size, shape in zip(self.part_sizes, self.part_shapes):
            parts.append(vector[start:start + size].reshape(shape))
            start += size
        return tuple(parts), float(vector[self.weight_index]), float(vector[self.unclipped_index])
