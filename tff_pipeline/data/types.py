"""Plain containers shared by loaders, splitters and the federated pipeline.

They hold numpy arrays only (no TensorFlow) so data code stays importable and
testable without the heavy ML stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["Ratings", "Vocabulary", "RankingTask", "DatasetSplit"]


def _column(values: Any, dtype: type, name: str) -> np.ndarray:
    """Coerce one column to a 1-D array of the expected dtype."""
    array: np.ndarray = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"Ratings.{name} must be 1-D, got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Ratings:
    """One table of ratings whose user/item ids are already dense indices."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        # Normalise dtypes once here so every consumer can rely on them.
        for name, dtype in (
            ("users", np.int32),
            ("items", np.int32),
            ("ratings", np.float32),
            ("timestamps", np.int64),
        ):
            object.__setattr__(self, name, _column(getattr(self, name), dtype, name))
        lengths = {len(self.users), len(self.items), len(self.ratings), len(self.timestamps)}
        if len(lengths) != 1:
            raise ValueError(f"Ratings columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask_or_index: np.ndarray) -> Ratings:
        """Rows chosen by a boolean mask or an integer index array."""
        key = np.asarray(mask_or_index)
        return Ratings(
            users=self.users[key],
            items=self.items[key],
            ratings=self.ratings[key],
            timestamps=self.timestamps[key],
        )

    @staticmethod
    def concat(parts: list[Ratings]) -> Ratings:
        """Stack tables row-wise (order preserved)."""
        return Ratings(
            users=np.concatenate([p.users for p in parts]),
            items=np.concatenate([p.items for p in parts]),
            ratings=np.concatenate([p.ratings for p in parts]),
            timestamps=np.concatenate([p.timestamps for p in parts]),
        )


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Dense index <-> raw id mapping, kept so model outputs can be mapped back."""

    user_raw_ids: np.ndarray
    item_raw_ids: np.ndarray
    item_titles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_raw_ids", np.asarray(self.user_raw_ids))
        object.__setattr__(self, "item_raw_ids", np.asarray(self.item_raw_ids))
        if self.item_titles is not None:
            object.__setattr__(self, "item_titles", tuple(self.item_titles))
            if len(self.item_titles) != len(self.item_raw_ids):
                raise ValueError(
                    f"{len(self.item_titles)} titles for {len(self.item_raw_ids)} items"
                )

    @property
    def num_users(self) -> int:
        return len(self.user_raw_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_raw_ids)

    @cached_property
    def _user_lookup(self) -> dict[Any, int]:
        return {raw: k for k, raw in enumerate(self.user_raw_ids.tolist())}

    @cached_property
    def _item_lookup(self) -> dict[Any, int]:
        return {raw: k for k, raw in enumerate(self.item_raw_ids.tolist())}

    def user_index(self, raw_id: Any) -> int:
        """Dense index of a raw user id; KeyError names the id."""
        try:
            return self._user_lookup[raw_id]
        except KeyError:
            raise KeyError(f"unknown user id {raw_id!r}") from None

    def item_index(self, raw_id: Any) -> int:
        """Dense index of a raw item id; KeyError names the id."""
        try:
            return self._item_lookup[raw_id]
        except KeyError:
            raise KeyError(f"unknown item id {raw_id!r}") from None


@dataclass(frozen=True, eq=False)
class RankingTask:
    """Rank each user's held-out positive among sampled never-interacted items.

    `negatives` is [users, K] (one sample) or [seeds, users, K] (one sample per negative seed;
    metrics are averaged over them). `protocol` says what the positives are, so that a report
    can label a figure that is not the standard leave-one-out protocol as such.
    """

    users: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    protocol: str = ""

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=np.int32)
        positives = np.asarray(self.positives, dtype=np.int32)
        negatives = np.asarray(self.negatives, dtype=np.int32)
        if negatives.ndim == 2:
            negatives = negatives[np.newaxis]
        if negatives.ndim != 3 or not (len(users) == len(positives) == negatives.shape[1]):
            raise ValueError(
                "RankingTask shapes disagree: "
                f"users {users.shape}, positives {positives.shape}, negatives {negatives.shape}"
            )
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "positives", positives)
        object.__setattr__(self, "negatives", negatives)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def num_negatives(self) -> int:
        return int(self.negatives.shape[2])

    @property
    def num_seeds(self) -> int:
        return int(self.negatives.shape[0])


@dataclass(frozen=True, eq=False)
class DatasetSplit:
    """Everything one experiment needs: vocabulary, train/test and ranking task."""

    name: str
    vocab: Vocabulary
    train: Ratings
    test: Ratings
    ranking: RankingTask
    rating_scale: tuple[float, float]

    def __post_init__(self) -> None:
        # Cheap guard: an out-of-range index would otherwise surface as an
        # obscure embedding lookup error deep inside TensorFlow.
        for part_name, part in (("train", self.train), ("test", self.test)):
            if len(part) and (part.users.min() < 0 or part.users.max() >= self.num_users):
                raise ValueError(f"{self.name} {part_name}: user index out of range")
            if len(part) and (part.items.min() < 0 or part.items.max() >= self.num_items):
                raise ValueError(f"{self.name} {part_name}: item index out of range")

    @property
    def num_users(self) -> int:
        return self.vocab.num_users

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    @cached_property
    def interactions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (user, item) pair of train and test as CSR (indptr [users + 1], items): what
        full-catalog ranking leaves out of the candidates, besides the positive."""
        users = np.concatenate([self.train.users, self.test.users])
        items = np.concatenate([self.train.items, self.test.items])
        order = np.argsort(users, kind="stable")
        indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=self.num_users))])
        return indptr, items[order]
