"""Partition ratings into per-user client datasets for federated training."""

from __future__ import annotations

import numpy as np

from .errors import DataError
from .types import Ratings

__all__ = ["group_by_user"]


def group_by_user(ratings: Ratings, num_users: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per dense user: (item ids int32, ratings float32), original row order kept.

    Every user gets an entry (empty arrays when they have no rows) so the list
    index is the client id.
    """
    if len(ratings) and (ratings.users.min() < 0 or ratings.users.max() >= num_users):
        raise DataError(f"user index out of range [0, {num_users})")
    order = np.argsort(ratings.users, kind="stable")
    bounds = np.cumsum(np.bincount(ratings.users, minlength=num_users))[:-1]
    items = np.split(ratings.items[order], bounds)
    values = np.split(ratings.ratings[order], bounds)
    return list(zip(items, values))
