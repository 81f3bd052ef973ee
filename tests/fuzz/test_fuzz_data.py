"""Fuzz the data loaders (`load_ml100k`, `load_movielens_csv`): any file content gives a DatasetSplit or a
DataError whose one-line message names the file (and a line inside it); valid files round-trip."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from fuzzlib import (
    FILE_KINDS,
    INT64_MAX,
    INT64_MIN,
    INT_DIGIT_LIMIT,
    PATH_KINDS,
    VALID_EOLS,
    assert_one_line,
    budget,
    count_lines,
    latin1_text,
    mutated_table,
    place,
    record,
    remark,
    scratch_dir,
    utf8_text,
    whole_file_garbage,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tff_pipeline.data import DataError, DatasetSplit, load_ml100k, load_movielens_csv

pytestmark = pytest.mark.fuzz

# ---------------------------------------------------------------------------------------------
# Valid tables

ids = st.one_of(st.integers(1, 3), st.integers(1, 30), st.integers(INT64_MIN, INT64_MAX))
timestamps = st.one_of(st.integers(0, 2_000_000_000), st.integers(INT64_MIN, INT64_MAX),
                       st.sampled_from([INT64_MIN, INT64_MIN + 1, INT64_MAX, -1, 0]))
# Ranking negatives per test user; more than a user's unrated items is a DataError naming the file.
num_negatives = st.integers(0, 3)


@st.composite
def rating_rows(draw, *, half_stars: bool, min_size: int = 1, max_size: int = 40):
    """Unique (user, item) pairs with a rating and a timestamp (raw values)."""
    pairs = draw(st.lists(st.tuples(ids, ids), min_size=min_size, max_size=max_size, unique=True))
    stars = st.integers(1, 10).map(lambda k: k / 2) if half_stars else st.integers(1, 5).map(float)
    return [(u, i, draw(stars), draw(timestamps)) for u, i in pairs]


def _int_text(draw, value: int) -> str:
    """An integer as a file may spell it: plain, padded, signed or zero-filled (all accepted)."""
    style = draw(st.sampled_from(["plain", "plain", "spaces", "sign", "zeros"]))
    if style == "spaces":
        return f" {value} "
    if style == "sign" and value >= 0:
        return f"+{value}"
    if style == "zeros" and value >= 0:
        return f"{value:06d}"
    return str(value)


def _rating_text(draw, value: float) -> str:
    return draw(st.sampled_from([repr(value), f"{value:g}", f"{value:.3f}", f"{value:e}", f" {value!r}"]))


@st.composite
def spelled_rows(draw, rows):
    return [[_int_text(draw, u), _int_text(draw, i), _rating_text(draw, r), _int_text(draw, t)] for u, i, r, t in rows]


def tsv(rows, eol: str = "\n") -> bytes:
    return "".join("\t".join(map(str, r)) + eol for r in rows).encode("latin-1")


# ---------------------------------------------------------------------------------------------
# The contract

def _check_refusal(error: DataError, folder: Path, written: dict[str, bytes]) -> None:
    """A DataError's message is one line naming a file of the data folder (and a line within it)."""
    message = str(error)
    assert error.path is not None, f"DataError names no file: {message!r}"
    path = Path(error.path)
    assert path.parent == folder and (path.name in written or path.name in ("u1.base", "u1.test")), message
    assert message.startswith(f"{path}"), message
    assert_one_line(message, names=path)
    if error.line is not None and path.name in written:
        assert 1 <= error.line <= count_lines(written[path.name]), (error.line, message)


def _load(loader, folder: Path, written: dict[str, bytes], **kwargs) -> DatasetSplit | None:
    for name, data in written.items():
        (folder / name).write_bytes(data)
    remark(f"files: { {k: v[:300] for k, v in written.items()} }, args: {kwargs}")
    try:
        split = loader(folder, **kwargs)
    except DataError as error:
        record("outcome: DataError")
        _check_refusal(error, folder, written)
        return None
    record("outcome: loaded")
    assert isinstance(split, DatasetSplit)
    return split


def _raw_rows(split: DatasetSplit):
    """Train + test rows with raw ids, as (user, item, rating, timestamp) tuples."""
    rows = []
    for part in (split.train, split.test):
        users = split.vocab.user_raw_ids[part.users].tolist()
        items = split.vocab.item_raw_ids[part.items].tolist()
        rows += list(zip(users, items, part.ratings.tolist(), part.timestamps.tolist()))
    return rows


def _as_float32(rows):
    return [(u, i, float(np.float32(r)), t) for u, i, r, t in rows]


# ---------------------------------------------------------------------------------------------
# Any content

