"""The slim edge image's contents, installed alone, run real devices (slow tier: it downloads).

A fresh virtualenv gets exactly `k8s/images/edge-requirements.txt` (uv.lock's `edge` group, with
hashes) and exactly the source folders `edge.Containerfile` copies. TensorFlow is then absent, not
blocked. Two edge pods run there (`python -m edge_client.pod`, as the StatefulSet runs them)
against a real `fedrec serve`, and rounds complete.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator import up
from coordinator.catalog import synthetic_catalog
from coordinator.config import DeploymentConfig
from coordinator.state_store import ADDRESS_FILE, CATALOG_FILE, TOKEN_FILE
from coordinator.tls import TLS_DIR
from tests.k8s.manifests import K8S, REPO_ROOT

pytestmark = pytest.mark.slow
CONTAINERFILE = K8S / "images" / "edge.Containerfile"


def copied_sources() -> list[tuple[str, str]]:
    """(source, destination) of the final stage's `COPY` lines from the build context."""
    final_stage = CONTAINERFILE.read_text().split("\nFROM ")[-1]
    pairs = []
    for line in final_stage.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not parts[1].startswith("--from"):
            pairs.append((parts[1], parts[2]))
    return pairs


@pytest.fixture(scope="module")
def edge_image(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edge-image")
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (the edge image installs its requirements with uv)")
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([uv, "venv", "--quiet", "--python", python, str(root / "venv")], check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(root / "venv" / "bin" / "python"),
                    "--require-hashes", "-r", str(K8S / "images" / "edge-requirements.txt")], check=True, timeout=900)
    for source, destination in copied_sources():
        target = root / destination.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO_ROOT / source).is_dir():
            shutil.copytree(REPO_ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / source, target)
    return root


def image_env(root: Path) -> dict[str, str]:
    """The image's ENV: its venv first on PATH, /app on PYTHONPATH; nothing from this checkout."""
    return {"PATH": f"{root / 'venv' / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(root / "app"),
            "HOME": str(root), "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}


def test_the_edge_set_installs_alone_without_tensorflow(edge_image):
    python = str(edge_image / "venv" / "bin" / "python")
    listed = subprocess.run(["uv", "pip", "list", "--python", python], capture_output=True, text=True,
                            check=True).stdout.lower()
    assert "ai-edge-litert" in listed and "grpcio" in listed
    assert "tensorflow" not in listed and "jax" not in listed
    probe = subprocess.run([python, "-c", "import tensorflow"], env=image_env(edge_image), capture_output=True,
                           text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    assert {source for source, _ in copied_sources()} >= {"edge_client", "protocol", "secagg"}


def test_devices_in_the_edge_image_complete_rounds(edge_image, tmp_path):
    from tff_pipeline.config import SimulationConfig

    state_dir = tmp_path / "coordinator"
    state_dir.mkdir()
    synthetic_catalog(0).write(state_dir / CATALOG_FILE)
    port = up.free_port()
    config = up.write_coordinator_config(
        state_dir, SimulationConfig(rounds=2, clients_per_round=4, baselines=False).to_dict(),
        DeploymentConfig(selection="uniform", over_selection=0.0, min_reporters=3, selection_timeout_s=20,
                         phase_timeout_s=20, report_window_s=30, straggler_grace_s=1.0, population=6), port=port)
    coordinator = up.spawn("fedrec_cli", "serve", "--config", str(config), "--parent-pid", str(os.getpid()),
                           log_path=tmp_path / "coordinator.log")
    pods: list[subprocess.Popen] = []
    try:
        address = up.wait_for_file(state_dir / ADDRESS_FILE, coordinator, timeout_s=300, what="the coordinator")
        credentials = tmp_path / "credentials"  # what the Secret volume holds
        credentials.mkdir()
        shutil.copy(state_dir / TLS_DIR / "ca.pem", credentials / "ca.crt")
        shutil.copy(state_dir / TOKEN_FILE, credentials / "enroll-token")
        for ordinal in range(2):
            log = open(tmp_path / f"pod-{ordinal}.log", "ab")
            pods.append(subprocess.Popen(
                [str(edge_image / "venv" / "bin" / "python"), "-m", "edge_client.pod",
                 "--pod-name", f"fedrec-edge-{ordinal}", "--devices-per-pod", "3",
                 "--devices-root", str(tmp_path / f"pod-{ordinal}"), "--credentials", str(credentials),
                 "--coordinator", address, "--metrics-host", "127.0.0.1", "--metrics-port", str(up.free_port())],
                env=image_env(edge_image), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        ca_pem = (state_dir / TLS_DIR / "ca.pem").read_bytes()
        deadline = time.monotonic() + 300
        status = None
        while time.monotonic() < deadline:
            status = asyncio.run(up.read_status(address, ca_pem))
            if status.params_version >= 2:
                break
            for pod in pods:
                assert pod.poll() is None, (tmp_path / "pod-0.log").read_text()[-2000:]
            time.sleep(1)
        assert status is not None and status.params_version >= 2, status
    finally:
        up.stop_processes([*pods, coordinator])
