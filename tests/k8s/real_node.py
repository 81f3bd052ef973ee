"""A real single-node Kubernetes v1.20.2 on this machine, for the `node` tier and `bench/k8s.py`.

Nothing here is emulated: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the
kubelet with containerd and runc, the CNI bridge and kube-proxy (iptables) are the real programs,
started by `k8s/realnode/60-start-node.sh` and stopped by `90-stop-node.sh`, which restores the
host's iptables and sysctls. The pods run the project's images, built from its Containerfiles
by `k8s/realnode/prepare.sh` (CI runs it before this tier).

Addresses: every component listens on 127.0.0.1; pods live on a bridge made here (10.85.0.0/16),
Services on 10.96.0.0/16 (routed onto an empty local bridge, so nothing leaves the machine), the
node's address on that bridge (10.84.255.1). Only containerd's own images and the kube binaries
outlive a run. Storage: no provisioner exists here, so each claim of the deployment gets a hostPath
PersistentVolume bound to it by name (`volume_dir` is where a test reads it).
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from tests.k8s.manifests import K8S, REPO_ROOT

NAMESPACE = "fedrec"
SCRIPTS = K8S / "realnode"
RNROOT = Path(os.environ.get("RNROOT", Path.home() / ".cache" / "fedrec-realnode"))
RN = RNROOT / "node"
KBIN = Path(os.environ.get("FEDREC_KUBE_BIN_DIR", Path.home() / ".cache" / "fedrec" / "kube-v1.20.2"))
IMAGES = {"edge": "localhost/fedrec/edge:0.1.0", "coordinator": "localhost/fedrec/coordinator:0.1.0"}
SANDBOX_IMAGE = "localhost/pause:3.4.1"  # the CRI sandbox image (k8s/realnode/25-pause-image.sh)
POD_LOGS = Path("/var/log/pods")  # the kubelet's CRI log folder (fixed in v1.20)
CONTAINERS_CONF = RNROOT / "containers.conf"
CLAIMS = {"fedrec-coordinator-state": "2Gi", **{f"devices-fedrec-edge-{k}": "1Gi" for k in range(40)}}


def _env() -> dict[str, str]:
    return {**os.environ, "RNROOT": str(RNROOT), "RN": str(RN), "KBIN": str(KBIN),
            "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def available() -> str | None:
    """Why a real node cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, iptables)"
    for tool in ("containerd", "runc", "podman", "ctr", "socat", "etcd", "iptables-save"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run k8s/realnode/prepare.sh"
    for binary in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"):
        if not (KBIN / binary).exists():
            return f"{KBIN / binary} is not built: run k8s/realnode/prepare.sh"
    for image in (*IMAGES.values(), SANDBOX_IMAGE):
        if subprocess.run(["podman", "image", "exists", image], env=_env()).returncode != 0:
            return f"the image {image} is not built: run k8s/realnode/prepare.sh"
    return None


def image_id(image: str) -> str:
    return subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", image], env=_env(),
                          capture_output=True, text=True, check=True).stdout.strip()


def image_size(image: str) -> int:
    return int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image], env=_env(),
                              capture_output=True, text=True, check=True).stdout.strip())


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def for_this_node(manifest_text: str) -> str:
    """The rendered manifests as this node needs them: PodDisruptionBudget as policy/v1beta1 (v1.20
    has no policy/v1), and `imagePullPolicy: Never` (the images are imported; a missing one must
    fail here, not be looked for in a registry on the internet)."""
    docs = [d for d in yaml.safe_load_all(manifest_text) if d]
    for doc in docs:
        if doc["kind"] == "PodDisruptionBudget" and doc["apiVersion"] == "policy/v1":
            doc["apiVersion"] = "policy/v1beta1"
        template = doc.get("spec", {}).get("template", {}).get("spec") if isinstance(doc.get("spec"), dict) else None
        for container in (template or {}).get("containers", []) + (template or {}).get("initContainers", []):
            container["imagePullPolicy"] = "Never"
    return yaml.safe_dump_all(docs, sort_keys=False)


