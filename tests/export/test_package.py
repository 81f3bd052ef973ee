"""`fedrec export`: a real (tiny) simulation run to a model package, and the refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, ManifestError
from protocol.package import read_verified_model, write_package
from tff_pipeline.export.package import ExportError, export_run
from tff_pipeline.privacy import accounting


def _fedrec(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedrec_cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory) -> Path:
    """A 6-round DP run on the built-in synthetic data (checkpoints of rounds 5 and 6 are kept)."""
    out = tmp_path_factory.mktemp("run") / "dp"
    done = _fedrec("simulate", "--rounds", "6", "--clients-per-round", "60", "--dp", "fixed",
                   "--noise-multiplier", "1.0", "--dim", "3", "--eval-every", "3", "--no-baselines",
                   "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.e2e
def test_cli_export_writes_a_verified_package_with_the_runs_facts(dp_run, tmp_path):
    package = tmp_path / "pkg"
    done = _fedrec("export", "--run", str(dp_run), "--out", str(package))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "round 6" in done.stdout and "epsilon" in done.stdout
    manifest = Manifest.read(package / MANIFEST_FILE)
    read_verified_model(manifest, package / MODEL_FILE)  # size and sha256 agree
    report = json.loads((dp_run / "report.json").read_text())
    vocabulary = json.loads((dp_run / "vocabulary.json").read_text())
    assert manifest.round == 6 and manifest.dim == 3
    assert manifest.num_items == report["data"]["num_items"] == len(manifest.item_ids)
    assert list(manifest.item_ids) == vocabulary["item_raw_ids"]
    assert list(manifest.item_titles) == vocabulary["item_titles"]
    assert (manifest.rating_min, manifest.rating_max) == tuple(report["data"]["rating_scale"])
    assert manifest.privacy["epsilon_rdp"] == pytest.approx(report["privacy"]["epsilon_rdp"])
    assert manifest.privacy["delta"] == report["privacy"]["delta"]
    assert manifest.model_version.endswith(manifest.model_sha256[:8])

    from ai_edge_litert.interpreter import Interpreter

    weights = Interpreter(model_path=str(package / MODEL_FILE)).get_signature_runner("get_weights")()
    with np.load(dp_run / "final_model.npz") as final:
        np.testing.assert_array_equal(weights["item_embeddings"], final["item_embeddings"])
        np.testing.assert_array_equal(weights["item_bias"], final["item_bias"])


@pytest.mark.e2e
def test_export_of_an_earlier_round_reports_the_privacy_spent_by_then(dp_run, tmp_path):
    manifest = export_run(dp_run, tmp_path / "pkg5", round_num=5)
    report = json.loads((dp_run / "report.json").read_text())
    expected = accounting.privacy_spent(
        noise_multiplier=report["privacy"]["noise_multiplier"], sampling_rate=report["privacy"]["sampling_rate"],
        rounds=5, delta=report["privacy"]["delta"],
    )
    assert manifest.round == 5
    assert manifest.privacy["rounds"] == 5
    assert manifest.privacy["epsilon_rdp"] == pytest.approx(expected.epsilon_rdp)
    assert manifest.privacy["epsilon_rdp"] < report["privacy"]["epsilon_rdp"]


@pytest.mark.e2e
def test_refusals_name_the_problem(dp_run, tmp_path):
    with pytest.raises(ExportError, match=r"no checkpoint for round 2.*keeps rounds \[5, 6\]"):
        export_run(dp_run, tmp_path / "x", round_num=2)
    broken = tmp_path / "broken"
    shutil.copytree(dp_run, broken)
    (broken / "vocabulary.json").write_text("{not json")
    with pytest.raises(ExportError, match="vocabulary.json: not valid JSON"):
        export_run(broken, tmp_path / "y")
    (broken / "report.json").unlink()
    done = _fedrec("export", "--run", str(broken), "--out", str(tmp_path / "z"))
    assert done.returncode == 2 and "report.json: missing" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_a_package_replaces_only_a_package_and_only_when_told(make_package, tmp_path):
    source = make_package(num_items=30, dim=4, seed=1)
    manifest = Manifest.read(source / MANIFEST_FILE)
    model_bytes = (source / MODEL_FILE).read_bytes()
    foreign = tmp_path / "pkg"
    foreign.mkdir()
    (foreign / "stale.txt").write_text("old")
    with pytest.raises(ManifestError, match="not a model package; refusing to replace it"):
        write_package(foreign, model_bytes, manifest, replace=True)
    assert [p.name for p in foreign.iterdir()] == ["stale.txt"]
    target = tmp_path / "pkg2"
    write_package(target, model_bytes, manifest)
    with pytest.raises(ManifestError, match="already there"):
        write_package(target, model_bytes, manifest)
    write_package(target, model_bytes, manifest, replace=True)
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "pkg2"]  # no staging left behind
    read_verified_model(Manifest.read(target / MANIFEST_FILE), target / MODEL_FILE)
