"""The sign of a model update, named once for both sides.

A device's update of a global tensor is `new - old`: where its local training moved the shared
parameters. The model's `client_update` signature returns it, the TFF client work uploads it,
aggregators (mean, clipping, noise, secure sums) treat it as a plain vector. The server's
optimizer (`tff.learning.optimizers`) expects a pseudo-gradient, which points the other way;
the one conversion happens on the server (`tff_pipeline.federated.process`), through
`pseudo_gradient`.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def model_delta(old: T, new: T) -> T:
    """The update of one tensor: `new - old` (numpy arrays or TF tensors)."""
    return new - old  # type: ignore[operator]  # T is an array or a tensor: both subtract


def pseudo_gradient(mean_delta: T) -> T:
    """What a server optimizer steps against: the negated mean update."""
    return -mean_delta  # type: ignore[operator]  # T is an array or a tensor: both negate
