"""`fedrec serve --in-cluster`: the coordinator as a Kubernetes pod.

    probes answer at once      /healthz 200, /readyz 503
    wait for the Lease         (leadership.py) - a second replica waits here, state untouched
    open the state, build      (server.build)
    publish device credentials (publication.py)
    watch edge pods            (edge_pods.py) -> Scheduler.host_gone
    serve rounds               /readyz 200; status ConfigMap every few seconds
    SIGTERM                    abandon the round in progress, release the Lease, exit 0
    Lease lost                 stop at once, exit 1 (Kubernetes restarts the pod as a candidate)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from coordinator.cluster.api import ClusterSettings
from coordinator.cluster.edge_pods import EdgePodWatcher
from coordinator.cluster.leadership import Leadership
from coordinator.cluster.publication import ClusterPublication
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.status import live_status

log = logging.getLogger("fedrec.coordinator.cluster")
EXIT_LEASE_LOST = 1


def run_in_cluster(config: CoordinatorConfig, settings: ClusterSettings, api: client.ApiClient, *,
                   capture_path: Path | None = None) -> int:
    return asyncio.run(_main(config, settings, api, capture_path))


async def _main(config: CoordinatorConfig, settings: ClusterSettings, api: client.ApiClient,
                capture_path: Path | None) -> int:
    from coordinator import server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lost = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def on_lost() -> None:
        loop.call_soon_threadsafe(lost.set)
        loop.call_soon_threadsafe(stop.set)

    metrics = CoordinatorMetrics()
    if config.server.metrics_port >= 0:
        metrics.serve(config.server.metrics_port, host=config.server.host)
    leadership = Leadership(settings, api, on_lost=on_lost)
    leadership.start()
    watcher: EdgePodWatcher | None = None
    try:
        if not await leadership.wait_until_leader(stop):
            return 0
        coordinator = server.build(config, capture_path=capture_path, metrics=metrics)
        publication = ClusterPublication(settings, api)
        publication.publish_credentials(ca_pem=coordinator.tls.device_trust_pem, enroll_token=coordinator.enroll_token)
        scheduler = coordinator.scheduler
        pods = watcher = EdgePodWatcher(api, namespace=settings.namespace, selector=settings.edge_selector,
                                        on_gone=lambda pod: _call_soon(loop, scheduler.host_gone, pod))
        pods.start()
        scheduler.hosts.expected_hosts = lambda: pods.population  # ends the presence warm-up early
        reporter = asyncio.create_task(_report_status(coordinator, watcher, publication, settings))

        def last_status() -> None:  # rounds have stopped, the state is still open
            reporter.cancel()
            if not lost.is_set():
                publication.publish_status(status_of(coordinator, watcher, settings))

        try:
            await server.serve(coordinator, stop=stop, on_stopped=last_status)
        finally:
            reporter.cancel()
        return EXIT_LEASE_LOST if lost.is_set() else 0
    finally:
        if watcher is not None:
            watcher.stop()
        if not lost.is_set():
            await asyncio.to_thread(leadership.release)
        metrics.close()


async def _report_status(coordinator: Any, watcher: EdgePodWatcher, publication: ClusterPublication,
                         settings: ClusterSettings) -> None:
    while True:
        await asyncio.to_thread(publication.publish_status, status_of(coordinator, watcher, settings))
        await asyncio.sleep(settings.status_every_s)


def status_of(coordinator: Any, watcher: EdgePodWatcher, settings: ClusterSettings) -> dict[str, Any]:
    """What `fedrec k8s status` shows (kept in the status ConfigMap)."""
    scheduler = coordinator.scheduler
    status = live_status(scheduler, coordinator.store)
    return {
        "leader": settings.identity,
        "phase": scheduler.status.phase,  # the scheduler's, not the round's: the ConfigMap is read rarely
        "finished": status.finished,
        "stop_reason": status.stop_reason,
        "params_version": status.params_version,
        "rounds_planned": status.rounds_planned,
        "rounds": dict(status.round_counts),
        "epsilon": status.epsilon,
        "delta": status.delta,
        "enrolled_devices": status.devices_enrolled,
        "edge_pods": watcher.population,
        "devices_per_pod": scheduler.hosts.devices_per_host(),
        "model_version": status.model_version,
        "updated_unix": round(time.time(), 1),
    }


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Hand `callback(*args)` to the event loop from the watcher's thread."""
    loop.call_soon_threadsafe(callback, *args)
