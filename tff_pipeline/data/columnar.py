"""Columnar fast path for rating files: whole blocks of lines parsed with numpy, no Python per row.

Why: the line-by-line reader (`csv_format.iter_tab_records` / `iter_csv_records` +
`parse_rating_records`) costs 3-7 µs a row, up to a minute for a 200 MB ``u.data`` (~9 M rows);
this path takes ~0.3-0.45 µs a row, duplicate check included (bench/parsing.py).
Here the file is read in blocks of whole lines and each block is split and converted with a few
vectorised numpy passes (field boundaries from the positions of separators and line ends,
integers by accumulating digits column by column, ratings by looking up each distinct spelling
once).

The fast path only *vouches* for files it fully understands: ASCII digits in the id and
timestamp fields (at most 18 of them, so no int64 overflow is possible), digits and dots in the
rating field, exactly four fields a line, ``\\n`` or ``\\r\\n`` line ends, blank lines only at the
end, lines within the line limit, and (for ``ratings.csv``) the exact header, optionally after a
UTF-8 byte-order mark. Anything else (signs, spaces, quotes, non-ASCII bytes, a lone ``\\r``, an
empty field, a blank line inside the data, a rating the rule refuses, an unreadable or refused
file, ...) makes `read_rating_columns` return None, and the caller parses the file again with the
line-by-line reader, which raises the error naming the file and the 1-based line exactly as before
(or accepts the file, with the same result). On files it vouches for, the columns are identical to
what the line-by-line reader builds (same values, dtypes and line numbers).

Only numpy and `protocol.files` are imported: the data package also runs in edge pods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protocol.files import FileRefused, open_regular

__all__ = ["RatingColumns", "read_rating_columns", "BLOCK_BYTES"]

# Bytes read per block; a block's temporaries are several times this (positions are int64).
BLOCK_BYTES = 8 * 2**20
# Longest id/timestamp field we convert: 18 digits cannot overflow int64 (19 may).
MAX_INT_DIGITS = 18
# Longest rating spelling we key on: 8 bytes pack into one uint64.
MAX_RATING_CHARS = 8
# Distinct rating spellings we look up one by one before giving the file to the slow path.
MAX_RATING_SPELLINGS = 4096
# Largest key range (highest minus lowest packed spelling) looked up in a table instead of sorted.
LOOKUP_SPAN = 2**22
UTF8_BOM = b"\xef\xbb\xbf"
NL, CR, DOT = 10, 13, 46


@dataclass(frozen=True, eq=False)
class RatingColumns:
    """The four columns of a rating file plus each row's 1-based line number."""

    users: np.ndarray  # int64
    items: np.ndarray  # int64
    ratings: np.ndarray  # float32
    timestamps: np.ndarray  # int64
    lines: np.ndarray  # int64


class _CannotVouch(Exception):
    """Something the fast path does not handle; the slow path decides."""


def read_rating_columns(
    path: Path,
    *,
    delimiter: bytes,
    header: bytes | None,
    rating_value: Callable[[str], float | None],
    max_file_bytes: int,
    max_line_bytes: int,
    block_bytes: int = BLOCK_BYTES,
) -> RatingColumns | None:
    """The columns of a ``user item rating timestamp`` file, or None if the slow path must read it.

    ``header`` is the exact first line (comma files) or None (tab files, data from line 1);
    ``rating_value`` maps a rating's spelling to its value, None if the slow path refuses it.
    """
    if delimiter not in (b"\t", b","):
        raise ValueError(f"unsupported delimiter {delimiter!r}")
    try:
        handle = open_regular(path, max_bytes=max_file_bytes, what="data file")
    except FileRefused:
        return None
    try:
        with handle:
            reader = _BlockReader(delimiter[0], header, rating_value, max_file_bytes, max_line_bytes)
            return reader.read(handle, block_bytes)
    except (_CannotVouch, OSError):
        return None


