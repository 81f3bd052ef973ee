"""The columnar fast path for rating files (tff_pipeline/data/columnar.py) against the line-by-line reader.

On files the fast path vouches for, its columns must be the slow path's, value for value, dtype for
dtype, line number for line number. On anything else it must decline (return None), so that
`read_rating_file` raises exactly the slow path's DataError (same file, same 1-based line, same text)
or, for valid spellings the fast path does not handle, returns the slow path's result.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tff_pipeline.data import DataError, csv_format, load_ml100k, load_movielens_csv
from tff_pipeline.data.columnar import read_rating_columns
from tff_pipeline.data.csv_format import (
    CSV_RATINGS_HEADER,
    HALF_STAR,
    iter_csv_records,
    iter_tab_records,
    parse_rating_records,
    read_rating_file,
)
from tff_pipeline.data.movielens import INTEGER_STARS

COLUMNS = ("users", "items", "ratings", "timestamps", "lines")
HEADER = "userId,movieId,rating,timestamp"
TAB = {"delimiter": "\t", "rule": INTEGER_STARS}
CSV = {"delimiter": ",", "rule": HALF_STAR}
# Block sizes that put block boundaries everywhere: inside fields, on separators, between "\r" and "\n".
BLOCKS = [1, 3, 7, 64, 2**20]


def slow(path: Path, delimiter: str, rule):
    """Today's reader, line by line."""
    if delimiter == "\t":
        return parse_rating_records(iter_tab_records(path), path, rule, separator_name="tab")
    return parse_rating_records(iter_csv_records(path, header=CSV_RATINGS_HEADER), path, rule, separator_name="comma")


def fast(path: Path, delimiter: str, rule, block_bytes: int = 2**20):
    """The fast path alone: columns, or None where it declines."""
    return read_rating_columns(
        path,
        delimiter=delimiter.encode(),
        header=None if delimiter == "\t" else HEADER.encode(),
        rating_value=csv_format._rating_value(rule),
        max_file_bytes=csv_format.MAX_DATA_FILE_BYTES,
        max_line_bytes=csv_format.MAX_LINE_BYTES,
        block_bytes=block_bytes,
    )


def assert_same_columns(got, want) -> None:
    for name in COLUMNS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert np.array_equal(a, b), (name, a[:10], b[:10])


def slow_error(path: Path, delimiter: str, rule) -> DataError:
    with pytest.raises(DataError) as caught:
        slow(path, delimiter, rule)
    return caught.value


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


TAB_ROWS = ["1\t10\t4\t881250949", "1\t20\t1\t881250950", "2\t10\t5\t874965758", "3\t7\t3\t0"]
CSV_ROWS = ["1,10,4.5,964982703", "1,20,0.5,964981247", "2,10,5.0,964983815", "2,40,1,964982931", "3,20,3.5,1"]


def tab_file(rows=TAB_ROWS, eol: str = "\n", end: str | None = None) -> bytes:
    return (eol.join(rows) + (eol if end is None else end)).encode("latin-1")


def csv_file(rows=CSV_ROWS, eol: str = "\n", end: str | None = None, bom: bool = False) -> bytes:
    text = eol.join([HEADER, *rows]) + (eol if end is None else end)
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


# ---------------------------------------------------------------- valid files: identical columns

VALID = [
    pytest.param(TAB, tab_file(), id="tab"),
    pytest.param(TAB, tab_file(eol="\r\n"), id="tab-crlf"),
    pytest.param(TAB, tab_file(end=""), id="tab-no-final-newline"),
    pytest.param(TAB, tab_file(eol="\r\n", end=""), id="tab-crlf-no-final-newline"),
    pytest.param(TAB, tab_file(end="\n\n\n"), id="tab-trailing-blank-lines"),
    pytest.param(TAB, tab_file(eol="\r\n", end="\r\n\r\n\n"), id="tab-trailing-blank-crlf"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS[:2], "1\t30\t2\t9\r"], eol="\n"), id="tab-mixed-crlf-last-row"),
    pytest.param(TAB, tab_file(rows=["007\t0010\t3.0\t000000000000000001", "123456789012345678\t1\t5.\t999999999999999999",
                                     "0\t0\t05\t0", "8\t9\t1.000\t42"]), id="tab-zeros-wide-and-float-spellings"),
    pytest.param(TAB, tab_file(rows=["1\t1\t1\t1"]), id="tab-one-row"),
    pytest.param(CSV, csv_file(), id="csv"),
    pytest.param(CSV, csv_file(eol="\r\n"), id="csv-crlf"),
    pytest.param(CSV, csv_file(end=""), id="csv-no-final-newline"),
    pytest.param(CSV, csv_file(bom=True), id="csv-bom"),
    pytest.param(CSV, csv_file(end="\n\n"), id="csv-trailing-blank-lines"),
    pytest.param(CSV, csv_file(rows=["1,2,.5,3", "4,5,4.50,6", "7,8,05.0,9"]), id="csv-rating-spellings"),
]


