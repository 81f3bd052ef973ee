"""The item catalog the coordinator trains over: ids, titles, rating range. Never ratings.

The coordinator needs the catalog to size the model and to write the manifest devices verify;
it must not need anyone's ratings. `fedrec up`, which plays the devices too, writes the catalog
of the data set it splits among them (`catalog.json`); a coordinator without one uses the
synthetic data set's catalog.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from coordinator.errors import CoordinatorError
from protocol.files import atomic_write, read_bounded

MAX_CATALOG_BYTES = 64 * 1024 * 1024


class CatalogError(CoordinatorError, ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Catalog:
    dataset: str
    item_ids: tuple[int, ...]
    item_titles: tuple[str, ...] | None
    rating_min: float
    rating_max: float

    def __post_init__(self) -> None:
        if not self.item_ids:
            raise CatalogError("the catalog holds no items")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise CatalogError("the catalog repeats an item id")
        if self.item_titles is not None and len(self.item_titles) != len(self.item_ids):
            raise CatalogError(f"{len(self.item_titles)} titles for {len(self.item_ids)} items")
        if not self.rating_min < self.rating_max:
            raise CatalogError(f"rating range [{self.rating_min}, {self.rating_max}] is empty")

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "item_ids": list(self.item_ids),
                "item_titles": None if self.item_titles is None else list(self.item_titles),
                "rating_min": self.rating_min, "rating_max": self.rating_max}

    def write(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), allow_nan=False))

    @classmethod
    def read(cls, path: Path) -> Catalog:
        try:
            data = json.loads(read_bounded(path, max_bytes=MAX_CATALOG_BYTES, what="catalog"))
            titles = data["item_titles"]
            return cls(str(data["dataset"]), tuple(int(i) for i in data["item_ids"]),
                       None if titles is None else tuple(str(t) for t in titles),
                       float(data["rating_min"]), float(data["rating_max"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CatalogError(f"{path}: not a catalog ({error})") from None

    @classmethod
    def from_split(cls, split: Any) -> Catalog:
        """The catalog of a loaded `tff_pipeline.data.DatasetSplit`."""
        vocab = split.vocab
        return cls(split.name, tuple(int(i) for i in vocab.item_raw_ids), vocab.item_titles,
                   float(split.rating_scale[0]), float(split.rating_scale[1]))


def synthetic_catalog(seed: int) -> Catalog:
    from tff_pipeline.data import load_dataset

    return Catalog.from_split(load_dataset("synthetic", seed=seed))
