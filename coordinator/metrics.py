"""The coordinator's Prometheus metrics (`prometheus-client`), on a registry of its own.

A registry per coordinator (not the library's global one) so that tests can run several
coordinators in one process and read each one's figures. The same port answers Kubernetes'
probes: `/healthz` (the process answers) and `/readyz` (it leads and serves rounds); every other
path is 404 and every method but GET/HEAD 405.

What it exposes, to whoever reaches `[server] metrics_host:metrics_port`: fleet-wide counters
(rounds, check-ins, selections, reports, dropouts, enrollments, refusals by reason, bytes per
method), the round duration histogram, ε spent and the model version. Nothing names a device,
a user, an item or a value of any update. It has no authentication: bind it to loopback or a
cluster-internal address (the Kubernetes NetworkPolicy admits only labelled scrapers).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

REFUSAL_REASONS = ("unknown_device", "identity_mismatch", "replay", "stale_round", "not_in_round", "wrong_phase",
                   "duplicate", "invalid", "bad_token", "stale_model", "round_abandoned", "malformed",
                   "rate_limited", "key_reused", "enrollment_full")


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def _plain(start_response: Any, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class CoordinatorMetrics:
    def __init__(self) -> None:
        self._http: ThreadingWSGIServer | None = None
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_started = Counter("fedrec_rounds_started", "Rounds started (cohort selected)", registry=r)
        self.rounds_completed = Counter("fedrec_rounds_completed", "Rounds whose result was applied", registry=r)
        self.rounds_abandoned = Counter("fedrec_rounds_abandoned", "Rounds abandoned (model unchanged)", registry=r)
        self.checkins = Counter("fedrec_devices_checked_in", "Device check-ins", registry=r)
        self.selected = Counter("fedrec_devices_selected", "Devices selected into a round", registry=r)
        self.reported = Counter("fedrec_devices_reported", "Devices whose masked update was used", registry=r)
        self.dropped = Counter("fedrec_devices_dropped", "Selected devices that did not report", registry=r)
        self.enrolled = Counter("fedrec_devices_enrolled", "Devices enrolled", registry=r)
        self.refused = Counter("fedrec_messages_refused", "Refused messages", ["reason"], registry=r)
        self.bytes_in = Counter("fedrec_bytes_received", "Request bytes received", ["method"], registry=r)
        self.bytes_out = Counter("fedrec_bytes_sent", "Response bytes sent", ["method"], registry=r)
        self.round_seconds = Histogram("fedrec_round_duration_seconds", "Round duration, selection to result",
                                       buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=r)
        self.epsilon = Gauge("fedrec_epsilon_spent", "Privacy spent (RDP epsilon at the run's delta)", registry=r)
        self.params_version = Gauge("fedrec_params_version", "Completed rounds (version of the global model)",
                                    registry=r)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason=reason)
        self.ready = False  # /readyz: set once the coordinator serves rounds

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics, /healthz and /readyz on `host:port` (0: any free port); returns the port."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                return _plain(start_response, "405 Method Not Allowed", b"only GET\n")
            if path in ("/healthz", "/readyz"):
                ok = path == "/healthz" or self.ready
                return _plain(start_response, "200 OK" if ok else "503 Service Unavailable",
                              b"ok\n" if ok else b"not leading or not serving yet\n")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            return _plain(start_response, "404 Not Found", b"not found: this server answers /metrics, /healthz and "
                                                            b"/readyz only\n")

        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        server = make_server(host, port, app, server_class, handler_class=_SilentHandler)
        threading.Thread(target=server.serve_forever, name="fedrec-metrics", daemon=True).start()
        self._http = server
        return self.port or 0

    @property
    def port(self) -> int | None:
        """Where /metrics is served, once `serve` ran."""
        server = self._http
        return None if server is None else int(server.server_port)

    def close(self) -> None:
        server = self._http
        if server is not None:
            server.shutdown()
            server.server_close()
            self._http = None

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (tests and `fedrec up`'s report)."""
        found = self.registry.get_sample_value(name, labels or None)
        return 0.0 if found is None else float(found)