@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize(("fmt", "data"), VALID)
def test_valid_files_identical(tmp_path: Path, fmt: dict, data: bytes, block_bytes: int) -> None:
    path = write(tmp_path, "ratings", data)
    want = slow(path, **fmt)
    got = fast(path, **fmt, block_bytes=block_bytes)
    assert got is not None, "the fast path declined a file it should read"
    assert_same_columns(got, want)
    assert_same_columns(read_rating_file(path, **fmt), want)


@pytest.mark.parametrize("block_bytes", [97, 4096, 2**20])
@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_random_valid_files_identical(tmp_path: Path, delimiter: str, block_bytes: int) -> None:
    """Thousands of rows with ids and timestamps of 1..18 digits, leading zeros, every allowed rating."""
    rng = np.random.default_rng(7)
    n = 5000
    digits = rng.integers(1, 19, size=(n, 3))
    digits[:, 0] = np.minimum(digits[:, 0], 13)  # the user id gets the row number appended
    numbers = [[str(rng.integers(0, 10 ** int(d))).zfill(int(d)) for d in row] for row in digits]
    users = [f"{u}{i:05d}" for i, (u, _, _) in enumerate(numbers)]  # unique pairs: the row number ends the id
    if delimiter == "\t":
        ratings = rng.choice(["1", "2", "3", "4", "5", "3.0", "05"], size=n)
    else:
        ratings = rng.choice(["0.5", "1", "1.5", "2.0", "2.5", "3", "3.5", "4.0", "4.5", "5", "5.0"], size=n)
    rows = [delimiter.join([u, it, r, ts]) for u, (_, it, ts), r in zip(users, numbers, ratings)]
    data = tab_file(rows, eol="\r\n") if delimiter == "\t" else csv_file(rows)
    fmt = TAB if delimiter == "\t" else CSV
    path = write(tmp_path, "ratings", data)
    got = fast(path, **fmt, block_bytes=block_bytes)
    assert got is not None
    assert_same_columns(got, slow(path, **fmt))
    assert len(got.users) == n and got.lines[-1] == (n if delimiter == "\t" else n + 1)


