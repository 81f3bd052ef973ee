"""Fuzz the device's ratings importer (`edge_client.ratings_file.read_ratings_csv`): any file gives the
list of (item_id, rating) or a DeviceError whose one-line message names the file; valid files import
exactly, and whatever is imported is usable by the model."""

from __future__ import annotations

import csv
import io
import math

import pytest
from fuzzlib import (
    PATH_KINDS,
    VALID_EOLS,
    assert_one_line,
    budget,
    manifests,
    mutated_table,
    place,
    record,
    remark,
    scratch_dir,
    tokens,
    utf8_text,
    whole_file_garbage,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_client import ratings_file
from edge_client.errors import DeviceError
from edge_client.ratings_file import max_file_bytes, read_ratings_csv
from protocol.manifest import Manifest
from tflite_models import bundled_package

pytestmark = pytest.mark.fuzz

BUNDLED = Manifest.read(bundled_package() / "manifest.json")
any_manifest = st.one_of(st.just(BUNDLED), manifests(max_items=30))
csv_cell = utf8_text.filter(lambda t: "\x00" not in t)  # the csv module refuses NUL anywhere in a file
# The importer's line limit (characters or bytes, depending on the version).
LINE_LIMIT = getattr(ratings_file, "MAX_LINE_BYTES", getattr(ratings_file, "MAX_LINE_CHARS", 4096))


def _int_text(draw, value: int) -> str:
    style = draw(st.sampled_from(["plain", "plain", "spaces", "sign", "zeros"]))
    if style == "spaces":
        return f" {value}\t"
    if style == "sign":
        return f"+{value}" if value >= 0 else str(value)
    if style == "zeros":
        return ("-" if value < 0 else "") + f"000{abs(value)}"
    return str(value)


@st.composite
def valid_ratings(draw, manifest: Manifest):
    """(file bytes, expected rows): a subset of the model's items rated within its range, in any
    accepted layout (column names and order, extra columns, quoting, BOM, line ends, blank lines)."""
    chosen = draw(st.lists(st.sampled_from(manifest.item_ids), unique=True, min_size=1,
                           max_size=min(30, manifest.num_items)))
    stars = st.floats(manifest.rating_min, manifest.rating_max, allow_nan=False, allow_infinity=False)
    expected = [(item, draw(stars)) for item in chosen]
    columns = {"item": draw(st.sampled_from(["item_id", "movieId", "ITEM_ID", " MovieID ", "movieid"])),
               "rating": draw(st.sampled_from(["rating", "Rating", " RATING "]))}
    if draw(st.booleans()):
        columns["user"] = draw(st.sampled_from(["userId", "user_id", "USERID"]))
    if draw(st.booleans()):
        columns["timestamp"] = "timestamp"
    if draw(st.booleans()):
        columns["title"] = "title"
    order = draw(st.permutations(list(columns)))
    user = draw(csv_cell)
    rows = []
    for item, rating in expected:
        cells = {"item": _int_text(draw, item),
                 "rating": draw(st.sampled_from([repr(rating), f" {rating!r} ", f"{rating:.17g}"])),
                 "user": draw(st.sampled_from([user, f" {user} "])) if user.strip() == user else user,
                 "timestamp": str(draw(st.integers())), "title": draw(csv_cell)}
        rows.append([cells[c] for c in order])
    eol = draw(st.sampled_from(VALID_EOLS))
    quote_all = draw(st.booleans())

    def line(cells) -> str:
        # csv.writer leaves a lone "\r" unquoted when the line end is "\n" (and the reader then splits
        # the row there), so quoting is done here: every field holding a separator, quote or line break.
        return ",".join('"' + c.replace('"', '""') + '"' if quote_all or set(c) & set(',"\r\n') else c
                        for c in cells) + eol

    out = io.StringIO()
    out.write(line([columns[c] for c in order]))
    for row in rows:
        if draw(st.integers(0, 5)) == 0:
            out.write(draw(st.sampled_from(["", " ", ",,", " , "])) + eol)  # blank lines are skipped
        out.write(line(row))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + out.getvalue()).encode("utf-8"), expected


