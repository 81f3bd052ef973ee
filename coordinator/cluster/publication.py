"""What the coordinator writes to the cluster, and nothing else.

- The device credentials Secret (declared empty in the manifests): the CA certificate devices
  trust and the enrollment token. The coordinator makes both on its first start and keeps them
  on its volume; edge pods mount the Secret. A patch keeps the Secret's other fields, so a later
  `kubectl apply` of the (empty) declaration does not erase what was published.
- A status ConfigMap (rounds, ε, devices per pod, who leads), so that `fedrec k8s status` reads
  the cluster instead of needing a port-forward.

RBAC allows exactly `get`/`patch` on these two names (k8s/base/rbac.yaml).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from kubernetes import client

from coordinator.cluster.api import ClusterSettings

log = logging.getLogger("fedrec.coordinator.cluster")
CA_KEY = "ca.crt"
TOKEN_KEY = "enroll-token"
STATUS_KEY = "status.json"
REQUEST_TIMEOUT_S = 10


class ClusterPublication:
    def __init__(self, settings: ClusterSettings, api: client.ApiClient) -> None:
        self.settings = settings
        self.core = client.CoreV1Api(api)
        self._last_status: str | None = None

    def publish_credentials(self, *, ca_pem: bytes, enroll_token: str) -> None:
        data = {CA_KEY: base64.b64encode(ca_pem).decode(),
                TOKEN_KEY: base64.b64encode(enroll_token.encode()).decode()}
        self.core.patch_namespaced_secret(self.settings.credentials_secret, self.settings.namespace, {"data": data},
                                          _request_timeout=REQUEST_TIMEOUT_S)
        log.info("published the device credentials to Secret %s", self.settings.credentials_secret)

    def publish_status(self, status: dict[str, Any]) -> None:
        text = json.dumps(status, sort_keys=True)
        if text == self._last_status:
            return
        try:
            self.core.patch_namespaced_config_map(self.settings.status_configmap, self.settings.namespace,
                                                  {"data": {STATUS_KEY: text}}, _request_timeout=REQUEST_TIMEOUT_S)
            self._last_status = text
        except Exception as error:  # noqa: BLE001 - the next publication retries
            log.warning("cannot publish the status to ConfigMap %s: %s", self.settings.status_configmap,
                        getattr(error, "reason", error))