def test_loaders_use_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the line-by-line readers broken, valid files still load: the fast path read them."""

    def broken(*args, **kwargs):
        raise AssertionError("the slow path was used")

    monkeypatch.setattr(csv_format, "iter_tab_records", broken)
    monkeypatch.setattr(csv_format, "iter_csv_records", broken)
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "u.data").write_bytes(tab_file())
    assert len(load_ml100k(ml, split="random", num_negatives=0).train) > 0
    lens = tmp_path / "csv"
    lens.mkdir()
    (lens / "ratings.csv").write_bytes(csv_file())
    assert len(load_movielens_csv(lens, split="random", num_negatives=0).train) > 0


# ---------------------------------------------------------------- valid for the slow path only: same result

FALLBACK_VALID = [
    pytest.param(TAB, tab_file(rows=[" 1\t10\t4\t5", "2 \t10\t5\t6"]), id="tab-spaces"),
    pytest.param(TAB, tab_file(rows=["+1\t10\t4\t-5", "2\t10\t5\t6"]), id="tab-signs"),
    pytest.param(TAB, tab_file(eol="\r"), id="tab-lone-cr-line-ends"),
    pytest.param(TAB, tab_file(rows=["1\t10\t4\t1234567890123456789"]), id="tab-19-digit-timestamp"),
    pytest.param(TAB, tab_file(end="\n \t \n"), id="tab-trailing-whitespace-line"),
    pytest.param(TAB, tab_file(rows=["1\t10\t4e0\t5"]), id="tab-exponent-rating"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\t3\t4\r\r"]), id="tab-cr-cr-lf-at-end"),
    pytest.param(CSV, csv_file(rows=['"1",10,4.5,5', "2,10,5,6"]), id="csv-quoted-field"),
    pytest.param(CSV, HEADER.replace(",", ", ").encode() + b"\n1,2,3,4\n", id="csv-header-spaces"),
    pytest.param(CSV, csv_file(rows=["1,2,3,4", ",,,"]), id="csv-trailing-empty-fields-line"),
]


@pytest.mark.parametrize(("fmt", "data"), FALLBACK_VALID)
def test_fast_path_declines_but_result_is_the_slow_one(tmp_path: Path, fmt: dict, data: bytes) -> None:
    path = write(tmp_path, "ratings", data)
    assert fast(path, **fmt) is None
    assert_same_columns(read_rating_file(path, **fmt), slow(path, **fmt))


# ---------------------------------------------------------------- bad files: the slow path's exact error

LONG = "9" * 70_000  # over MAX_LINE_BYTES (64 KiB)

BAD = [
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\t3", *TAB_ROWS[2:]]), 2, id="tab-three-fields"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\t3\t4\t5"]), 2, id="tab-five-fields"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS, "x\t2\t3\t100"]), 5, id="tab-user-not-int"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2.0\t3\t100"]), 2, id="tab-item-with-dot"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS[:3], "3\t7\t3\t1e9"]), 4, id="tab-timestamp-exponent"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t\t3\t100"]), 2, id="tab-empty-field"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t7\tfive\t100"]), 2, id="tab-rating-word"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t7\t.\t100"]), 2, id="tab-rating-dot"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t7\t3..0\t100"]), 2, id="tab-rating-two-dots"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "2\t7\t7\t100"]), 2, id="tab-rating-out-of-range"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "2\t7\t0\t100"]), 2, id="tab-rating-zero"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS, "1\t7\t3.5\t100"]), 5, id="tab-rating-not-multiple"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t7\tnan\t100"]), 2, id="tab-rating-nan"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t7\t123456789\t100"]), 2, id="tab-rating-long"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS[:2], "", *TAB_ROWS[2:]]), 3, id="tab-blank-line-inside"),
    pytest.param(TAB, tab_file(rows=["", *TAB_ROWS]), 1, id="tab-blank-first-line"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS[:2], "\t\t\t", *TAB_ROWS[2:]]), 3, id="tab-separators-only-line"),
    pytest.param(TAB, tab_file(rows=TAB_ROWS, eol="\r\n", end="\r\n\r\n") + b"5\t1\t1\t1\n", 5,
                 id="tab-blank-crlf-then-data"),
    pytest.param(TAB, tab_file(rows=[*TAB_ROWS, "1\t10\t2\t5"]), 5, id="tab-duplicate-pair"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "\xe9\t1\t1\t1"]), 2, id="tab-latin1-byte"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\t3\t4\x00"]), 2, id="tab-nul-byte"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\r3\t4\t5"]), 2, id="tab-lone-cr-inside-field"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\t3\t4\r\r", TAB_ROWS[2]]), 3, id="tab-cr-cr-lf-then-data"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], f"1\t2\t3\t{LONG}"]), 2, id="tab-over-long-line"),
    pytest.param(TAB, tab_file(rows=[TAB_ROWS[0], "1\t2\t3\t1234567890123456789012"]), 2,
                 id="tab-timestamp-over-64-bits"),
    pytest.param(TAB, LONG.encode(), 1, id="tab-no-line-break-at-all"),
    pytest.param(TAB, b"", None, id="tab-empty-file"),
    pytest.param(TAB, b"\n\n", None, id="tab-only-blank-lines"),
    pytest.param(CSV, csv_file(rows=[*CSV_ROWS[:2], "1,40,3.3,964982224"]), 4, id="csv-not-half-star"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], "2,40,5.5,9"]), 3, id="csv-above-5"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], "1,20,4.0"]), 3, id="csv-three-fields"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], "1,20,4.0,5,"]), 3, id="csv-trailing-comma"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], '1,"20,4.0",5']), 3, id="csv-quoted-comma"),
    pytest.param(CSV, csv_file(rows=[*CSV_ROWS, "3,60,4.0,soon"]), 7, id="csv-timestamp-word"),
    pytest.param(CSV, csv_file(rows=[*CSV_ROWS, "1,20,4.0,964982400"]), 7, id="csv-duplicate-pair"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], "", *CSV_ROWS[1:]]), 3, id="csv-blank-line-inside"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], "1,2,3,4\xff"]).replace(b"\xc3\xbf", b"\xff"), 3,
                 id="csv-not-utf8"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], "1,2,3,4\u00e9"]), 3, id="csv-utf8-letter"),
    pytest.param(CSV, csv_file(rows=[CSV_ROWS[0], f"1,2,3,{LONG}"]), 3, id="csv-over-long-line"),
    pytest.param(CSV, b"user,item,rating,ts\n1,2,3,4\n", 1, id="csv-bad-header"),
    pytest.param(CSV, HEADER.encode() + b"\n", None, id="csv-header-only"),
    pytest.param(CSV, b"", None, id="csv-empty-file"),
    pytest.param(CSV, csv_file(bom=True, rows=[CSV_ROWS[0], "x,1,1,1"]), 3, id="csv-bom-then-bad-row"),
]


@pytest.mark.parametrize(("fmt", "data", "line"), BAD)
def test_bad_files_raise_the_slow_paths_error(tmp_path: Path, fmt: dict, data: bytes, line: int | None) -> None:
    path = write(tmp_path, "ratings", data)
    want = slow_error(path, **fmt)
    assert want.line == line, str(want)  # the case hits the line it means to
    with pytest.raises(DataError) as got:
        read_rating_file(path, **fmt)
    assert (str(got.value), got.value.path, got.value.line) == (str(want), want.path, want.line)


@pytest.mark.parametrize("block_bytes", BLOCKS)
@pytest.mark.parametrize(("fmt", "data", "line"), [case for case in BAD if "duplicate" not in case.id])
def test_fast_path_declines_bad_files(tmp_path: Path, fmt: dict, data: bytes, line: int | None,
                                      block_bytes: int) -> None:
    """Whatever the block boundaries, the fast path never reads a file the slow path refuses."""
    path = write(tmp_path, "ratings", data)
    assert fast(path, **fmt, block_bytes=block_bytes) is None


def test_duplicate_found_on_the_fast_path(tmp_path: Path) -> None:
    """A repeated (user, item) pair is valid line by line: the fast path reads it, the shared check refuses it."""
    path = write(tmp_path, "u.data", tab_file(rows=[*TAB_ROWS, "1\t10\t2\t5"]))
    assert fast(path, **TAB) is not None
    with pytest.raises(DataError, match=r"u\.data line 5: duplicate rating for user 1 item 10 \(also on line 1\)"):
        read_rating_file(path, **TAB)


# ---------------------------------------------------------------- refused files: same message, no read

def test_refused_files_same_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {"missing": tmp_path / "missing", "folder": tmp_path / "folder", "fifo": tmp_path / "fifo"}
    cases["folder"].mkdir()
    os.mkfifo(cases["fifo"])
    big = write(tmp_path, "big", tab_file())
    for path in cases.values():
        assert fast(path, **TAB) is None
    monkeypatch.setattr(csv_format, "MAX_DATA_FILE_BYTES", 10)
    assert fast(big, **TAB) is None
    for path in [*cases.values(), big]:
        for fmt in (TAB, CSV):
            want = slow_error(path, **fmt)
            with pytest.raises(DataError) as got:
                read_rating_file(path, **fmt)
            assert (str(got.value), got.value.line) == (str(want), want.line)
            assert str(got.value).startswith(f"{path}:"), str(got.value)
    with pytest.raises(DataError, match=r"big: \d+ bytes, more than the 10 a data file may have"):
        read_rating_file(big, **TAB)