@settings(max_examples=budget(1.5))
@given(manifest=any_manifest, data=st.data())
def test_valid_files_import_exactly(manifest, data):
    content, expected = data.draw(valid_ratings(manifest))
    remark(f"file: {content[:500]!r}")
    with scratch_dir() as folder:
        path = folder / "ratings.csv"
        path.write_bytes(content)
        assert read_ratings_csv(path, manifest) == expected


@st.composite
def hostile_ratings_file(draw, manifest: Manifest):
    content, _ = draw(valid_ratings(manifest))
    table = [row for row in csv.reader(io.StringIO(content.decode("utf-8-sig"), newline=""))]
    if draw(st.booleans()):
        extra = draw(st.lists(st.one_of(st.integers(-5, 600), st.integers()).map(str), min_size=1, max_size=3))
        table += [[item, draw(tokens)] for item in extra]
    return draw(st.one_of(
        whole_file_garbage(),
        mutated_table(table, sep=",", encoding="utf-8"),
        mutated_table(table, sep=draw(st.sampled_from([";", "\t", "|"])), encoding="utf-8"),
        # More rows than the model has items, or a file larger than the model allows.
        st.integers(1, 3).map(lambda k: b"item_id,rating\n" + b"".join(
            b"%d,3\n" % i for i in list(manifest.item_ids) * (k + 1))),
        st.just(b"item_id,rating\n" + b"1,3" + b" " * (max_file_bytes(manifest) + 1) + b"\n"),
        st.just(b"item_id,rating\n" + b"1," + b"3" * LINE_LIMIT + b"\n"),
        st.just(b'item_id,rating\n1,"' + b"3\n" * (LINE_LIMIT // 2) + b'"\n'),
    ))


def _check_result(rows, manifest: Manifest) -> None:
    """Whatever is imported is usable by the model: known items, once each, finite ratings in range."""
    assert 0 < len(rows) <= manifest.num_items
    assert len({item for item, _ in rows}) == len(rows)
    for item, rating in rows:
        assert type(item) is int and item in manifest.dense_index
        assert math.isfinite(rating) and manifest.rating_min <= rating <= manifest.rating_max


@settings(max_examples=budget(4))
@given(manifest=any_manifest, data=st.data())
@example(manifest=BUNDLED, data=None)
def test_any_file_imports_or_is_refused_naming_the_file(manifest, data):
    content = (b"item_id,rating\n1,nan\n2,\xff\n" if data is None else data.draw(hostile_ratings_file(manifest)))
    remark(f"file: {content[:500]!r}")
    with scratch_dir() as folder:
        path = folder / "my ratings.csv"
        path.write_bytes(content)
        try:
            rows = read_ratings_csv(path, manifest)
        except DeviceError as error:
            record("outcome: DeviceError")
            assert_one_line(str(error), names=path)
            assert str(error).startswith(f"{path}: "), str(error)
            return
    record("outcome: imported")
    _check_result(rows, manifest)


@settings(max_examples=budget(0.3, minimum=len(PATH_KINDS)))
@given(kind=st.sampled_from(PATH_KINDS))
def test_a_ratings_path_of_any_kind_is_refused_naming_it(kind):
    with scratch_dir() as folder:
        path = place(folder / "ratings.csv", kind)
        with pytest.raises(DeviceError) as refused:
            read_ratings_csv(path, BUNDLED)
        assert_one_line(str(refused.value), names=path)


# ---------------------------------------------------------------------------------------------
# Regression test: a product bug this tier found (fixed), with its minimal input

def test_a_ratings_file_with_lone_cr_line_ends_imports():
    """Was refused: 'cannot read: new-line character seen in unquoted field'."""
    with scratch_dir() as folder:
        path = folder / "ratings.csv"
        path.write_bytes(b"item_id,rating\r1,5\r2,3\r")
        assert read_ratings_csv(path, BUNDLED) == [(1, 5.0), (2, 3.0)]