@st.composite
def ml100k_folder(draw):
    """File contents for an ml-100k folder: garbage or mutated valid files; u.item and the u1 files optional."""
    rows = draw(rating_rows(half_stars=False, max_size=25))
    files: dict[str, bytes] = {}
    data_rows = draw(spelled_rows(rows))
    files["u.data"] = draw(st.one_of(mutated_table(data_rows, sep="\t", encoding="latin-1"), whole_file_garbage()))
    if draw(st.booleans()):
        items = sorted({i for _, i, _, _ in rows} | set(draw(st.lists(ids, max_size=5))))
        item_rows = [[str(i), draw(latin1_text.filter(lambda t: "|" not in t and "\n" not in t and "\r" not in t)),
                      "01-Jan-1995", "", "http://x"] for i in items]
        files["u.item"] = draw(st.one_of(mutated_table(item_rows, sep="|", encoding="latin-1"), whole_file_garbage()))
    if draw(st.booleans()):
        in_test = draw(st.lists(st.booleans(), min_size=len(data_rows), max_size=len(data_rows)))
        base = [r for r, t in zip(data_rows, in_test) if not t]
        test = [r for r, t in zip(data_rows, in_test) if t]
        files["u1.base"] = draw(mutated_table(base, sep="\t", encoding="latin-1", max_mutations=2))
        files["u1.test"] = draw(mutated_table(test, sep="\t", encoding="latin-1", max_mutations=2))
    # The official split is asked for when its files are there (else it is refused at once), mostly.
    split = draw(st.sampled_from(["u1", "u1", "u1", "random"] if "u1.base" in files else ["random", "loo", "loo", "u1"]))
    return files, split


@settings(max_examples=budget(2))
@given(folder=ml100k_folder(), seed=st.integers(0, 3), negatives=num_negatives)
@example(folder=({"u.data": b"1\t1\t5\t0\n" * 2}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"\x001\t1\t5\t0\n"}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"1\t1\t5\t0\n\n1\t2\t5\t0\n"}, "loo"), seed=0, negatives=0)
@example(folder=({"u.data": b"1\t1\tnan\t0\n"}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"1\t1\t5\t%d\n" % 2**63}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"1\t1\t5\t0\n", "u.item": b"1|a\n1|b\n"}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"1\t1\t5\t0\n" + b"x" * 70000}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"1" * (INT_DIGIT_LIMIT + 1) + b"\t1\t5\t0\n"}, "random"), seed=0, negatives=0)
@example(folder=({"u.data": b"1\t1\t5\t0\n1\t2\t5\t0\n"}, "loo"), seed=0, negatives=1)
@example(folder=({"u.data": b"1\t1\t5\t0\n1\t2\t4\t0\n", "u1.base": b"1\t1\t5\t0\n", "u1.test": b"1\t1\t5\t0\n"},
                 "u1"), seed=0, negatives=0)
def test_ml100k_any_content_loads_or_is_refused_naming_the_file(folder, seed, negatives):
    files, split = folder
    with scratch_dir() as root:
        _load(load_ml100k, root, files, split=split, seed=seed, num_negatives=negatives)


@st.composite
def movielens_csv_folder(draw):
    rows = draw(rating_rows(half_stars=True, max_size=25))
    files: dict[str, bytes] = {}
    header = draw(st.sampled_from([["userId", "movieId", "rating", "timestamp"]] * 3 + [
        [" userId", "movieId ", "rating", "timestamp"], ["userId", "movieId", "rating"],
        ["movieId", "userId", "rating", "timestamp"]]))
    table = [header] + draw(spelled_rows(rows))
    files["ratings.csv"] = draw(st.one_of(mutated_table(table, sep=",", encoding="utf-8"), whole_file_garbage()))
    if draw(st.booleans()):
        items = sorted({i for _, i, _, _ in rows})
        movies = [["movieId", "title", "genres"]] + [
            [str(i), draw(st.sampled_from(["Toy Story (1995)", '"Heat, The (1995)"', "Ça (2000)", '""'])),
             "Comedy|Drama"] for i in items]
        files["movies.csv"] = draw(st.one_of(mutated_table(movies, sep=",", encoding="utf-8"), whole_file_garbage()))
    return files


@settings(max_examples=budget(2))
@given(files=movielens_csv_folder(), split=st.sampled_from(["random", "loo"]), negatives=num_negatives)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.5,0\n1,2,\"4\n.5\",0\n"},
         split="random", negatives=0)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\n1,1,\"4.5,0\n"}, split="random", negatives=0)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.5,0\x00\n"}, split="random", negatives=0)
