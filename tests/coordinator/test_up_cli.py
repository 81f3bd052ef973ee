"""`fedrec up` from the command line: a whole small deployment, its report, and nothing left running."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.coordinator.commands import fedrec, one_error_line

SIMULATE_REPORT_KEYS = {"config", "data", "final", "baselines", "privacy", "timing", "history", "run_id"}


def _processes_mentioning(text: str) -> list[str]:
    done = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if "pgrep" not in line]




@pytest.mark.e2e
def test_fedrec_up_trains_over_real_processes_and_writes_the_simulate_report(tmp_path):
    """With no privacy flag a deployment runs user-level DP (ε = 8), planned for its own fleet:
    the plan printed is the one the coordinator stores and runs (issue 16, items 3 and 6)."""
    out = tmp_path / "up"
    done = fedrec("up", "--devices", "10", "--clients-per-round", "5", "--rounds", "2", "--no-baselines",
                  "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rounds 2/2 completed" in done.stdout
    plan_line = next(line for line in done.stdout.splitlines() if line.startswith("privacy plan for "))
    assert plan_line.startswith("privacy plan for 10 users: expected cohort 5 (q = 0.5), 2 rounds")
    with sqlite3.connect(f"file:{out / 'coordinator' / 'coordinator.db'}?mode=ro", uri=True) as db:
        stored = json.loads(db.execute("SELECT value FROM meta WHERE key = 'privacy_setting'").fetchone()[0])
    assert stored["sampling_rate"] == 0.5 and stored["rounds"] == 2
    assert f"z = {stored['noise_multiplier']:.3f}" in plan_line
    report = json.loads((out / "report.json").read_text())
    assert SIMULATE_REPORT_KEYS <= set(report)
    assert report["config"]["dp"] == "adaptive" and 0 < report["privacy"]["epsilon_rdp"] <= 8.0
    deployment = report["deployment"]
    assert deployment["rounds_completed"] == 2 and deployment["devices"] == 10
    assert deployment["bytes_in"] > 0 and deployment["bytes_up_per_device_mean"] > 0
    assert report["privacy"]["rounds"] == 2 and report["final"]["rmse"] is not None
    for name in ("report.md", "metrics.csv", "final_model.npz", "config.json", "coordinator/coordinator.toml"):
        assert (out / name).exists(), name
    assert "## Deployment" in (out / "report.md").read_text()
    assert "- no baselines were computed (--no-baselines)" in (out / "report.md").read_text()
    assert _processes_mentioning(str(out)) == []  # coordinator and device processes ended with it

    again = subprocess.run([sys.executable, "-m", "fedrec_cli", "up", "--out", str(out)],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_fedrec_up_refuses_what_it_cannot_run_before_starting_anything(tmp_path):
    """Item 6: `--profile nope` started the coordinator and failed 50 s later; `--devices 100000000`
    silently ran 400; a cohort larger than the fleet was accepted."""
    cases = [(["--profile", "nope"], "--profile: unknown device profile 'nope' (known: ideal, mixed"),
             (["--devices", "100000000"], "--devices: 100000000 is more than the 400 users with train ratings"),
             (["--devices", "20", "--clients-per-round", "21"], "--clients-per-round: 21 is more than the population "
                                                                 "of 20 devices"),
             (["--devices", "1"], "--devices: at least 2 devices"),
             (["--device-processes", "0"], "--device-processes: must be 1 to 64"),
             (["--capture", str(tmp_path)], "--capture: " + str(tmp_path) + " is not an empty folder")]
    (tmp_path / "kept.txt").write_text("the user's")
    for flags, message in cases:
        out = tmp_path / "out"
        started = time.monotonic()
        line = one_error_line(fedrec("up", *flags, "--out", str(out), timeout=120))
        assert message in line, (flags, line)
        assert time.monotonic() - started < 30 and not out.exists(), flags  # nothing was started or written


@pytest.mark.e2e
def test_fedrec_up_sizes_a_default_cohort_to_a_small_fleet_and_says_so(tmp_path):
    """Item 6: `fedrec up --devices 20 --rounds 2` selected forever ("only 20 devices selected, goal
    50; selecting again" every 30 s)."""
    done = fedrec("up", "--devices", "20", "--rounds", "2", "--dp", "none", "--no-baselines", "--quiet",
                  "--out", str(tmp_path / "up"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cohort sized to the fleet: 15 of 20 devices per round" in done.stdout
    report = json.loads((tmp_path / "up" / "report.json").read_text())
    assert report["deployment"]["rounds_completed"] == 2 and report["config"]["clients_per_round"] == 15
