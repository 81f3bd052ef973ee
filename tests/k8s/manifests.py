"""Rendering the kustomize overlays, and the restricted Pod Security Standard as a checker.

The checker follows the "Restricted" profile of https://kubernetes.io/docs/concepts/security/
pod-security-standards/ (the baseline controls plus the restricted ones) for every pod template.
It is the test's own reading of the standard; the API server of the test tier (v1.20) predates
Pod Security admission, so it cannot enforce it for us.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "k8s"
OVERLAYS = ("dev", "scale", "dev-byo-tls")
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize FOLDER`, parsed."""
    exe = kubectl()
    assert exe is not None
    text = subprocess.run([exe, "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield f"CronJob/{doc['metadata']['name']}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """Every way a pod spec breaks the restricted profile (empty: it passes)."""
    problems: list[str] = []
    pod_context = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} has type {sorted(kinds - ALLOWED_VOLUMES)}")
    if pod_context.get("sysctls"):
        problems.append("pod sets sysctls")
    if (pod_context.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                                       "container_kvm_t"):
        problems.append("pod SELinux type is not allowed")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runs as user 0")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        problems.append(f"pod seccomp profile {pod_seccomp}")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or []),
                  *(spec.get("ephemeralContainers") or [])]
    for container in containers:
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{name}: runs as user 0")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ALLOWED_SECCOMP:
            problems.append(f"{name}: seccomp profile is {seccomp}, not RuntimeDefault or Localhost")
        if context.get("procMount") not in (None, "Default"):
            problems.append(f"{name}: procMount {context['procMount']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"{name}: hostProcess")
    return problems
