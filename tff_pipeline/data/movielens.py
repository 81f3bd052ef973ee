"""MovieLens-100K loader (official u1..u5/ua/ub splits, random and leave-one-out).

The vocabulary is always built from ``u.data`` + ``u.item`` so dense indices
are identical across splits, which keeps checkpoints and TFLite exports
comparable between experiments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .csv_format import (
    RatingRule,
    RawRatings,
    build_vocabulary,
    encode_ratings,
    iter_tab_records,
    pair_keys,
    parse_int,
    read_rating_file,
    require_dir,
)
from .errors import DataError
from .splits import GENERIC_SPLITS, TooFewUnratedItems, ranking_task, split_all_ratings
from .types import DatasetSplit, Ratings, Vocabulary

__all__ = ["load_ml100k", "ML100K_SPLITS", "OFFICIAL_SPLITS"]

OFFICIAL_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
ML100K_SPLITS = OFFICIAL_SPLITS + GENERIC_SPLITS
INTEGER_STARS = RatingRule(low=1.0, high=5.0, step=1.0)
RATING_SCALE = (1.0, 5.0)


def _read_ratings(path: Path) -> RawRatings:
    return read_rating_file(path, INTEGER_STARS, delimiter="\t")


def _read_titles(path: Path) -> dict[int, str] | None:
    """item id -> title from pipe-separated latin-1 ``u.item``; None if absent."""
    if not (path.exists() or path.is_symlink()):  # a dangling link is refused when read, not skipped
        return None
    titles: dict[int, str] = {}
    lines: dict[int, int] = {}
    for line, fields in iter_tab_records(path, delimiter="|"):
        if len(fields) < 2:
            raise DataError(
                f"expected at least 2 '|'-separated fields (id, title), got {len(fields)}",
                path=path,
                line=line,
            )
        item = parse_int(fields[0], "item id", path, line)
        if item in titles:
            raise DataError(
                f"duplicate item id {item} (also on line {lines[item]})", path=path, line=line
            )
        titles[item] = fields[1]
        lines[item] = line
    return titles


def _find_pairs(haystack: RawRatings, needles: RawRatings) -> np.ndarray:
    """Row of `haystack` holding each needle's (user, item) pair, -1 where none does (vectorised:
    a data file may hold millions of rows)."""
    keys = pair_keys(haystack.users, haystack.items)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    wanted = pair_keys(needles.users, needles.items)
    position = np.minimum(np.searchsorted(sorted_keys, wanted), len(order) - 1)
    found = sorted_keys[position] == wanted
    return np.where(found, order[position], -1)


def _check_subset(part: RawRatings, full: RawRatings) -> None:
    """Every row of an official split file must be a row of u.data."""
    row = _find_pairs(full, part)
    safe = np.maximum(row, 0)
    same = (row >= 0) & (full.ratings[safe] == part.ratings) & (full.timestamps[safe] == part.timestamps)
    if same.all():
        return
    bad = int(np.flatnonzero(~same)[0])
    raise DataError(
        f"rating (user {part.users[bad]}, item {part.items[bad]}, rating {part.ratings[bad]:g}, "
        f"timestamp {part.timestamps[bad]}) is not in {full.path.name}",
        path=part.path,
        line=int(part.lines[bad]),
    )


def _check_disjoint(train: RawRatings, test: RawRatings) -> None:
    """A (user, item) pair in both files would leak test labels into training."""
    row = _find_pairs(train, test)
    if (row < 0).all():
        return
    bad = int(np.flatnonzero(row >= 0)[0])
    raise DataError(
        f"user {test.users[bad]} item {test.items[bad]} is also in {train.path.name} "
        f"line {train.lines[row[bad]]} (train/test leakage)",
        path=test.path,
        line=int(test.lines[bad]),
    )


def _official_split(
    root: Path,
    split: str,
    full: RawRatings,
    vocab: Vocabulary,
    all_ratings: Ratings,
    seed: int,
    num_negatives: int,
) -> DatasetSplit:
    train_raw = _read_ratings(root / f"{split}.base")
    test_raw = _read_ratings(root / f"{split}.test")
    for part in (train_raw, test_raw):
        _check_subset(part, full)
    _check_disjoint(train_raw, test_raw)
    train = encode_ratings(train_raw, vocab)
    test = encode_ratings(test_raw, vocab)
    try:
        ranking = ranking_task(test, all_ratings, vocab.num_items, num_negatives=num_negatives, seed=seed,
                               protocol=f"not the standard protocol: each user's latest rating in {split}.test, "
                                        "ranked against 99 never-interacted items")
    except TooFewUnratedItems as error:
        raise error.for_user(vocab.user_raw_ids[error.user_index], full.path) from None
    return DatasetSplit(
        name=f"ml-100k/{split}",
        vocab=vocab,
        train=train,
        test=test,
        ranking=ranking,
        rating_scale=RATING_SCALE,
    )


def load_ml100k(
    data_dir: str | Path, *, split: str = "u1", seed: int = 0, num_negatives: int = 99
) -> DatasetSplit:
    """Load MovieLens-100K from the unpacked ``ml-100k`` directory."""
    if split not in ML100K_SPLITS:
        raise DataError(f"unknown split {split!r} for ml-100k; expected one of {ML100K_SPLITS}")
    root = require_dir(data_dir)
    full = _read_ratings(root / "u.data")
    vocab = build_vocabulary(full, _read_titles(root / "u.item"))
    all_ratings = encode_ratings(full, vocab)
    if split in GENERIC_SPLITS:
        return split_all_ratings(
            "ml-100k",
            vocab,
            all_ratings,
            split=split,
            seed=seed,
            num_negatives=num_negatives,
            rating_scale=RATING_SCALE,
            source=full.path,
        )
    return _official_split(root, split, full, vocab, all_ratings, seed, num_negatives)
