"""Parsing of delimited rating files and the MovieLens CSV loader.

Shared by the ML-100K loader (tab separated) and the ``ratings.csv`` family
(comma separated, half-star ratings). Every malformed row raises DataError
with file and 1-based line instead of being dropped, because silently losing
rows would bias the federated client partition.
"""

from __future__ import annotations

import csv
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.files import FileRefused, LineTooLong, UndecodableLine, bounded_lines, open_regular

from .columnar import read_rating_columns
from .errors import DataError
from .splits import GENERIC_SPLITS, split_all_ratings
from .types import DatasetSplit, Ratings, Vocabulary

__all__ = [
    "RatingRule",
    "RawRatings",
    "load_movielens_csv",
    "require_dir",
    "require_file",
    "iter_tab_records",
    "iter_csv_records",
    "parse_int",
    "parse_rating_records",
    "read_rating_file",
    "pair_keys",
    "build_vocabulary",
    "encode_ratings",
]

Record = tuple[int, list[str]]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Bounds on what one data file may make us hold: MovieLens-25M's ratings.csv is 678 MB, its
# longest line 60 characters; u.item lines are ~150.
MAX_DATA_FILE_BYTES = 4 * 2**30
MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class RatingRule:
    """Allowed rating values: low..high in multiples of ``step`` from ``low``."""

    low: float
    high: float
    step: float

    def check(self, value: float) -> str | None:
        """Error text for a bad rating, None when it is allowed."""
        if not self.low <= value <= self.high:
            return f"rating {value:g} out of range [{self.low:g}, {self.high:g}]"
        if not ((value - self.low) / self.step).is_integer():
            return f"rating {value:g} is not a multiple of {self.step:g}"
        return None


@dataclass(frozen=True, eq=False)
class RawRatings:
    """Ratings with raw ids plus the source line of each row (for error messages)."""

    path: Path
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def require_dir(path: str | Path) -> Path:
    """Existing directory or DataError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("data directory not found" if not path.exists() else "not a directory", path=path)
    return path


def require_file(path: Path) -> Path:
    """Existing file or DataError naming it."""
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", path=path)
    return path


@contextmanager
def _open_lines(path: Path, encoding: str) -> Iterator[Iterator[str]]:
    """A data file's lines: a regular file of at most MAX_DATA_FILE_BYTES, lines of at most
    MAX_LINE_BYTES, decoded line by line; every defect a DataError naming file and line."""
    try:
        handle = open_regular(path, max_bytes=MAX_DATA_FILE_BYTES, what="data file")
    except FileRefused as error:
        raise DataError(str(error).removeprefix(f"{path}: "), path=path) from None

    def lines() -> Iterator[str]:
        line_no = 0
        source = bounded_lines(handle, max_bytes=MAX_LINE_BYTES, encoding=encoding)
        while True:
            try:
                line = next(source)
            except StopIteration:
                return
            except (LineTooLong, UndecodableLine) as error:
                raise DataError(str(error).split(": ", 1)[1], path=path, line=error.line) from None
            except OSError as error:
                raise DataError(f"cannot read: {error.strerror or error}", path=path, line=line_no + 1) from None
            line_no += 1
            yield line

    with handle:
        yield lines()


def _non_blank(records: Iterable[Record], path: Path) -> Iterator[Record]:
    """Drop trailing blank lines; a blank line followed by data is an error."""
    blank_line: int | None = None
    for line_no, fields in records:
        if not any(f.strip() for f in fields):
            blank_line = blank_line or line_no
            continue
        if blank_line is not None:
            raise DataError("blank line inside the data", path=path, line=blank_line)
        yield line_no, fields


def iter_tab_records(path: Path, *, delimiter: str = "\t", encoding: str = "latin-1") -> Iterator[Record]:
    """(1-based line, fields) for a delimiter-separated file without quoting."""
    with _open_lines(require_file(path), encoding) as lines:
        raw = ((n, line.rstrip("\r\n").split(delimiter)) for n, line in enumerate(lines, 1))
        yield from _non_blank(raw, path)


def iter_csv_records(path: Path, *, header: list[str]) -> Iterator[Record]:
    """(line, fields) for a quoted CSV file whose first row must equal ``header``."""
    with _open_lines(require_file(path), "utf-8-sig") as lines:
        reader = csv.reader(lines)
        try:
            first = next(reader)
        except StopIteration:
            raise DataError("empty file", path=path) from None
        except csv.Error as err:
            raise DataError(f"malformed CSV: {err}", path=path, line=reader.line_num) from None
        if [f.strip() for f in first] != header:
            raise DataError(
                f"expected header {','.join(header)!r}, got {','.join(first)[:200]!r}",
                path=path,
                line=1,
            )

        def rows() -> Iterator[Record]:
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    raise DataError(
                        f"malformed CSV: {err}", path=path, line=reader.line_num
                    ) from None
                yield reader.line_num, fields

        yield from _non_blank(rows(), path)


def parse_int(text: str, what: str, path: Path, line: int) -> int:
    """A decimal integer that fits in 64 bits (ASCII digits, optional sign, surrounding spaces)."""
    digits = text.strip()
    unsigned = digits[1:] if digits[:1] in "+-" else digits
    if not (unsigned.isascii() and unsigned.isdigit()):
        raise DataError(f"{what} {_shown(text)} is not an integer", path=path, line=line)
    # More than 19 significant digits cannot fit (and int() refuses more than 4300 digits, leading
    # zeros included).
    significant = unsigned.lstrip("0") or "0"
    value = (-1 if digits[0] == "-" else 1) * int(significant) if len(significant) <= 19 else INT64_MAX + 1
    if not INT64_MIN <= value <= INT64_MAX:
        raise DataError(f"{what} {_shown(text)} does not fit in 64 bits", path=path, line=line)
    return value


def _parse_rating(text: str, rule: RatingRule, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"rating {_shown(text)} is not a number", path=path, line=line) from None
    problem = rule.check(value)
    if problem:
        raise DataError(problem, path=path, line=line)
    return value


def _shown(text: str, limit: int = 40) -> str:
    """A field as quoted in an error message, shortened if it is long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse_rating_records(
    records: Iterable[Record], path: Path, rule: RatingRule, *, separator_name: str
) -> RawRatings:
    """Validate ``user item rating timestamp`` records into RawRatings.

    Columns are collected in typed arrays (8 or 4 bytes a value, not Python objects: a 200 MB
    file is ~9 M rows) and duplicates are found by one sort afterwards.
    """
    users, items, stamps, lines = array("q"), array("q"), array("q"), array("q")
    values = array("f")
    for line, fields in records:
        if len(fields) != 4:
            raise DataError(
                f"expected 4 {separator_name}-separated fields "
                f"(user, item, rating, timestamp), got {len(fields)}",
                path=path,
                line=line,
            )
        users.append(parse_int(fields[0], "user id", path, line))
        items.append(parse_int(fields[1], "item id", path, line))
        values.append(_parse_rating(fields[2], rule, path, line))
        stamps.append(parse_int(fields[3], "timestamp", path, line))
        lines.append(line)
    if not users:
        raise DataError("empty file: no ratings", path=path)
    raw = RawRatings(
        path=path,
        users=np.frombuffer(users, dtype=np.int64),
        items=np.frombuffer(items, dtype=np.int64),
        ratings=np.frombuffer(values, dtype=np.float32),
        timestamps=np.frombuffer(stamps, dtype=np.int64),
        lines=np.frombuffer(lines, dtype=np.int64),
    )
    _refuse_duplicate_pairs(raw)
    return raw


