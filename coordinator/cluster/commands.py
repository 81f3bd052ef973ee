"""`fedrec k8s status` and `fedrec k8s scale`: the operator's view, with their own kubeconfig."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from coordinator.cluster.api import ClusterSettings
from coordinator.cluster.publication import STATUS_KEY
from coordinator.errors import CoordinatorError

EDGE_STATEFULSET = "fedrec-edge"


class ClusterCommandError(CoordinatorError, RuntimeError):
    """A `fedrec k8s` failure with a message for the user."""


def read_status(api: client.ApiClient, *, namespace: str, settings: ClusterSettings | None = None) -> dict[str, Any]:
    """The coordinator's published status plus what the cluster itself says about the edge pods."""
    settings = settings or ClusterSettings(namespace=namespace, identity="fedrec-k8s-status")
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    try:
        config_map = core.read_namespaced_config_map(settings.status_configmap, namespace)
    except ApiException as error:
        raise ClusterCommandError(f"namespace {namespace}: cannot read ConfigMap {settings.status_configmap} "
                                  f"({error.status} {error.reason}); is fedrec deployed there?") from None
    text = (config_map.data or {}).get(STATUS_KEY)
    status: dict[str, Any] = json.loads(text) if text else {}
    pods = core.list_namespaced_pod(namespace, label_selector=settings.edge_selector).items
    status["edge_pods_in_cluster"] = {p.metadata.name: _pod_state(p) for p in pods}
    try:
        edge = apps.read_namespaced_stateful_set(EDGE_STATEFULSET, namespace)
        status["edge_replicas"] = {"desired": edge.spec.replicas, "ready": edge.status.ready_replicas or 0}
    except ApiException:
        status["edge_replicas"] = None
    return status


def render_status(status: dict[str, Any]) -> str:
    if not status.get("leader"):
        return "the coordinator has not published a status yet (starting, or waiting for the Lease)"
    age = time.time() - float(status.get("updated_unix", 0))
    rounds = status.get("rounds", {})
    epsilon = status.get("epsilon")
    lines = [
        f"coordinator {status['leader']}: {status['phase']} (status {age:.0f}s old)",
        f"rounds: {status['params_version']} of {status['rounds_planned']} completed "
        f"({rounds.get('abandoned', 0)} abandoned, {rounds.get('interrupted', 0)} interrupted)",
        "privacy: " + ("no DP" if epsilon is None else f"ε spent {epsilon:.3f} at δ={status.get('delta')}"),
        f"devices: {status['enrolled_devices']} enrolled; model {status.get('model_version')}",
    ]
    replicas = status.get("edge_replicas")
    if replicas:
        lines.append(f"edge StatefulSet: {replicas['ready']} of {replicas['desired']} pods ready")
    per_pod = status.get("devices_per_pod", {})
    for pod, state in sorted(status.get("edge_pods_in_cluster", {}).items(), key=lambda kv: _ordinal(kv[0])):
        lines.append(f"  {pod}: {state}, {per_pod.get(pod, 0)} devices checking in")
    if status.get("finished"):
        lines.append(f"finished: {status.get('stop_reason')}")
    return "\n".join(lines)


def scale(api: client.ApiClient, *, namespace: str, replicas: int, name: str = EDGE_STATEFULSET) -> int:
    """Set the edge StatefulSet's replicas through its scale subresource; returns the previous count."""
    if replicas < 0:
        raise ClusterCommandError("replicas must be 0 or more")
    apps = client.AppsV1Api(api)
    try:
        previous = apps.read_namespaced_stateful_set_scale(name, namespace).spec.replicas
        apps.patch_namespaced_stateful_set_scale(name, namespace, {"spec": {"replicas": replicas}})
    except ApiException as error:
        raise ClusterCommandError(f"cannot scale statefulset/{name} in {namespace}: {error.status} "
                                  f"{error.reason}") from None
    return int(previous or 0)


def _pod_state(pod: client.V1Pod) -> str:
    if pod.metadata.deletion_timestamp is not None:
        return "terminating"
    conditions = {c.type: c.status for c in (pod.status.conditions or [])}
    phase = pod.status.phase or "Pending"
    return f"{phase}, ready" if conditions.get("Ready") == "True" else phase


def _ordinal(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)