@example(files={"ratings.csv": b"\xef\xbb\xbfuserId,movieId,rating,timestamp\n1,1,4.25,0\n"}, split="random", negatives=0)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\n" + b"\"" + b"a\n" * 70000}, split="random", negatives=0)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\n1,1,inf,0\n"}, split="loo", negatives=0)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\r1,1,4,0\r1,2,4,-9223372036854775808\r"},
         split="loo", negatives=1)
@example(files={"ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4,0\n", "movies.csv": b"\xff"},
         split="loo", negatives=0)
def test_movielens_csv_any_content_loads_or_is_refused_naming_the_file(files, split, negatives):
    with scratch_dir() as folder:
        _load(load_movielens_csv, folder, files, split=split, num_negatives=negatives)


@settings(max_examples=budget(0.5, minimum=2 * 3 * len(PATH_KINDS)))  # every combination
@given(loader=st.sampled_from(["ml", "csv"]), kind=st.sampled_from(PATH_KINDS),
       target=st.sampled_from(["folder", "ratings", "titles"]))
def test_a_data_folder_or_file_of_any_kind_is_refused_naming_it(loader, kind, target):
    """The folder, or one of its files, is missing, a FIFO, a folder, a dangling link, a loop, /dev/null..."""
    ratings, titles = ("u.data", "u.item") if loader == "ml" else ("ratings.csv", "movies.csv")
    load = load_ml100k if loader == "ml" else load_movielens_csv
    with scratch_dir() as root:
        folder = root / "data"
        folder.mkdir()
        (folder / ratings).write_bytes(b"1\t1\t5\t0\n" if loader == "ml" else b"userId,movieId,rating,timestamp\n1,1,5,0\n")
        if target == "folder":
            data_dir = named = place(root / "given", kind)
        else:
            assume(kind in FILE_KINDS)
            named = folder / (ratings if target == "ratings" else titles)
            named.unlink(missing_ok=True)
            place(named, kind)
            data_dir = folder
        # The titles file is optional: a missing one means none, and an empty u.item is a titles file
        # without titles. A broken link (dangling or a loop) is not a missing file: it is refused.
        loads = target == "titles" and (kind == "missing" or (kind == "empty_file" and loader == "ml"))
        try:
            load(data_dir, split="random", num_negatives=0)
        except DataError as error:
            assert not loads, f"refused a folder without an optional titles file: {error}"
            assert_one_line(str(error), names=named)
            assert str(error).startswith(f"{named}"), str(error)
        else:
            assert loads, "loaded from a broken path"


# ---------------------------------------------------------------------------------------------
# Valid files round-trip

@settings(max_examples=budget(1))
@given(rows=rating_rows(half_stars=False), split=st.sampled_from(["random", "loo"]), data=st.data())
def test_ml100k_valid_files_round_trip(rows, split, data):
    spelled = data.draw(spelled_rows(rows))
    eol = data.draw(st.sampled_from(VALID_EOLS))
    items = sorted({i for _, i, _, _ in rows} | set(data.draw(st.lists(ids, max_size=5))))
    title_of = {i: data.draw(latin1_text.filter(lambda t: not {"|", "\n", "\r"} & set(t))) for i in items}
    files = {"u.data": tsv(spelled, eol)}
    with_titles = data.draw(st.booleans())
    if with_titles:
        files["u.item"] = "".join(f"{i}|{t}|01-Jan-1995||x{eol}" for i, t in title_of.items()).encode("latin-1")
    with scratch_dir() as folder:
        result = _load(load_ml100k, folder, files, split=split, num_negatives=0)
    assert result is not None, "a valid ml-100k folder was refused"
    assert len(result.train) + len(result.test) == len(rows)
    assert sorted(_raw_rows(result)) == sorted(_as_float32(rows))
    if with_titles:
        assert result.vocab.item_raw_ids.tolist() == items
        assert list(result.vocab.item_titles) == [title_of[i] for i in items]
    _check_split_semantics(result, split)


@settings(max_examples=budget(1))
@given(rows=rating_rows(half_stars=False, min_size=2), data=st.data())
def test_ml100k_official_split_files_round_trip(rows, data):
    in_test = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    spelled = data.draw(spelled_rows(rows))
    base = [r for r, t in zip(spelled, in_test) if not t]
    test = [r for r, t in zip(spelled, in_test) if t]
    assume(base and test)
    files = {"u.data": tsv(spelled), "u1.base": tsv(base), "u1.test": tsv(test)}
    with scratch_dir() as folder:
        result = _load(load_ml100k, folder, files, split="u1", num_negatives=0)
    assert result is not None, "a valid u1 split was refused"
    train_rows = [r for r, t in zip(rows, in_test) if not t]
    test_rows = [r for r, t in zip(rows, in_test) if t]
    n_train = len(result.train)
    got = _raw_rows(result)
    assert sorted(got[:n_train]) == sorted(_as_float32(train_rows))
    assert sorted(got[n_train:]) == sorted(_as_float32(test_rows))