class RealNodeCluster:
    """`start()` brings the node up with the project's images imported; `stop()` tears it down."""

    def __init__(self, root: Path) -> None:
        self.root = root  # where this run's copies of logs go on stop
        self.applied_at = 0.0
        self.started = False

    # lifecycle

    def start(self) -> RealNodeCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        # The node's processes are not our children (the scripts start them under nohup): stop them
        # at exit and on SIGTERM too (as Ctrl-C, so teardown runs). After a kill -9 the next start
        # stops what is left first (60-start-node.sh).
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        self.started = True
        self._run_script("60-start-node.sh", timeout_s=300)
        self._import_images()
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self._make_volumes()
        return self

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        logs = RN / "logs"
        if logs.exists():
            shutil.copytree(logs, self.root / "node-logs", dirs_exist_ok=True)
        for folder in POD_LOGS.glob(f"{NAMESPACE}_*"):
            shutil.copytree(folder, self.root / "pod-logs" / folder.name, dirs_exist_ok=True)
        self._run_script("90-stop-node.sh", timeout_s=300, check=False)

    def _run_script(self, name: str, *args: str, timeout_s: float, check: bool = True) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            result = subprocess.run(["bash", str(SCRIPTS / name), *args], env=_env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout_s)
        if check and result.returncode != 0:
            raise RuntimeError(f"{name} failed ({result.returncode}); see {self.root / (name + '.log')}")

    def _import_images(self) -> None:
        """Copy the project's images into containerd (what the kubelet runs), unless the same build
        is there already (a 2 GB import costs over a minute), under the names the manifests use."""
        socket = str(RN / "containerd" / "containerd.sock")
        held = subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True,
                              text=True, check=True).stdout.split()
        for which, image in {**IMAGES, "pause": SANDBOX_IMAGE}.items():
            stamp = RNROOT / "imported" / which
            current = image_id(image)
            if image not in held or not stamp.exists() or stamp.read_text() != current:
                self._run_script("35-import-images.sh", image, timeout_s=900)
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.write_text(current)
            if which == "pause":
                continue
            subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "images", "tag", "--force", image,
                            f"docker.io/fedrec/{which}:0.1.0"], capture_output=True, check=True)

    def _make_volumes(self) -> None:
        """A hostPath PersistentVolume per claim the deployment makes, bound to it by name (no
        provisioner here), owned by the pods' user as a provisioner's volume would be writable."""
        for claim, size in CLAIMS.items():
            folder = self.volume_dir(claim)
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, 10001, 10001)
            self.core.create_persistent_volume(client.V1PersistentVolume(
                metadata=client.V1ObjectMeta(name=f"rn-{claim}"),
                spec=client.V1PersistentVolumeSpec(
                    capacity={"storage": size}, access_modes=["ReadWriteOnce"],
                    persistent_volume_reclaim_policy="Retain",
                    claim_ref=client.V1ObjectReference(namespace=NAMESPACE, name=claim),
                    host_path=client.V1HostPathVolumeSource(path=str(folder), type="Directory"))))

    # reaching the cluster

    @property
    def kubeconfig(self) -> Path:
        return RN / "admin.kubeconfig"

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """The node's own kubectl (v1.20, the server's version: exec and logs stream as it expects)."""
        return subprocess.run([str(KBIN / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args], input=input_text,
                              capture_output=True, text=True, check=check, timeout=timeout_s)

    def apply_overlay(self, folder: Path, *, transform: Callable[[str], str] | None = None) -> float:
        """Render FOLDER with a current kustomize (v1.20's is too old for the overlays), make it
        v1.20's, `kubectl apply` it; returns when it was applied."""
        kustomize = shutil.which("kubectl")
        assert kustomize is not None, "a kubectl with kustomize >= v5 renders the overlays"
        rendered = subprocess.run([kustomize, "kustomize", str(folder)], capture_output=True, text=True,
                                  check=True).stdout
        text = for_this_node(rendered)
        if transform is not None:
            text = transform(text)
        applied = time.time()
        self.kubectl("apply", "-f", "-", input_text=text)
        return applied

    def volume_dir(self, claim: str) -> Path:
        return RN / "pv" / claim

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
                           f"node logs in {RN / 'logs'}, pod logs in {POD_LOGS}")

    def coordinator_events(self, *events: str) -> list[tuple[float, dict[str, Any]]]:
        """(unix time, record) of the coordinator pods' JSON log records with these `event`s, in order
        (from the kubelet's CRI logs: `TIME STREAM TAG LINE`)."""
        found = []
        for log in POD_LOGS.glob(f"{NAMESPACE}_fedrec-coordinator-*/coordinator/*.log"):
            for raw in log.read_text(errors="replace").splitlines():
                line = raw.split(" ", 3)[-1] if raw.count(" ") >= 3 else ""
                if not line.startswith("{") or '"event"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line the runtime split (partial, tag P)
                if record.get("event") in events:
                    moment = datetime.datetime.fromisoformat(record["time"]).timestamp()
                    found.append((moment, record))
        return sorted(found, key=lambda item: item[0])

    def coordinator_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=coordinator").items

    def edge_pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=edge").items

    def ready_since(self, pod_name: str) -> float | None:
        """When the pod last became Ready (unix time, the kubelet's 1 s resolution), None if it is not."""
        pod = self.core.read_namespaced_pod(pod_name, NAMESPACE)
        for condition in pod.status.conditions or []:
            if condition.type == "Ready" and condition.status == "True":
                return condition.last_transition_time.timestamp()
        return None

    def exec(self, pod_name: str, *command: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`kubectl exec` in the pod's first container (through the API server, the kubelet and CRI)."""
        return self.kubectl("-n", NAMESPACE, "exec", pod_name, "--", *command, check=False, timeout_s=timeout_s)


def edit_coordinator_toml(text: str, edit: Callable[[str], str]) -> str:
    """The rendered manifests with the coordinator's `coordinator.toml` passed through `edit`."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "fedrec-coordinator":
            doc["data"]["coordinator.toml"] = edit(doc["data"]["coordinator.toml"])
    return yaml.safe_dump_all(docs, sort_keys=False)


DEV_OVERLAY = K8S / "overlays" / "dev"
__all__ = ["DEV_OVERLAY", "NAMESPACE", "REPO_ROOT", "RealNodeCluster", "available", "edit_coordinator_toml"]
