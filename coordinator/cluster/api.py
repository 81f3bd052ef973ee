"""How the coordinator (or `fedrec k8s`) reaches the API server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kubernetes import client, config

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Where the coordinator runs in the cluster and which objects are its own (names from the manifests)."""

    namespace: str
    identity: str  # the candidate's name in leader election: the pod's name
    edge_selector: str = "app.kubernetes.io/name=fedrec,app.kubernetes.io/component=edge"
    lease_name: str = "fedrec-coordinator"
    credentials_secret: str = "fedrec-device-credentials"
    status_configmap: str = "fedrec-status"
    lease_duration_s: int = 15
    renew_deadline_s: int = 10
    retry_period_s: int = 2
    status_every_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.namespace or not self.identity:
            raise ValueError("a cluster coordinator needs its namespace and identity (the pod's name)")
        if not self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s >= 1.2:
            raise ValueError("leader election needs lease_duration_s > renew_deadline_s > 1.2 * retry_period_s >= 1.2")


def connect(*, kubeconfig: Path | None = None, service_account_dir: Path | None = None) -> client.ApiClient:
    """In a pod: the service account's token and CA (from `service_account_dir`, default the
    standard mount) and the API server from KUBERNETES_SERVICE_HOST/PORT; outside: a kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig is not None or service_account_dir is None and not SERVICE_ACCOUNT_DIR.exists():
        config.load_kube_config(config_file=None if kubeconfig is None else str(kubeconfig),
                                client_configuration=configuration)
    else:
        folder = service_account_dir or SERVICE_ACCOUNT_DIR
        loader = config.incluster_config.InClusterConfigLoader(token_filename=str(folder / "token"),
                                                               cert_filename=str(folder / "ca.crt"))
        loader.load_and_set(configuration)
    return client.ApiClient(configuration)
