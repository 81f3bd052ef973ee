"""`fedrec` refuses bad input with one line naming it, before spending anything (issue 7, items 2, 8-10).

Every case runs the real command in a subprocess. Most are refused before TensorFlow is imported,
so they take about a second each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _fedrec(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedrec_cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("fedrec: error: ")
    return lines[0]


FLAG_CASES = [
    (["--eval-every", "0"], "--eval-every: must be in [1, "),
    (["--local-lr", "nan"], "--local-lr: must be a finite number, got nan"),
    (["--server-lr", "inf"], "--server-lr: must be a finite number"),
    (["--dim", "10000000"], "--dim: must be in [0, 1024], got 10000000"),
    (["--rounds", "0"], "--rounds: must be in [1, "),
    (["--seed", "-1"], "--seed: must be in [0, "),
    (["--delta", "1.5", "--dp", "fixed", "--noise-multiplier", "1"], "--delta: must be in (0, 1)"),
    (["--target-quantile", "1", "--dp", "adaptive", "--target-epsilon", "4"], "--target-quantile: must be in (0, 1)"),
    (["--noise-multiplier", "1"], "--noise-multiplier/--target-epsilon need --dp fixed, adaptive or distributed"),
    (["--user-l2", "0"], "--user-l2: must be in (0, inf)"),
    (["--local-steps", "100000"], "--local-steps: must be in [0, 1000]"),
    (["--data-dir", "/tmp"], "--data-dir: is for ml-100k and movielens-csv"),
    (["--users-per-client", "0"], "--users-per-client: must be in [1, "),
    (["--users-per-client", "8", "--dp", "distributed", "--noise-multiplier", "1"],
     "--users-per-client: does not serve --dp distributed"),
    (["--dp", "distributed", "--noise-multiplier", "1", "--workers", "127.0.0.1:9"],
     "--workers: --dp distributed runs on the local TFF worker only"),
]


@pytest.mark.parametrize(("flags", "message"), FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_values_are_refused_by_flag(flags, message):
    assert message in _one_line_error(_fedrec("simulate", "--quiet", *flags))


def test_out_naming_a_file_or_a_foreign_folder_is_refused_and_left_alone(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    assert "is a file, not a folder" in _one_line_error(_fedrec("simulate", "--out", str(plain)))
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("mine")
    message = _one_line_error(_fedrec("simulate", "--out", str(foreign), "--overwrite"))
    assert "not empty and holds no fedrec run" in message
    assert plain.read_text() == "mine" and (foreign / "chapter1.tex").read_text() == "mine"


def test_resume_refuses_flags_it_would_ignore_and_folders_without_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"run_id": "r1", "config": {"rounds": 3}}')
    message = _one_line_error(_fedrec("simulate", "--resume", str(run), "--rounds", "5", "--dim", "3"))
    assert "--resume: --dim, --rounds cannot be changed when resuming" in message
    assert "--overwrite starts a new run" in _one_line_error(_fedrec("simulate", "--resume", str(run), "--overwrite"))
    assert "no such run folder" in _one_line_error(_fedrec("simulate", "--resume", str(tmp_path / "none")))
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _one_line_error(_fedrec("simulate", "--resume", str(tmp_path / "empty")))
    (run / "config.json").write_text('{"rounds": 3}')  # a config of an older fedrec, without a run id
    assert "has no run id" in _one_line_error(_fedrec("simulate", "--resume", str(run)))
    (run / "config.json").write_text('{"run_id": "r1", "config": {"rounds": 3')
    assert "config.json: not valid JSON" in _one_line_error(_fedrec("simulate", "--resume", str(run)))


def _ml_dir(tmp_path: Path, rows: str) -> Path:
    data = tmp_path / "ml"
    data.mkdir(exist_ok=True)
    (data / "u.data").write_text(rows, encoding="latin-1")
    return data


DATA_CASES = [
    ("1\t2\t3\t881250949\n9223372036854775808\t2\t3\t881250949\n",
     "u.data line 2: user id '9223372036854775808' does not fit in 64 bits"),
    ("1\t2\t3\t881250949\n2\t3\t4\t99999999999999999999\n", "u.data line 2: timestamp '99999999999999999999' does not fit"),
    ("1\t-99999999999999999999\t3\t1\n", "u.data line 1: item id '-99999999999999999999' does not fit"),
    ("1\t2\t3\t1\n1\t\u00b2\t3\t1\n", "u.data line 2: item id '\u00b2' is not an integer"),  # '²'.isdigit()
    ("1\t2\t3\t1\n" + "7" * 70000 + "\n", "u.data line 2: longer than 65536 bytes"),
]


@pytest.mark.parametrize(("rows", "message"), DATA_CASES, ids=range(len(DATA_CASES)))
def test_malformed_data_names_file_and_line(tmp_path, rows, message):
    data = _ml_dir(tmp_path, rows)
    done = _fedrec("simulate", "--dataset", "ml-100k", "--data-dir", str(data), "--split", "random", "--quiet")
    assert message in _one_line_error(done)


def test_unreadable_data_files_are_refused_not_hung_on(tmp_path):
    data = tmp_path / "ml"
    data.mkdir()
    os.mkfifo(data / "u.data")  # a FIFO nobody writes to: a plain open() would block forever
    done = _fedrec("simulate", "--dataset", "ml-100k", "--data-dir", str(data), "--quiet", timeout=60)
    assert "u.data: not a regular file" in _one_line_error(done)
    (data / "u.data").unlink()
    (data / "u.data").mkdir()
    assert "u.data: not a regular file" in _one_line_error(
        _fedrec("simulate", "--dataset", "ml-100k", "--data-dir", str(data), "--quiet"))
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,2,\xff\xfe,3\n")
    assert "ratings.csv line 2: not utf-8-sig text" in _one_line_error(
        _fedrec("simulate", "--dataset", "movielens-csv", "--data-dir", str(csv_dir), "--quiet"))
    assert "data directory not found" in _one_line_error(
        _fedrec("simulate", "--dataset", "ml-100k", "--data-dir", str(tmp_path / "nope"), "--quiet"))


def test_export_never_replaces_what_it_did_not_create(tmp_path):
    """Item 2: `fedrec export --out` once deleted whatever was at the path and exited 0."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    targets = {
        "a plain file": tmp_path / "notes.txt",
        "a folder with other files": tmp_path / "photos",
        "a run folder": tmp_path / "other-run",
    }
    targets["a plain file"].write_text("mine")
    targets["a folder with other files"].mkdir()
    (targets["a folder with other files"] / "cat.jpg").write_bytes(b"\xff\xd8")
    targets["a run folder"].mkdir()
    (targets["a run folder"] / "report.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for kind, target in targets.items():
        for extra in ([], ["--overwrite"]):
            message = _one_line_error(_fedrec("export", "--run", str(run), "--out", str(target), *extra))
            assert "not a model package; refusing to replace it" in message, (kind, message)
    assert "inside the run folder" in _one_line_error(_fedrec("export", "--run", str(run), "--out", str(run / "pkg")))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
