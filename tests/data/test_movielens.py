"""MovieLens loaders: real ML-100K invariants and malformed-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tff_pipeline.data import (
    DataError,
    DatasetSplit,
    load_dataset,
    load_ml100k,
    load_movielens_csv,
)

# ---------------------------------------------------------------- helpers


def pairs(split_part) -> set[tuple[int, int]]:
    return set(zip(split_part.users.tolist(), split_part.items.tolist()))


def assert_ranking_valid(ds: DatasetSplit, all_pairs: set[tuple[int, int]]) -> None:
    """Negatives are unrated anywhere, distinct per row and never the positive."""
    task = ds.ranking
    assert task.negatives.shape == (3, len(task.users), task.num_negatives)
    assert len(np.unique(task.users)) == len(task.users)
    test_pairs = pairs(ds.test)
    for user, pos, negs in zip(task.users.tolist() * 3, task.positives.tolist() * 3,
                               task.negatives.reshape(-1, task.num_negatives)):
        assert (user, pos) in test_pairs
        assert len(set(negs.tolist())) == len(negs)
        assert pos not in negs
        assert not any((user, int(n)) in all_pairs for n in negs)


def write_ml100k(root: Path, data: list[str], *, base=None, test=None, item=None) -> Path:
    """Write a tiny ML-100K-shaped directory (tab separated rows)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text("".join(r + "\n" for r in data), encoding="latin-1")
    if item is not None:
        (root / "u.item").write_text("".join(r + "\n" for r in item), encoding="latin-1")
    if base is not None:
        (root / "u1.base").write_text("".join(r + "\n" for r in base))
    if test is not None:
        (root / "u1.test").write_text("".join(r + "\n" for r in test))
    return root


def tiny_rows(num_users: int = 3, num_items: int = 8, per_user: int = 3) -> list[str]:
    return [
        f"{u}\t{(u + k) % num_items + 1}\t{1 + (u + k) % 5}\t{1000 + 10 * u + k}"
        for u in range(1, num_users + 1)
        for k in range(per_user)
    ]


# ---------------------------------------------------------------- real ML-100K


@pytest.fixture(scope="module")
def ml_u1(ml100k_path: Path) -> DatasetSplit:
    return load_ml100k(ml100k_path, split="u1")


@pytest.fixture(scope="module")
def ml_all_pairs(ml100k_path: Path) -> set[tuple[int, int]]:
    ds = load_ml100k(ml100k_path, split="loo", num_negatives=0)
    return pairs(ds.train) | pairs(ds.test)


def test_u1_sizes(ml_u1: DatasetSplit) -> None:
    assert (len(ml_u1.train), len(ml_u1.test)) == (80000, 20000)
    assert (ml_u1.num_users, ml_u1.num_items) == (943, 1682)
    assert ml_u1.name == "ml-100k/u1"
    assert ml_u1.rating_scale == (1.0, 5.0)
    assert ml_u1.vocab.item_titles[ml_u1.vocab.item_index(1)] == "Toy Story (1995)"
    assert ml_u1.vocab.user_index(1) == 0
    assert ml_u1.train.ratings.dtype == np.float32 and ml_u1.train.users.dtype == np.int32


@pytest.mark.parametrize("split", ["u1", "random", "loo"])
def test_no_leakage_and_valid_negatives(
    ml100k_path: Path, ml_all_pairs: set[tuple[int, int]], split: str
) -> None:
    ds = load_ml100k(ml100k_path, split=split, seed=3)
    assert not pairs(ds.train) & pairs(ds.test)
    assert len(ds.train) + len(ds.test) == 100000
    assert ds.ranking.num_negatives == 99
    assert_ranking_valid(ds, ml_all_pairs)


def test_indices_stable_across_splits(ml100k_path: Path, ml_u1: DatasetSplit) -> None:
    other = load_ml100k(ml100k_path, split="ub")
    assert np.array_equal(other.vocab.item_raw_ids, ml_u1.vocab.item_raw_ids)
    assert np.array_equal(other.vocab.user_raw_ids, ml_u1.vocab.user_raw_ids)


def test_loo_holds_out_each_users_latest(ml100k_path: Path) -> None:
    ds = load_ml100k(ml100k_path, split="loo")
    assert len(ds.test) == ds.num_users == 943
    assert len(np.unique(ds.test.users)) == 943
    latest_train = np.full(ds.num_users, -1, dtype=np.int64)
    np.maximum.at(latest_train, ds.train.users, ds.train.timestamps)
    assert np.all(ds.test.timestamps >= latest_train[ds.test.users])
    order = np.argsort(ds.test.users)
    assert np.array_equal(ds.ranking.users, ds.test.users[order])
    assert np.array_equal(ds.ranking.positives, ds.test.items[order])


def test_load_dataset_dispatch(ml100k_path: Path) -> None:
    ds = load_dataset("ml-100k", data_dir=ml100k_path, num_negatives=5)
    assert ds.name == "ml-100k/u1"
    with pytest.raises(DataError, match="data_dir"):
        load_dataset("ml-100k")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("ml-1m", data_dir=ml100k_path)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("ml-100k", data_dir=ml100k_path, split="u9")


