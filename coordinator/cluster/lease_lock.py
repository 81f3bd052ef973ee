"""A `coordination.k8s.io/v1` Lease as the lock of the official client's leader elector.

`kubernetes.leaderelection` ships only a ConfigMap lock; a Lease is the object Kubernetes made
for this (what client-go and kube-controller-manager use). This class has the ConfigMap lock's
interface (`get`, `create`, `update`), plus `release`. Every write is a replace of the object
read just before, so the API server's optimistic concurrency (409 on a stale resourceVersion)
guarantees that two candidates can never both succeed in taking the same term.
"""

from __future__ import annotations

import datetime
import json
import logging

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord

log = logging.getLogger("fedrec.coordinator.cluster")


class LeaseLock:
    def __init__(self, name: str, namespace: str, identity: str, api: client.ApiClient) -> None:
        self.name, self.namespace, self.identity = name, namespace, str(identity)
        self.api = client.CoordinationV1Api(api)
        self._lease: client.V1Lease | None = None

    def get(self, name: str, namespace: str) -> tuple[bool, LeaderElectionRecord | ApiException | None]:
        """(True, record) if the Lease exists; (True, None) if nobody holds it (released);
        (False, error) otherwise (404: the elector creates it). An unreachable API server is an
        error like any other: the elector must count it as a failed renewal (and its leader step
        down after the renew deadline), not die with its thread."""
        try:
            lease = self.api.read_namespaced_lease(name, namespace)
        except ApiException as error:
            return False, error
        except Exception as error:  # noqa: BLE001 - connection failures: see above
            unreachable = ApiException(status=503, reason=f"API server unreachable: {error}")
            unreachable.body = json.dumps({"code": 503})
            return False, unreachable
        self._lease = lease
        spec = lease.spec
        if spec is None or not spec.holder_identity:
            return True, None
        return True, LeaderElectionRecord(spec.holder_identity, str(spec.lease_duration_seconds),
                                          _text(spec.acquire_time), _text(spec.renew_time))

    def create(self, name: str, namespace: str, election_record: LeaderElectionRecord) -> bool:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=_spec(election_record))
        try:
            self._lease = self.api.create_namespaced_lease(namespace, body)
            return True
        except Exception as error:  # noqa: BLE001 - a failed attempt, retried by the elector
            log.info("cannot create Lease %s: %s", name, getattr(error, "reason", error))
            return False

    def update(self, name: str, namespace: str, updated_record: LeaderElectionRecord) -> bool:
        if self._lease is None:
            return False
        self._lease.spec = _spec(updated_record)
        try:
            self._lease = self.api.replace_namespaced_lease(name, namespace, self._lease)
            return True
        except Exception as error:  # noqa: BLE001 - a failed renewal, counted by the elector
            log.info("cannot update Lease %s: %s", name, getattr(error, "reason", error))
            return False

    def release(self) -> bool:
        """Give the Lease up if we hold it, so that a successor need not wait for it to expire."""
        held, record = self.get(self.name, self.namespace)
        if not held or not isinstance(record, LeaderElectionRecord) or record.holder_identity != self.identity:
            return False
        assert self._lease is not None
        self._lease.spec.holder_identity = None
        try:
            self._lease = self.api.replace_namespaced_lease(self.name, self.namespace, self._lease)
            return True
        except Exception:  # noqa: BLE001 - it will expire instead
            return False


def _spec(record: LeaderElectionRecord) -> client.V1LeaseSpec:
    return client.V1LeaseSpec(holder_identity=record.holder_identity,
                              lease_duration_seconds=int(float(record.lease_duration)),
                              acquire_time=_time(record.acquire_time), renew_time=_time(record.renew_time))


def _time(text: str | None) -> datetime.datetime | None:
    """The elector's times are `str(datetime.fromtimestamp(t))`: local and naive."""
    if not text:
        return None
    return datetime.datetime.fromisoformat(text).astimezone(datetime.UTC)


def _text(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return str(moment.astimezone().replace(tzinfo=None))
