"""Which enrolled devices are around: where they run, when they last checked in, which are gone.

Devices say where they run in each check-in (`CheckInRequest.host`; phones leave it empty).
When the cluster reports a host gone (`coordinator.cluster.edge_pods`), its devices leave the
round in progress at once: the phase they were in stops waiting for them, instead of running
to its deadline. A selection window that waits for every available device (Poisson sampling)
must not wait for devices that are gone, nor for devices silent for longer than `presence_s`
(a deleted pod's devices after a coordinator restart, an uninstalled app): it would run to its
timeout every round. Nothing here is persisted: after a restart, every enrolled device counts
as present for `presence_s`, then only those that checked in; in a cluster the warm-up ends
sooner, once every running edge pod (`expected_hosts`) has devices checking in.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Collection, Mapping

MAX_HOST_NAME = 253  # a DNS subdomain, as Kubernetes object names


class HostDirectory:
    def __init__(self, *, presence_s: float = 60.0, clock=time.monotonic) -> None:
        self.presence_s = presence_s
        self._clock = clock
        self._started = clock()
        self._host_of: dict[str, str] = {}
        self._gone_devices: set[str] = set()
        self._last_seen: dict[str, float] = {}
        self.expected_hosts: Callable[[], Collection[str]] | None = None  # the running edge pods, if known

    def saw(self, device_id: str, host: str) -> None:
        """A check-in from `device_id` on `host` ("" = unmanaged): it is here, wherever it was."""
        if len(host) > MAX_HOST_NAME:
            raise ValueError(f"host name longer than {MAX_HOST_NAME} characters")
        self._last_seen[device_id] = self._clock()
        self._gone_devices.discard(device_id)
        if host:
            self._host_of[device_id] = host
        else:
            self._host_of.pop(device_id, None)

    def gone(self, host: str) -> set[str]:
        """`host` was deleted; returns the devices last seen on it, which stay gone until they check in."""
        devices = {device for device, where in self._host_of.items() if where == host}
        for device in devices:
            del self._host_of[device]
        self._gone_devices |= devices
        return devices

    def is_gone(self, device_id: str) -> bool:
        """Its host was deleted and it has not checked in since: not worth waiting for."""
        return device_id in self._gone_devices

    def available(self, enrolled: Mapping[str, str]) -> dict[str, str]:
        """The enrolled devices worth waiting for: not gone, and seen within `presence_s` (all of
        them during the first `presence_s` after start, when nobody has had a chance to check in)."""
        now = self._clock()
        warming_up = now - self._started < self.presence_s and not self._every_expected_host_seen()
        return {device: label for device, label in enrolled.items() if device not in self._gone_devices
                and (warming_up or now - self._last_seen.get(device, -float("inf")) <= self.presence_s)}

    def _every_expected_host_seen(self) -> bool:
        expected = set(self.expected_hosts()) if self.expected_hosts is not None else set()
        return bool(expected) and expected <= set(self._host_of.values())

    def devices_per_host(self) -> dict[str, int]:
        return dict(collections.Counter(self._host_of.values()))
