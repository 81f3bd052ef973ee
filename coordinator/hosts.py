"""Which devices run on which managed host (a simulated edge pod), and what to do when one goes.

Devices say where they run in each check-in (`CheckInRequest.host`; phones leave it empty).
When the cluster reports a host gone (`coordinator.cluster.edge_pods`), its devices leave the
round in progress at once: the phase they were in stops waiting for them, instead of running
to its deadline. Nothing here is persisted: after a restart the next check-ins rebuild it.
"""

from __future__ import annotations

import collections

MAX_HOST_NAME = 253  # a DNS subdomain, as Kubernetes object names


class HostDirectory:
    def __init__(self) -> None:
        self._host_of: dict[str, str] = {}
        self._gone_devices: set[str] = set()

    def saw(self, device_id: str, host: str) -> None:
        """A check-in from `device_id` on `host` ("" = unmanaged): it is here, wherever it was."""
        if len(host) > MAX_HOST_NAME:
            raise ValueError(f"host name longer than {MAX_HOST_NAME} characters")
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

    def devices_per_host(self) -> dict[str, int]:
        return dict(collections.Counter(self._host_of.values()))
