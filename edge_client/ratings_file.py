"""Reading a user's ratings file: every line is checked before anything is stored.

Accepted: a header naming an item column (`item_id`, or MovieLens' `movieId`) and `rating`, with
optional other columns (`userId`, `timestamp`); one user per file. Errors name the file, the
line and the bad value; at most a few are listed.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.errors import DeviceError
from protocol.files import FileRefused, FileTooLarge, LineTooLong, UndecodableLine, bounded_lines, open_regular
from protocol.manifest import Manifest

ITEM_COLUMNS = ("item_id", "movieid")  # header names, compared case-insensitively
USER_COLUMNS = ("user_id", "userid")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_REPORTED_ERRORS = 5
MAX_LINE_BYTES = 4096
# Size allowance per item of the model (a row with a timestamp and a title is ~100 bytes).
_ROW_ALLOWANCE = 512
_HEADER_ALLOWANCE = 64 * 1024


def parse_item_id(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"item id {value!r} is not an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"item id {str(value)!r} is not an integer")
    return int(text)


def parse_rating(value: Any, manifest: Manifest) -> float:
    if isinstance(value, bool):
        raise TypeError(f"rating {value!r} is not a number")
    if isinstance(value, (int, float, np.integer, np.floating)):
        rating = float(value)
    else:
        try:
            rating = float(str(value).strip())
        except ValueError:
            raise ValueError(f"rating {str(value)!r} is not a number") from None
    if not math.isfinite(rating):
        raise ValueError(f"rating {value!r} is not a number")
    if not manifest.rating_min <= rating <= manifest.rating_max:
        raise ValueError(f"rating {value!r} is outside [{manifest.rating_min:g}, {manifest.rating_max:g}]")
    return rating


def check_known(raw_id: int, manifest: Manifest) -> None:
    if raw_id not in manifest.dense_index:
        raise ValueError(f"item id {raw_id} is not in the active model's vocabulary (model {manifest.model_version})")


def max_file_bytes(manifest: Manifest) -> int:
    """The largest ratings file worth reading for this model: one user rates each item at most
    once, so a file is refused by its size alone (at once) when it could not be one user's."""
    return _HEADER_ALLOWANCE + manifest.num_items * _ROW_ALLOWANCE


def read_ratings_csv(path: Path, manifest: Manifest) -> list[tuple[int, float]]:
    """Parse and check every line; raise DeviceError naming the file, lines and values if any is bad.

    The file's size is bounded by the model (`max_file_bytes`), it is read line by line, and
    reading stops once it holds more rows than the model has items.
    """
    try:
        handle = open_regular(path, max_bytes=max_file_bytes(manifest), what="ratings file")
    except FileTooLarge as error:
        raise DeviceError(f"{error}: one user's ratings of the model's {manifest.num_items} items cannot be that "
                          "large; is it a whole data set?") from None
    except FileRefused as error:
        raise DeviceError(str(error)) from None
    with handle:
        try:
            lines = bounded_lines(handle, max_bytes=MAX_LINE_BYTES, encoding="utf-8-sig")
            return _parse(path, _numbered_rows(csv.reader(lines)), manifest)
        except (LineTooLong, UndecodableLine) as error:
            raise DeviceError(f"{path}: {error}") from None
        except (OSError, csv.Error) as error:
            raise DeviceError(f"{path}: cannot read: {error}") from None


def _parse(path: Path, lines: Iterator[tuple[int, list[str]]], manifest: Manifest) -> list[tuple[int, float]]:
    header_line, header = next(lines, (1, []))
    if not header:
        raise DeviceError(f"{path}: the file is empty (expected a header item_id,rating)")
    names = [name.strip().lower() for name in header]
    item_col = next((names.index(n) for n in ITEM_COLUMNS if n in names), None)
    if item_col is None or "rating" not in names:
        shown = ",".join(header)
        raise DeviceError(f"{path}: line {header_line}: the header must name an item_id (or movieId) column and a "
                          f"rating column, got {shown[:200]!r}")
    rating_col = names.index("rating")
    user_col = next((names.index(n) for n in USER_COLUMNS if n in names), None)
    errors: list[str] = []
    rows: list[tuple[int, float]] = []
    seen: dict[int, int] = {}
    users: set[str] = set()
    for line, fields in lines:
        if not any(field.strip() for field in fields):
            continue
        if len(rows) + len(errors) >= manifest.num_items:
            raise DeviceError(f"{path}: line {line}: more ratings than the model has items ({manifest.num_items}); "
                              "a device holds one user's ratings, each item once")
        if len(fields) != len(header):
            errors.append(f"line {line}: expected {len(header)} fields, got {len(fields)}")
            continue
        try:
            raw_id = parse_item_id(fields[item_col])
            rating = parse_rating(fields[rating_col], manifest)
            check_known(raw_id, manifest)
            if raw_id in seen:
                raise ValueError(f"item id {raw_id} appears twice (first on line {seen[raw_id]})")
        except (TypeError, ValueError) as error:
            errors.append(f"line {line}: {error}")
            continue
        if user_col is not None:
            users.add(fields[user_col].strip())
        seen[raw_id] = line
        rows.append((raw_id, rating))
    if len(users) > 1 and user_col is not None:
        errors.append(f"the file holds ratings of {len(users)} users (column {header[user_col]!r}); "
                      "a device holds one user's ratings")
    if errors:
        more = len(errors) - _MAX_REPORTED_ERRORS
        shown = "; ".join(errors[:_MAX_REPORTED_ERRORS]) + (f"; and {more} more" if more > 0 else "")
        raise DeviceError(f"{path}: nothing imported: {shown}")
    if not rows:
        raise DeviceError(f"{path}: no ratings after the header")
    return rows


def _numbered_rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each CSV record; the number is the record's first line."""
    line = 1
    for fields in reader:
        yield line, fields
        line = reader.line_num + 1
