"""Ratings in: CSV import and single ratings are checked against the active model, all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_client.device import Device, DeviceError


@pytest.fixture
def device(make_package, tmp_path) -> Device:
    device = Device(tmp_path / "device")
    device.install(make_package())  # raw ids 1000 + 7k for k < 30, ratings 1..5
    return device


def _csv(tmp_path: Path, text: str, name: str = "ratings.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_import_accepts_item_id_and_movielens_files(device, tmp_path):
    report = device.import_ratings(_csv(tmp_path, "item_id,rating\n1000,5\n1007,1.5\n\n1014,3\n"))
    assert (report.rows, report.added, report.replaced) == (3, 3, 0)
    movielens = _csv(tmp_path, "\ufeffuserId,movieId,rating,timestamp\n7,1014,4,881250949\n7,1021,2,891717742\n",
                     "ml.csv")
    report = device.import_ratings(movielens)
    assert (report.rows, report.added, report.replaced) == (2, 1, 1)
    assert device.ratings() == {1000: 5.0, 1007: 1.5, 1014: 4.0, 1021: 2.0}


BAD_FILES = {
    "unknown item": ("item_id,rating\n1000,5\n99,4\n1007,3\n",
                     r"line 3: item id 99 is not in the active model's vocabulary \(model tiny-r1-"),
    "rating above the range": ("movieId,rating,timestamp\n1000,6,1\n", r"line 2: rating '6' is outside \[1, 5\]"),
    "rating below the range": ("item_id,rating\n1000,5\n1007,0.5\n", r"line 3: rating '0.5' is outside \[1, 5\]"),
    "non-numeric rating": ("item_id,rating\n1000,five\n", r"line 2: rating 'five' is not a number"),
    "nan rating": ("item_id,rating\n1000,nan\n", r"line 2: rating 'nan' is not a number"),
    "non-integer item": ("item_id,rating\n10x0,4\n", r"line 2: item id '10x0' is not an integer"),
    "duplicate item": ("item_id,rating\n1000,4\n1007,4\n1000,2\n",
                       r"line 4: item id 1000 appears twice \(first on line 2\)"),
    "missing field": ("item_id,rating\n1000\n", r"line 2: expected 2 fields, got 1"),
    "bad header": ("item,stars\n1000,4\n", r"line 1: the header must name an item_id \(or movieId\) column"),
    "several users": ("userId,movieId,rating\n1,1000,4\n2,1007,3\n", r"ratings of 2 users"),
    "header only": ("item_id,rating\n", r"no ratings after the header"),
    "empty": ("", r"the file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_refused_by_file_line_and_value_and_nothing_is_stored(case, device, tmp_path):
    device.rate(1203, 4)
    text, message = BAD_FILES[case]
    path = _csv(tmp_path, text, "bad.csv")
    with pytest.raises(DeviceError, match=message) as refused:
        device.import_ratings(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert device.ratings() == {1203: 4.0}


def test_every_bad_line_is_reported_up_to_a_limit(device, tmp_path):
    lines = "".join(f"{90 + k},4\n" for k in range(8))
    with pytest.raises(DeviceError, match=r"line 2: item id 90 .*line 6: item id 94 .*; and 3 more$"):
        device.import_ratings(_csv(tmp_path, "item_id,rating\n" + lines))
    assert device.ratings() == {}


def test_a_missing_file_is_named(device, tmp_path):
    with pytest.raises(DeviceError, match=r"nope\.csv: no such ratings file"):
        device.import_ratings(tmp_path / "nope.csv")


def test_rate_applies_the_same_checks_and_replaces_an_earlier_rating(device):
    assert device.rate(1000, 4) is None
    assert device.rate("1000", "2.5") == 4.0
    assert device.ratings() == {1000: 2.5}
    refusals = {
        (99, 4): r"rating refused: item id 99 is not in the active model's vocabulary",
        (1007, 5.5): r"rating refused: rating 5.5 is outside \[1, 5\]",
        (1007, "abc"): r"rating refused: rating 'abc' is not a number",
        (1007, float("nan")): r"rating refused: rating nan is not a number",
        ("x", 3): r"rating refused: item id 'x' is not an integer",
        (True, 3): r"rating refused: item id True is not an integer",
    }
    for (item_id, stars), message in refusals.items():
        with pytest.raises(DeviceError, match=message):
            device.rate(item_id, stars)
    assert device.ratings() == {1000: 2.5}