class _BlockReader:
    def __init__(self, delimiter: int, header: bytes | None, rating_value: Callable[[str], float | None],
                 max_file_bytes: int, max_line_bytes: int) -> None:
        self.delimiter = delimiter
        self.header = header
        self.rating_value = rating_value
        self.max_file_bytes = max_file_bytes
        self.max_line_bytes = max_line_bytes
        self.allowed = b"0123456789.\r\n" + bytes([delimiter])
        self.row_pattern = np.array([delimiter, delimiter, delimiter, NL], dtype=np.uint8)
        self.spellings: dict[bytes, np.float32] = {}
        self.blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def read(self, handle, block_bytes: int) -> RatingColumns:
        pending = b""
        total = 0
        need_header = self.header is not None
        first_line = next_line = 2 if need_header else 1
        blank_tail = False  # blank lines seen; only more blank lines may follow
        while True:
            chunk = handle.read(block_bytes)
            total += len(chunk)
            if total > self.max_file_bytes:
                raise _CannotVouch
            eof = not chunk
            buf = pending + chunk if pending else chunk
            if need_header:
                cut = buf.find(b"\n")
                if cut < 0:
                    if eof or len(buf) > self.max_line_bytes:
                        raise _CannotVouch
                    pending = buf
                    continue
                first = buf[:cut].removeprefix(UTF8_BOM).removesuffix(b"\r")
                if first != self.header or cut + 1 > self.max_line_bytes:
                    raise _CannotVouch
                buf = buf[cut + 1:]
                need_header = False
            if buf.translate(None, self.allowed):
                raise _CannotVouch  # a byte that is not a digit, dot, separator or line end
            if eof:
                cut = len(buf) - 1
            else:
                cut = buf.rfind(b"\n")
                if cut < 0:
                    if len(buf) > self.max_line_bytes:
                        raise _CannotVouch
                    pending = buf
                    continue
            pending = buf[cut + 1:]
            if len(pending) > self.max_line_bytes:
                raise _CannotVouch
            # buf[:cut + 1] is whole lines: a body of data lines, then a tail of line ends.
            body = _strip_line_ends(buf, cut + 1)
            tail = buf[body:cut + 1]
            if body:
                if blank_tail:
                    raise _CannotVouch  # a blank line inside the data: the slow path names it
                next_line += self._parse(np.frombuffer(buf, dtype=np.uint8, count=body))
                blank_tail = tail not in (b"\n", b"\r\n", b"")
            else:
                blank_tail = blank_tail or bool(tail)
            if tail.replace(b"\r\n", b"").strip(b"\n"):
                raise _CannotVouch  # a lone "\r"
            if eof:
                break
        if not self.blocks:
            raise _CannotVouch  # no ratings: the slow path has the message
        columns = [np.concatenate([block[k] for block in self.blocks]) for k in range(4)]
        self.blocks.clear()
        lines = np.arange(first_line, next_line, dtype=np.int64)
        return RatingColumns(users=columns[0], items=columns[1], ratings=columns[2], timestamps=columns[3],
                             lines=lines)

    def _parse(self, data: np.ndarray) -> int:
        """Parse whole data lines (the last one without its line end); returns the row count."""
        crs = np.flatnonzero(data == CR)
        if crs.size:
            # "\r\n" line ends only (a lone "\r" also ends a line for the slow path): drop the "\r"s.
            if crs[-1] + 1 >= len(data) or not (data[crs + 1] == NL).all():
                raise _CannotVouch
            data = np.delete(data, crs)
        # Only digits (48..57), dots (46), the separator (9 or 44) and "\n" (10) are left.
        ends = np.flatnonzero(data < DOT)
        ends = np.append(ends, len(data))
        if len(ends) % 4:
            raise _CannotVouch
        rows = len(ends) // 4
        kinds = np.append(data[ends[:-1]], np.uint8(NL))
        if not (kinds.reshape(rows, 4) == self.row_pattern).all():
            raise _CannotVouch
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lengths = (ends - starts).reshape(rows, 4)
        if lengths.min() < 1 or lengths[:, 2].max() > MAX_RATING_CHARS:
            raise _CannotVouch
        if max(lengths[:, col].max() for col in (0, 1, 3)) > MAX_INT_DIGITS:
            raise _CannotVouch
        if (ends[3::4] - starts[0::4]).max() + len(b"\r\n") > self.max_line_bytes:
            raise _CannotVouch
        dots = np.flatnonzero(data == DOT)
        if dots.size and not (np.searchsorted(ends, dots) % 4 == 2).all():
            raise _CannotVouch  # a dot outside the rating field
        users = _integers(data, ends[0::4], lengths[:, 0])
        items = _integers(data, ends[1::4], lengths[:, 1])
        ratings = self._ratings(data, starts[2::4], lengths[:, 2])
        stamps = _integers(data, ends[3::4], lengths[:, 3])
        self.blocks.append((users, items, ratings, stamps))
        return rows

    def _ratings(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Each rating spelling packed into a uint64 key; every distinct key checked once."""
        width = int(lengths.max())
        shortest = int(lengths.min())
        keys = np.zeros(len(starts), dtype=np.uint64)
        for k in range(width):
            byte = data.take(starts + k, mode="clip").astype(np.uint64)
            if k >= shortest:
                byte[lengths <= k] = 0
            keys <<= np.uint64(8)
            keys |= byte
        low = int(keys.min())
        span = int(keys.max()) - low + 1
        if span <= LOOKUP_SPAN:  # few spellings close together ("1".."5", "0.5".."5.0"): a table, no sort
            offsets = (keys - np.uint64(low)).astype(np.intp)
            present = np.zeros(span, dtype=bool)
            present[offsets] = True
            seen = np.flatnonzero(present)
            table = np.empty(span, dtype=np.float32)
            table[seen] = self._values([low + offset for offset in seen.tolist()], width)
            return table[offsets]
        distinct, inverse = np.unique(keys, return_inverse=True)
        return self._values(distinct.tolist(), width)[inverse]

    def _values(self, keys: list[int], width: int) -> np.ndarray:
        """The rating value of each packed spelling (float32, as the slow path stores it)."""
        if len(keys) > MAX_RATING_SPELLINGS:
            raise _CannotVouch
        values = np.empty(len(keys), dtype=np.float32)
        for i, key in enumerate(keys):
            spelling = key.to_bytes(width, "big").rstrip(b"\0")
            if spelling not in self.spellings:
                value = self.rating_value(spelling.decode("ascii"))
                if value is None:
                    raise _CannotVouch
                self.spellings[spelling] = np.float32(value)
            values[i] = self.spellings[spelling]
        return values


def _strip_line_ends(buf: bytes, end: int) -> int:
    """Length of buf[:end] without the "\r" and "\n" bytes it ends with."""
    window = buf[max(0, end - 64):end]
    kept = len(window.rstrip(b"\r\n"))
    if kept or len(window) == end:
        return end - len(window) + kept
    data = np.frombuffer(buf, dtype=np.uint8, count=end)
    others = np.flatnonzero((data != NL) & (data != CR))
    return int(others[-1]) + 1 if others.size else 0


def _integers(data: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Decimal fields of ASCII digits (1..18 of them, ending before `ends`) as int64."""
    width = int(lengths.max())
    shortest = int(lengths.min())
    values = np.zeros(len(ends), dtype=np.int64)
    for back in range(width, 0, -1):
        digit = data.take(ends - back, mode="clip")
        digit -= 48
        if back > shortest:
            digit[lengths < back] = 0
        values *= 10
        values += digit
    return values
