"""Data loading, splitting and client partitioning (pure numpy, no TensorFlow).

Entry point: ``load_dataset(name, ...) -> DatasetSplit``.
"""

from __future__ import annotations

from pathlib import Path

from .clients import group_by_user
from .csv_format import load_movielens_csv
from .errors import DataError
from .movielens import ML100K_SPLITS, load_ml100k
from .splits import GENERIC_SPLITS, leave_latest_out, per_user_random_split, sample_negatives
from .synthetic import generate_synthetic, synthetic_split
from .types import DatasetSplit, RankingTask, Ratings, Vocabulary

__all__ = [
    "DataError",
    "Ratings",
    "Vocabulary",
    "RankingTask",
    "DatasetSplit",
    "load_ml100k",
    "load_movielens_csv",
    "generate_synthetic",
    "synthetic_split",
    "per_user_random_split",
    "leave_latest_out",
    "sample_negatives",
    "group_by_user",
    "load_dataset",
    "DATASETS",
    "DATASET_SPLITS",
    "DEFAULT_SPLITS",
]

DATASETS = ("synthetic", "ml-100k", "movielens-csv")
DATASET_SPLITS = {
    "synthetic": GENERIC_SPLITS,
    "ml-100k": ML100K_SPLITS,
    "movielens-csv": GENERIC_SPLITS,
}
DEFAULT_SPLITS = {"synthetic": "random", "ml-100k": "u1", "movielens-csv": "random"}


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    seed: int = 0,
    num_negatives: int = 99,
    synthetic_users: int | None = None,
) -> DatasetSplit:
    """Load a dataset by name with its default split; DataError on bad arguments.

    ``synthetic_users`` sizes the synthetic population (None: the generator's default).

    ``data_dir`` is required for the MovieLens datasets and ignored for synthetic.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    split = DEFAULT_SPLITS[name] if split is None else split
    if split not in DATASET_SPLITS[name]:
        raise DataError(
            f"unknown split {split!r} for {name}; expected one of {DATASET_SPLITS[name]}"
        )
    if name == "synthetic":
        sized = {} if synthetic_users is None else {"num_users": synthetic_users}
        return synthetic_split(seed=seed, split=split, num_negatives=num_negatives, **sized)
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs data_dir (the unpacked dataset directory)")
    loader = load_ml100k if name == "ml-100k" else load_movielens_csv
    return loader(data_dir, split=split, seed=seed, num_negatives=num_negatives)