def _rating_value(rule: RatingRule, path: Path = Path()) -> Callable[[str], float | None]:
    """A rating's value as `_parse_rating` reads it, None where that raises."""

    def value(text: str) -> float | None:
        try:
            return _parse_rating(text, rule, path, 0)
        except DataError:
            return None

    return value


def read_rating_file(path: Path, rule: RatingRule, *, delimiter: str) -> RawRatings:
    """RawRatings of a ``user item rating timestamp`` file: tab separated (ML-100K, no header) or
    comma separated (``ratings.csv``, header CSV_RATINGS_HEADER).

    The columnar fast path (columnar.py) reads the files it can vouch for; any other file is read
    by the line-by-line reader, whose DataError names the file and line.
    """
    if delimiter not in ("\t", ","):
        raise ValueError(f"unsupported delimiter {delimiter!r}")
    require_file(path)
    tab = delimiter == "\t"
    columns = read_rating_columns(
        path,
        delimiter=delimiter.encode(),
        header=None if tab else ",".join(CSV_RATINGS_HEADER).encode(),
        rating_value=_rating_value(rule, path),
        max_file_bytes=MAX_DATA_FILE_BYTES,
        max_line_bytes=MAX_LINE_BYTES,
    )
    if columns is None:
        records = iter_tab_records(path) if tab else iter_csv_records(path, header=CSV_RATINGS_HEADER)
        return parse_rating_records(records, path, rule, separator_name="tab" if tab else "comma")
    raw = RawRatings(path=path, users=columns.users, items=columns.items, ratings=columns.ratings,
                     timestamps=columns.timestamps, lines=columns.lines)
    _refuse_duplicate_pairs(raw)
    return raw


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(user, item) pairs as one structured array, which numpy sorts and searches lexicographically."""
    keys = np.empty(len(users), dtype=[("user", "<i8"), ("item", "<i8")])
    keys["user"], keys["item"] = users, items
    return keys


def _refuse_duplicate_pairs(raw: RawRatings) -> None:
    """DataError at the first line that repeats an earlier (user, item) pair, naming both lines."""
    order = np.argsort(pair_keys(raw.users, raw.items), kind="stable")  # keeps file order within a pair
    same = (raw.users[order][1:] == raw.users[order][:-1]) & (raw.items[order][1:] == raw.items[order][:-1])
    if not same.any():
        return
    repeats = np.flatnonzero(same) + 1  # positions in `order` of rows that repeat their predecessor
    first_repeat = repeats[np.argmin(raw.lines[order[repeats]])]
    group_start = first_repeat
    while group_start > 0 and same[group_start - 1]:
        group_start -= 1
    row, earlier = order[first_repeat], order[group_start]
    raise DataError(
        f"duplicate rating for user {raw.users[row]} item {raw.items[row]} (also on line {raw.lines[earlier]})",
        path=raw.path,
        line=int(raw.lines[row]),
    )


def build_vocabulary(
    raw: RawRatings, titles: dict[int, str] | None
) -> Vocabulary:
    """Vocabulary with raw ids sorted numerically; items also include titled ones."""
    user_ids = np.unique(raw.users)
    title_ids = np.array(sorted(titles), dtype=np.int64) if titles else np.zeros(0, np.int64)
    item_ids = np.unique(np.concatenate([raw.items, title_ids]))
    item_titles = None
    if titles is not None:
        item_titles = tuple(titles.get(i, f"item {i}") for i in item_ids.tolist())
    return Vocabulary(user_raw_ids=user_ids, item_raw_ids=item_ids, item_titles=item_titles)


def _dense(raw_ids: np.ndarray, vocab_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense index, known mask) of raw ids in a sorted vocabulary array."""
    if len(vocab_ids) == 0:
        return np.zeros(len(raw_ids), np.int64), np.zeros(len(raw_ids), bool)
    index = np.searchsorted(vocab_ids, raw_ids)
    clipped = np.minimum(index, len(vocab_ids) - 1)
    return clipped, vocab_ids[clipped] == raw_ids