# ---------------------------------------------------------------- tiny files


def test_tiny_official_split_and_titles(tmp_path: Path) -> None:
    data = tiny_rows()
    root = write_ml100k(
        tmp_path / "ml",
        data,
        base=data[:2] + data[3:5] + data[6:8],
        test=[data[2], data[5], data[8]],
        item=["1|One (1990)|x", "2|Two|x", "9|Unrated item|x"],
    )
    ds = load_ml100k(root, split="u1", num_negatives=3)
    assert ds.num_items == 7  # items 2..6 rated, plus 1 and 9 known only from u.item
    assert ds.vocab.item_titles[0] == "One (1990)"
    assert ds.vocab.item_titles[ds.vocab.item_index(5)] == "item 5"
    assert_ranking_valid(ds, pairs(ds.train) | pairs(ds.test))
    with pytest.raises(KeyError, match="77"):
        ds.vocab.item_index(77)


def test_u_item_optional(tmp_path: Path) -> None:
    ds = load_ml100k(write_ml100k(tmp_path, tiny_rows()), split="loo", num_negatives=2)
    assert ds.vocab.item_titles is None


BAD_U_DATA = [
    pytest.param(2, "1\t2\t3", "expected 4", id="field-count"),
    pytest.param(3, "x\t2\t3\t100", "user id 'x'", id="user-not-int"),
    pytest.param(2, "1\t2.0\t3\t100", "item id", id="item-not-int"),
    pytest.param(4, "3\t7\t3\t1e9", "timestamp", id="timestamp-not-int"),
    pytest.param(2, "1\t7\tfive\t100", "not a number", id="rating-not-number"),
    pytest.param(3, "2\t7\t7\t100", "rating 7 out of range [1, 5]", id="rating-range"),
    pytest.param(3, "2\t7\t0\t100", "out of range", id="rating-zero"),
    pytest.param(2, "1\t7\t3.5\t100", "multiple of 1", id="rating-half"),
    pytest.param(2, "1\t7\tnan\t100", "out of range", id="rating-nan"),
]


@pytest.mark.parametrize(("line", "row", "needle"), BAD_U_DATA)
def test_malformed_u_data(tmp_path: Path, line: int, row: str, needle: str) -> None:
    data = tiny_rows()
    data[line - 1] = row
    root = write_ml100k(tmp_path, data)
    with pytest.raises(DataError, match="u.data line") as err:
        load_ml100k(root, split="random", num_negatives=1)
    assert f"u.data line {line}:" in str(err.value)
    assert needle in str(err.value)
    assert err.value.line == line


def test_duplicate_pair_names_both_lines(tmp_path: Path) -> None:
    data = tiny_rows()
    data.insert(5, "1\t2\t4\t5")  # user 1 item 2 is already on line 1
    with pytest.raises(DataError) as err:
        load_ml100k(write_ml100k(tmp_path, data), split="loo", num_negatives=1)
    message = str(err.value)
    assert "u.data line 6:" in message and "line 1" in message and "duplicate" in message


def test_blank_line_inside_data(tmp_path: Path) -> None:
    data = tiny_rows()
    data.insert(3, "")
    with pytest.raises(DataError, match=r"u\.data line 4: blank line"):
        load_ml100k(write_ml100k(tmp_path, data), split="loo", num_negatives=1)


def test_trailing_blank_lines_ok(tmp_path: Path) -> None:
    ds = load_ml100k(write_ml100k(tmp_path, tiny_rows() + ["", ""]), split="loo", num_negatives=1)
    assert len(ds.train) + len(ds.test) == 9


def test_empty_and_missing_files(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path / "empty", [])
    with pytest.raises(DataError, match=r"u\.data.*empty"):
        load_ml100k(root, split="loo")
    with pytest.raises(DataError, match="not found") as err:
        load_ml100k(tmp_path / "nope")
    assert "nope" in str(err.value)
    root = write_ml100k(tmp_path / "nosplit", tiny_rows())
    with pytest.raises(DataError, match=r"u1\.base: file not found"):
        load_ml100k(root, split="u1", num_negatives=1)
    with pytest.raises(DataError, match="unknown split"):
        load_ml100k(root, split="u7")


def test_split_file_rows_must_be_in_u_data(tmp_path: Path) -> None:
    data = tiny_rows()
    test_rows = [data[2], "99\t1\t3\t1000"]  # user 99 is unknown
    root = write_ml100k(tmp_path, data, base=data[:2] + data[3:], test=test_rows)
    with pytest.raises(DataError, match=r"u1\.test line 2: .*not in u\.data"):
        load_ml100k(root, split="u1", num_negatives=1)


