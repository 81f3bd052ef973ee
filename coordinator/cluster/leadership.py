"""Lease leader election: two coordinator replicas never run rounds at the same time.

The official client's elector (`kubernetes.leaderelection`) runs in a daemon thread over our
`LeaseLock`. The coordinator waits for the Lease *before* it opens its state folder, so a
replacement pod that starts while the old one is still terminating cannot touch the SQLite
state or run a round until the old one has released the Lease or let it expire. A leader that
fails to renew within `renew_deadline_s` hears `on_lost` and must stop at once: a successor can
take over only `lease_duration_s` after the last renewal it saw, which is later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from kubernetes import client
from kubernetes.leaderelection import electionconfig, leaderelection

from coordinator.cluster.api import ClusterSettings
from coordinator.cluster.lease_lock import LeaseLock

log = logging.getLogger("fedrec.coordinator.cluster")


class _QuietElector(logging.Filter):
    """The official elector logs every retry at INFO on the root logger ("yet to finish
    lease_duration ...", every 2 s on a standby); ours says when leadership changes. Demote its
    INFO lines to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.module in ("leaderelection", "configmaplock"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_QUIET = _QuietElector()


class Leadership:
    def __init__(self, settings: ClusterSettings, api: client.ApiClient, *, on_lost: Callable[[], None]) -> None:
        self.settings = settings
        if _QUIET not in logging.getLogger().filters:
            logging.getLogger().addFilter(_QUIET)
        self.lock = LeaseLock(settings.lease_name, settings.namespace, settings.identity, api)
        self._acquired = threading.Event()
        self._lost = threading.Event()
        self._on_lost = on_lost
        self._elector = leaderelection.LeaderElection(electionconfig.Config(
            self.lock, lease_duration=settings.lease_duration_s, renew_deadline=settings.renew_deadline_s,
            retry_period=settings.retry_period_s, onstarted_leading=self._acquired.set,
            onstopped_leading=self._stopped))

    @property
    def is_leader(self) -> bool:
        return self._acquired.is_set() and not self._lost.is_set()

    def start(self) -> None:
        threading.Thread(target=self._elector.run, name="fedrec-leader-election", daemon=True).start()

    async def wait_until_leader(self, stop: asyncio.Event) -> bool:
        """True once this candidate holds the Lease; False if `stop` was set first."""
        while not self._acquired.is_set():
            if stop.is_set():
                return False
            await asyncio.sleep(0.2)
        log.info("%s leads (Lease %s/%s)", self.settings.identity, self.settings.namespace, self.settings.lease_name)
        return True

    def release(self) -> None:
        """On a clean stop: hand the Lease over at once instead of after it expires."""
        if self.is_leader and self.lock.release():
            log.info("%s released the Lease", self.settings.identity)

    def _stopped(self) -> None:
        if not self._acquired.is_set():
            return
        self._lost.set()
        log.error("%s lost the Lease: stopping rounds now", self.settings.identity)
        self._on_lost()
