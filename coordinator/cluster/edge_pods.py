"""Watch the edge pods: a pod that is deleted (or starts terminating) takes its devices with it.

A watch on pods by label selector, resumed from the last resourceVersion and re-listed when the
API server says the version is too old (410). Each pod that disappears is reported once through
`on_gone(pod_name)`, which the coordinator turns into `Scheduler.host_gone` on its event loop:
the round in progress stops waiting for those devices at once instead of at its deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("fedrec.coordinator.cluster")
WATCH_SECONDS = 30


class EdgePodWatcher:
    def __init__(self, api: client.ApiClient, *, namespace: str, selector: str,
                 on_gone: Callable[[str], None]) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector, self.on_gone = namespace, selector, on_gone
        self.running: set[str] = set()  # pods that exist and are not terminating
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None

    @property
    def population(self) -> list[str]:
        with self._lock:
            return sorted(self.running)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="fedrec-edge-pod-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _loop(self) -> None:
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                self._watch = watch.Watch()
                for event in self._watch.stream(self.core.list_namespaced_pod, self.namespace,
                                                label_selector=self.selector, resource_version=version,
                                                timeout_seconds=WATCH_SECONDS):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._seen(pod.metadata.name, alive=event["type"] != "DELETED"
                               and pod.metadata.deletion_timestamp is None)
                    if self._stop.is_set():
                        return
            except ApiException as error:
                if error.status == 410:  # our resourceVersion is too old: list again
                    version = None
                    continue
                log.warning("watching edge pods failed (%s); retrying", error.reason)
                self._stop.wait(2.0)
            except Exception as error:  # noqa: BLE001 - the watch must outlive API server restarts
                log.warning("watching edge pods failed (%s); retrying", error)
                version = None
                self._stop.wait(2.0)

    def _relist(self) -> str:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        alive = {p.metadata.name for p in pods.items if p.metadata.deletion_timestamp is None}
        with self._lock:
            vanished = self.running - alive
            self.running = alive
        for name in sorted(vanished):
            self._report_gone(name)
        return pods.metadata.resource_version

    def _seen(self, name: str, *, alive: bool) -> None:
        with self._lock:
            was_running = name in self.running
            if alive:
                self.running.add(name)
            else:
                self.running.discard(name)
        if was_running and not alive:
            self._report_gone(name)

    def _report_gone(self, name: str) -> None:
        log.info("edge pod %s is gone", name)
        try:
            self.on_gone(name)
        except Exception:
            log.exception("handling the loss of edge pod %s failed", name)
