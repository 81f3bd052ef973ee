"""The `fedrec` command as a user runs it: a real subprocess, outputs on disk, clean exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRED_BASELINES = {"centralized", "biases", "global_mean", "local_only", "popularity"}


def _worker_binaries() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "^[^ ]*/data/worker_binary "], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


def _fedrec(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedrec_cli", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.mark.e2e
def test_simulate_writes_report_and_leaves_no_worker(tmp_path: Path, png_size):
    before = _worker_binaries()
    out = tmp_path / "run"
    done = _fedrec("simulate", "--rounds", "4", "--clients-per-round", "40", "--eval-every", "2",
                   "--centralized-epochs", "3", "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["final"]) >= {"rmse", "mae", "hr@10", "ndcg@10"}
    assert REQUIRED_BASELINES <= set(report["baselines"])
    assert all(report["baselines"][name] is not None for name in REQUIRED_BASELINES)
    assert set(report["privacy"]) >= {"epsilon_rdp", "epsilon_pld", "delta", "noise_multiplier", "rounds"}
    assert report["privacy"]["epsilon_rdp"] is None  # non-private run
    assert set(report["timing"]) >= {"seconds_total", "seconds_per_round", "centralized_epoch_seconds"}
    assert report["privacy"]["rounds"] == 4
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    report_md = (out / "report.md").read_text()
    assert report_md.startswith("# fedrec simulation")
    # The accuracy plot is drawn and embedded; a non-private run has no privacy plot.
    assert png_size(out / "training.png")[0] > 200 and "](training.png)" in report_md
    assert not (out / "privacy.png").exists() and "privacy.png" not in report_md
    assert (out / "checkpoints" / "checkpoint.json").exists()
    vocab = json.loads((out / "vocabulary.json").read_text())
    assert len(vocab["item_raw_ids"]) == report["data"]["num_items"] == len(vocab["item_titles"])
    assert _worker_binaries() - before == set()


def test_malformed_ratings_file_is_named_with_its_line(tmp_path: Path):
    data = tmp_path / "ml"
    data.mkdir()
    (data / "u.data").write_text("1\t1\t5\t881250949\n1\t2\tseven\t881250950\n")
    done = _fedrec("simulate", "--dataset", "ml-100k", "--data-dir", str(data), "--split", "random", "--quiet")
    assert done.returncode == 2
    assert "u.data line 2" in done.stderr
    assert "Traceback" not in done.stderr
