"""`fedrec k8s` without a cluster: each failure is one line naming what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FEDREC = str(Path(sys.executable).parent / "fedrec")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDREC, "k8s", *args], capture_output=True, text=True, timeout=120)


def test_a_missing_kubeconfig_is_named(tmp_path):
    result = _run("status", "--kubeconfig", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "kubeconfig" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_api_server_is_named(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
                          "    server: https://127.0.0.1:9\n    insecure-skip-tls-verify: true\n"
                          "users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n"
                          "    cluster: c\n    user: u\ncurrent-context: x\n")
    for args in (("status",), ("scale", "3")):
        result = _run(*args, "--kubeconfig", str(kubeconfig))
        assert result.returncode == 2, result.stderr
        assert "cannot reach the Kubernetes API server at https://127.0.0.1:9" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_negative_scale_is_refused():
    result = _run("scale", "-1", "--kubeconfig", "/dev/null")
    assert result.returncode == 2 and "replicas" in result.stderr and "must be 0 or more" in result.stderr
