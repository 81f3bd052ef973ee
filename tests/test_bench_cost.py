"""bench/cost.py --json: the keys issue 20 asks for (one repetition on the synthetic data set; a
real process with TFF, so it is an e2e test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_cost_json_has_the_ratios(tmp_path):
    out = tmp_path / "cost.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cost.py"), "--dataset", "synthetic", "--repeats", "1",
                           "--clients-per-round", "400", "--users-per-client", "100", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    for key in ("federated_over_centralized", "per_user_clients_over_centralized",
                "grouped_rounds_pass_over_centralized"):
        assert summary[key] > 0, key
    assert summary["users_per_client"] == 100 and summary["tff_clients_grouped"] == 4 and summary["dp"] == "none"
    assert len(summary["rows"]) == 1