def test_split_files_must_not_overlap(tmp_path: Path) -> None:
    data = tiny_rows()
    root = write_ml100k(tmp_path, data, base=data, test=[data[4]])
    with pytest.raises(DataError, match=r"u1\.test line 1: .*u1\.base line 5"):
        load_ml100k(root, split="u1", num_negatives=1)


def test_too_few_unrated_items(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path, tiny_rows(num_items=4, per_user=3))
    with pytest.raises(DataError, match=r"u\.data: user 1 has rated all but 1 items, fewer than the 2 unrated "
                                        "items the ranking evaluation samples as negatives"):
        load_ml100k(root, split="loo", num_negatives=2)


def test_bad_u_item(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path, tiny_rows(), item=["1|A|x", "one|B|x"])
    with pytest.raises(DataError, match=r"u\.item line 2: item id 'one'"):
        load_ml100k(root, split="loo", num_negatives=1)


# ---------------------------------------------------------------- CSV format


def write_csv_dir(root: Path, ratings: list[str], movies: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = "userId,movieId,rating,timestamp\n"
    (root / "ratings.csv").write_text(header + "".join(r + "\n" for r in ratings))
    if movies is not None:
        (root / "movies.csv").write_text(
            "movieId,title,genres\n" + "".join(m + "\n" for m in movies), encoding="utf-8"
        )
    return root


CSV_ROWS = [
    "1,10,4.5,964982703",
    "1,20,0.5,964981247",
    "1,30,3.0,964982224",
    "2,10,5.0,964983815",
    "2,40,2.5,964982931",
    "2,50,1,964982400",
    "3,20,3.5,964980868",
    "3,60,4.0,964982176",
]


def test_csv_half_stars_and_quoted_titles(tmp_path: Path) -> None:
    movies = [
        '10,"American President, The (1995)",Comedy|Drama|Romance',
        "20,Heat (1995),Action|Crime|Thriller",
        '70,"Unrated, Film (2000)",Drama',
    ]
    root = write_csv_dir(tmp_path, CSV_ROWS, movies)
    ds = load_movielens_csv(root, split="loo", num_negatives=2)
    assert ds.name == "movielens-csv/loo"
    assert ds.rating_scale == (0.5, 5.0)
    assert ds.num_users == 3 and ds.num_items == 7
    vocab = ds.vocab
    assert vocab.item_titles[vocab.item_index(10)] == "American President, The (1995)"
    assert vocab.item_titles[vocab.item_index(30)] == "item 30"
    assert sorted(np.concatenate([ds.train.ratings, ds.test.ratings]).tolist()) == sorted(
        [4.5, 0.5, 3.0, 5.0, 2.5, 1.0, 3.5, 4.0]
    )
    assert len(ds.test) == 3 and not pairs(ds.train) & pairs(ds.test)
    assert_ranking_valid(ds, pairs(ds.train) | pairs(ds.test))
    assert load_dataset("movielens-csv", data_dir=root, num_negatives=1).name.endswith("/random")


BAD_CSV = [
    pytest.param(4, "1,40,3.3,964982224", "multiple of 0.5", id="not-half-star"),
    pytest.param(5, "2,40,5.5,964982931", "out of range [0.5, 5]", id="above-5"),
    pytest.param(2, "1,10,0,964982703", "out of range", id="zero"),
    pytest.param(3, "1,20,4.0", "expected 4", id="field-count"),
    pytest.param(6, "2,abc,1,964982400", "item id 'abc'", id="item-not-int"),
    pytest.param(9, "3,60,4.0,soon", "timestamp 'soon'", id="timestamp"),
    pytest.param(7, "1,20,4.0,964982400", "line 3", id="duplicate"),
]


@pytest.mark.parametrize(("line", "row", "needle"), BAD_CSV)
def test_malformed_ratings_csv(tmp_path: Path, line: int, row: str, needle: str) -> None:
    rows = list(CSV_ROWS)
    rows[line - 2] = row  # line 1 is the header
    with pytest.raises(DataError) as err:
        load_movielens_csv(write_csv_dir(tmp_path, rows), num_negatives=1)
    assert f"ratings.csv line {line}:" in str(err.value)
    assert needle in str(err.value)


def test_csv_bad_header_and_empty(tmp_path: Path) -> None:
    root = tmp_path / "hdr"
    root.mkdir()
    (root / "ratings.csv").write_text("user,item,rating,ts\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"ratings\.csv line 1: expected header"):
        load_movielens_csv(root)
    empty = write_csv_dir(tmp_path / "empty", [])
    with pytest.raises(DataError, match=r"ratings\.csv.*empty"):
        load_movielens_csv(empty)
    with pytest.raises(DataError, match="unknown split"):
        load_movielens_csv(empty, split="u1")


def test_csv_bad_movies(tmp_path: Path) -> None:
    root = write_csv_dir(tmp_path, CSV_ROWS, ["10,Heat,Action", "10,Heat again,Action"])
    with pytest.raises(DataError, match=r"movies\.csv line 3: duplicate movie id 10 .*line 2"):
        load_movielens_csv(root, num_negatives=1)
