"""Check, before the slow start, that the coordinator can listen where it is told to.

Importing TensorFlow and restoring the state take tens of seconds (155 s were seen on a busy
machine) before gRPC binds its port; an address that is in use or not this machine's would
only fail then, after the state folder was created. Binding a probe socket first turns that
into an immediate one-line refusal. The probe does not set SO_REUSEPORT, so a port that a
running coordinator listens on is reported as in use.
"""

from __future__ import annotations

import socket

from tff_pipeline.config import ConfigError


def check_can_listen(host: str, port: int, *, field: str) -> None:
    """Raise ConfigError(`field`) unless a TCP socket can be bound to `host:port` now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise ConfigError(field, f"cannot resolve {host!r}: {getattr(error, 'strerror', None) or error}") from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                probe.listen(1)
            return
        except OSError as error:
            last = error
    reason = last.strerror if last is not None and last.strerror else str(last)
    raise ConfigError(field, f"cannot listen on {host}:{port}: {reason}")