def encode_ratings(raw: RawRatings, vocab: Vocabulary) -> Ratings:
    """Map raw ids to dense indices; unknown ids raise DataError with the line."""
    users, users_ok = _dense(raw.users, vocab.user_raw_ids)
    items, items_ok = _dense(raw.items, vocab.item_raw_ids)
    for ok, ids, what in ((users_ok, raw.users, "user"), (items_ok, raw.items, "item")):
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"{what} id {ids[bad]} is not in the dataset vocabulary",
                path=raw.path,
                line=int(raw.lines[bad]),
            )
    return Ratings(users=users, items=items, ratings=raw.ratings, timestamps=raw.timestamps)


CSV_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
CSV_MOVIES_HEADER = ["movieId", "title", "genres"]
HALF_STAR = RatingRule(low=0.5, high=5.0, step=0.5)


def read_movies_csv(path: Path) -> dict[int, str]:
    """movieId -> title from ``movies.csv`` (quoted commas handled by csv)."""
    titles: dict[int, str] = {}
    lines: dict[int, int] = {}
    for line, fields in iter_csv_records(path, header=CSV_MOVIES_HEADER):
        if len(fields) != 3:
            raise DataError(
                f"expected 3 comma-separated fields (movieId, title, genres), got {len(fields)}",
                path=path,
                line=line,
            )
        movie = parse_int(fields[0], "movie id", path, line)
        if movie in titles:
            raise DataError(
                f"duplicate movie id {movie} (also on line {lines[movie]})", path=path, line=line
            )
        titles[movie] = fields[1]
        lines[movie] = line
    return titles


def load_movielens_csv(
    data_dir: str | Path, *, split: str = "random", seed: int = 0, num_negatives: int = 99
) -> DatasetSplit:
    """Load ``ratings.csv`` (+ optional ``movies.csv``) and split it."""
    if split not in GENERIC_SPLITS:
        raise DataError(
            f"unknown split {split!r} for movielens-csv; expected one of {GENERIC_SPLITS}"
        )
    root = require_dir(data_dir)
    ratings_path = root / "ratings.csv"
    raw = read_rating_file(ratings_path, HALF_STAR, delimiter=",")
    movies_path = root / "movies.csv"
    titles = read_movies_csv(movies_path) if movies_path.exists() or movies_path.is_symlink() else None
    vocab = build_vocabulary(raw, titles)
    return split_all_ratings(
        "movielens-csv",
        vocab,
        encode_ratings(raw, vocab),
        split=split,
        seed=seed,
        num_negatives=num_negatives,
        rating_scale=(HALF_STAR.low, HALF_STAR.high),
        source=ratings_path,
    )
