"""A simulated cluster for tests and benchmarks: the real control plane plus the kubelet simulator."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.k8s.control_plane import ControlPlane, binaries
from tests.k8s.kubelet_sim import KubeletSimulator, fedrec_images
from tests.k8s.manifests import K8S, REPO_ROOT, kubectl

NAMESPACE = "fedrec"


def available() -> str | None:
    """Why the simulated cluster cannot run here (None: it can)."""
    if kubectl() is None:
        return "kubectl is not installed"
    if binaries() is None:
        return ("kube-apiserver/kube-controller-manager v1.20.2 are not cached (~/.cache/fedrec/kube-v1.20.2) or etcd "
                "is missing: run ../shared/tools/build-kube-apiserver.sh ~/.cache/fedrec/kube-v1.20.2")
    return None


def for_api_server_1_20(manifest_text: str) -> str:
    """The test API server is v1.20, older than `policy/v1` PodDisruptionBudgets (1.21): the one
    object we must down-level. Everything else is applied exactly as rendered."""
    docs = [d for d in yaml.safe_load_all(manifest_text) if d]
    for doc in docs:
        if doc["kind"] == "PodDisruptionBudget" and doc["apiVersion"] == "policy/v1":
            doc["apiVersion"] = "policy/v1beta1"
    return yaml.safe_dump_all(docs, sort_keys=False)


class SimulatedCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.control_plane = ControlPlane(root / "control-plane")
        self.kubelet: KubeletSimulator | None = None

    def start(self) -> SimulatedCluster:
        (self.root / "control-plane").mkdir(parents=True, exist_ok=True)
        self.control_plane.start()
        self.api = self.control_plane.api_client()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.kubelet = KubeletSimulator(
            self.api, root=self.root / "node", api_server=("127.0.0.1", self.control_plane.api_port),
            ca_path=self.control_plane.pki / "ca.crt", images=fedrec_images(REPO_ROOT, self.root / "edge-image"),
            namespaces=(NAMESPACE,)).start()
        return self

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        self.control_plane.stop()

    def kubectl(self, *args: str, **kwargs: Any):
        return self.control_plane.kubectl(*args, **kwargs)

    def apply_overlay(self, folder: Path, *, transform: Callable[[str], str] | None = None) -> float:
        """`kubectl apply -k FOLDER` (rendered, PDB down-levelled for v1.20); returns when it was applied."""
        rendered = self.kubectl("kustomize", str(folder)).stdout
        text = for_api_server_1_20(rendered)
        if transform is not None:
            text = transform(text)
        applied = time.time()
        self.kubectl("apply", "-f", "-", input_text=text)
        return applied

    # reading the deployment

    def status(self) -> dict[str, Any]:
        """What the coordinator published in its status ConfigMap ({} before its first publication)."""
        config_map = self.core.read_namespaced_config_map("fedrec-status", NAMESPACE)
        text = (config_map.data or {}).get("status.json")
        return json.loads(text) if text else {}

    def wait_for(self, predicate: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as error:  # noqa: BLE001 - the object may not exist yet
                last_error = error
            time.sleep(every_s)
        raise TimeoutError(f"{what}: not within {timeout_s:.0f} s (last error: {last_error}); "
                           f"logs under {self.root}")

    def coordinator_events(self, *events: str) -> list[tuple[float, dict[str, Any]]]:
        """(unix time, record) of the coordinator pods' JSON log records with these `event`s, in order."""
        found = []
        for log in (self.root / "node" / "pods").glob("fedrec_fedrec-coordinator-*/container.log"):
            for line in log.read_text(errors="replace").splitlines():
                if not line.startswith("{") or '"event"' not in line:
                    continue
                record = json.loads(line)
                if record.get("event") in events:
                    moment = datetime.datetime.fromisoformat(record["time"]).timestamp()
                    found.append((moment, record))
        return sorted(found, key=lambda item: item[0])

    def coordinator_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=coordinator").items

    def edge_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=edge").items


def edit_coordinator_toml(text: str, edit: Callable[[str], str]) -> str:
    """The rendered manifests with the coordinator's `coordinator.toml` passed through `edit`."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "fedrec-coordinator":
            doc["data"]["coordinator.toml"] = edit(doc["data"]["coordinator.toml"])
    return yaml.safe_dump_all(docs, sort_keys=False)


DEV_OVERLAY = K8S / "overlays" / "dev"
