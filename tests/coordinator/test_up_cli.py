"""`fedrec up` from the command line: a whole small deployment, its report, and nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys

SIMULATE_REPORT_KEYS = {"config", "data", "final", "baselines", "privacy", "timing", "history", "run_id"}


def _processes_mentioning(text: str) -> list[str]:
    done = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if "pgrep" not in line]


def test_fedrec_up_trains_over_real_processes_and_writes_the_simulate_report(tmp_path):
    out = tmp_path / "up"
    done = subprocess.run(
        [sys.executable, "-m", "tff_pipeline.cli", "up", "--devices", "10", "--clients-per-round", "5",
         "--rounds", "2", "--no-baselines", "--out", str(out)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rounds 2/2 completed" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert SIMULATE_REPORT_KEYS <= set(report)
    deployment = report["deployment"]
    assert deployment["rounds_completed"] == 2 and deployment["devices"] == 10
    assert deployment["bytes_in"] > 0 and deployment["bytes_up_per_device_mean"] > 0
    assert report["privacy"]["rounds"] == 2 and report["final"]["rmse"] is not None
    for name in ("report.md", "metrics.csv", "final_model.npz", "config.json", "coordinator/coordinator.toml"):
        assert (out / name).exists(), name
    assert "## Deployment" in (out / "report.md").read_text()
    assert _processes_mentioning(str(out)) == []  # coordinator and device processes ended with it

    again = subprocess.run([sys.executable, "-m", "tff_pipeline.cli", "up", "--out", str(out)],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