@settings(max_examples=budget(1))
@given(rows=rating_rows(half_stars=True), split=st.sampled_from(["random", "loo"]), data=st.data())
def test_movielens_csv_valid_files_round_trip(rows, split, data):
    spelled = data.draw(spelled_rows(rows))
    eol = data.draw(st.sampled_from(VALID_EOLS))
    bom = data.draw(st.sampled_from(["", "\ufeff"]))
    quote = data.draw(st.booleans())
    body = "".join(",".join(f'"{f}"' if quote else f for f in r) + eol for r in spelled)
    files = {"ratings.csv": (bom + "userId,movieId,rating,timestamp" + eol + body).encode("utf-8")}
    items = sorted({i for _, i, _, _ in rows})
    titles = {i: data.draw(utf8_text.filter(lambda t: "\x00" not in t and t.strip() == t)) for i in items}
    with_titles = data.draw(st.booleans())
    if with_titles:
        quoted = {i: '"' + t.replace('"', '""') + '"' for i, t in titles.items()}
        files["movies.csv"] = ("movieId,title,genres" + eol +
                               "".join(f"{i},{quoted[i]},Drama{eol}" for i in items)).encode("utf-8")
    with scratch_dir() as folder:
        result = _load(load_movielens_csv, folder, files, split=split, num_negatives=0)
    assert result is not None, "a valid ratings.csv was refused"
    assert len(result.train) + len(result.test) == len(rows)
    assert sorted(_raw_rows(result)) == sorted(_as_float32(rows))
    if with_titles:
        assert list(result.vocab.item_titles) == [titles[i] for i in items]
    _check_split_semantics(result, split)


def _check_split_semantics(result: DatasetSplit, split: str) -> None:
    """Every user is in train; loo holds out exactly each multi-rating user's latest rating."""
    users = collections.Counter(result.train.users.tolist() + result.test.users.tolist())
    assert set(result.train.users.tolist()) == set(users)
    if split == "loo":
        assert sorted(result.test.users.tolist()) == sorted(u for u, n in users.items() if n >= 2)
        for row in range(len(result.test)):
            user = result.test.users[row]
            own = result.train.timestamps[result.train.users == user]
            assert (own <= result.test.timestamps[row]).all(), "the held-out rating is not the user's latest"


@settings(max_examples=budget(1))
@given(rows=rating_rows(half_stars=False, min_size=2), data=st.data())
def test_ranking_negatives_are_unrated_distinct_items(rows, data):
    """With a feasible num_negatives, negatives are distinct items the user never rated."""
    extra = data.draw(st.lists(ids, max_size=8))
    items = sorted({i for _, i, _, _ in rows} | set(extra))
    rated = collections.defaultdict(set)
    for u, i, _, _ in rows:
        rated[u].add(i)
    feasible = min(len(items) - len(v) for v in rated.values())
    k = data.draw(st.integers(0, feasible))
    files = {"u.data": tsv([list(r) for r in rows]),
             "u.item": "".join(f"{i}|t{i}\n" for i in items).encode("latin-1")}
    with scratch_dir() as folder:
        result = _load(load_ml100k, folder, files, split=data.draw(st.sampled_from(["random", "loo", "loo-val"])),
                       num_negatives=k)
    assert result is not None
    ranking = result.ranking
    assert ranking.negatives.shape == (ranking.num_seeds, len(ranking), k) and ranking.num_seeds == 3
    for negative_set in ranking.negatives:
        for user, negatives in zip(ranking.users.tolist(), negative_set.tolist()):
            raw_user = result.vocab.user_raw_ids[user]
            raw_negatives = result.vocab.item_raw_ids[negatives].tolist()
            assert len(set(raw_negatives)) == k
            assert not set(raw_negatives) & rated[raw_user]


# ---------------------------------------------------------------------------------------------
# Regression tests: product bugs this tier found (fixed), each with its minimal input

def _refused(load, folder: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as refused:
        load(folder, **kwargs)
    return refused.value


@pytest.mark.parametrize("loader,name,content,line", [
    ("ml", "u.data", b"1" * (INT_DIGIT_LIMIT + 1) + b"\t1\t5\t0\n", 1),
    ("ml", "u.item", b"1" * (INT_DIGIT_LIMIT + 1) + b"|Title\n", 1),
    ("csv", "ratings.csv", b"userId,movieId,rating,timestamp\n1,1,5," + b"9" * (INT_DIGIT_LIMIT + 1) + b"\n", 2),
], ids=["u.data", "u.item", "ratings.csv"])
def test_a_field_of_more_than_4300_digits_is_a_data_error_naming_the_file(loader, name, content, line):
    """Was a bare ValueError (int() refuses more than 4300 digits)."""
    with scratch_dir() as folder:
        if loader == "ml":
            (folder / "u.data").write_bytes(b"1\t1\t5\t0\n")
        (folder / name).write_bytes(content)
        error = _refused(load_ml100k if loader == "ml" else load_movielens_csv, folder, split="random",
                         num_negatives=0)
    assert (error.path, error.line) == (str(folder / name), line), str(error)
    assert str(error).startswith(f"{folder / name} line {line}: "), str(error)
    assert "does not fit in 64 bits" in str(error) and f"({INT_DIGIT_LIMIT + 1} characters)" in str(error), str(error)
    assert_one_line(str(error), names=folder / name)


def test_an_id_with_more_than_4300_leading_zeros_is_read_as_its_value():
    """Was a bare ValueError: '000...01' (4302 characters) in u.item is item 1."""
    with scratch_dir() as folder:
        (folder / "u.data").write_bytes(b"1\t1\t5\t0\n")
        (folder / "u.item").write_bytes(b"0" * (INT_DIGIT_LIMIT + 1) + b"1|Title\n")
        split = load_ml100k(folder, split="random", num_negatives=0)
    assert split.vocab.item_raw_ids.tolist() == [1]
    assert split.vocab.item_titles == ("Title",)


def test_too_few_unrated_items_is_a_data_error_naming_the_file_and_the_users_id():
    """Was a DataError naming no file, and a dense 'user index' instead of the id in u.data."""
    with scratch_dir() as folder:
        (folder / "u.data").write_bytes(b"7\t1\t5\t0\n7\t2\t5\t0\n")
        error = _refused(load_ml100k, folder, split="random", num_negatives=1)
    assert error.path == str(folder / "u.data"), str(error)
    assert str(error).startswith(f"{folder / 'u.data'}: user 7 has rated all but 0 items, fewer than the 1 "), str(error)
    assert "user index" not in str(error), str(error)
    assert_one_line(str(error), names=folder / "u.data")


def test_leave_latest_out_holds_out_the_latest_rating_when_a_timestamp_is_int64_min():
    """Was: -(-2**63) wrapped, so the rating at timestamp -2**63 counted as the user's latest."""
    with scratch_dir() as folder:
        (folder / "u.data").write_bytes(b"1\t1\t5\t-9223372036854775808\n1\t2\t4\t0\n")
        split = load_ml100k(folder, split="loo", num_negatives=0)
    held_out = split.vocab.item_raw_ids[split.test.items].tolist()
    assert held_out == [2], f"held out item {held_out}, the latest rating is item 2 (timestamp 0)"
    assert split.train.timestamps.tolist() == [INT64_MIN]


def test_a_u_item_with_lone_cr_line_ends_loads_every_title():
    """Was read as one line (bytes split at \\n): every title but the first silently dropped."""
    with scratch_dir() as folder:
        (folder / "u.data").write_bytes(b"1\t1\t5\t0\n1\t2\t4\t0\n")
        (folder / "u.item").write_bytes(b"1|Toy Story|x\r2|Heat|x\r")
        split = load_ml100k(folder, split="random", num_negatives=0)
    assert split.vocab.item_raw_ids.tolist() == [1, 2]
    assert split.vocab.item_titles == ("Toy Story", "Heat")


@pytest.mark.parametrize("name", ["u.data", "ratings.csv"])
def test_rating_files_with_lone_cr_line_ends_load(name):
    """Were refused: u.data 'expected 4 tab-separated fields, got 7', ratings.csv 'new-line character
    seen in unquoted field'."""
    with scratch_dir() as folder:
        if name == "u.data":
            (folder / name).write_bytes(b"1\t1\t5\t0\r1\t2\t4\t0\r")
            split = load_ml100k(folder, split="random", num_negatives=0)
        else:
            (folder / name).write_bytes(b"userId,movieId,rating,timestamp\r1,1,5,0\r1,2,4,0\r")
            split = load_movielens_csv(folder, split="random", num_negatives=0)
    assert sorted(_raw_rows(split)) == [(1, 1, 5.0, 0), (1, 2, 4.0, 0)]
