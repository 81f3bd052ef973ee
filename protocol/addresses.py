"""Host names and HOST:PORT addresses, checked the same way by the coordinator and the device.

gRPC takes any string as a target and retries a malformed one forever; the coordinator's
configuration would accept a host it can never bind. Both sides refuse such input up front
with these checks (syntax only: nothing here resolves a name).
"""

from __future__ import annotations

import ipaddress
import re

from protocol.errors import ProtocolError

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class AddressError(ProtocolError, ValueError):
    """Not a host or HOST:PORT; the message says what is wrong (without naming the flag or key)."""


def is_host(value: object) -> bool:
    """An IP address or a syntactically valid host name (dot-separated labels of at most 63
    letters, digits, '-' or '_', 253 characters in all; a trailing dot allowed)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def parse_host_port(text: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" or "[IPV6]:PORT"; AddressError otherwise."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise AddressError(f"{text[:80]!r}: expected HOST:PORT")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise AddressError(f"{text[:80]!r}: the port must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise AddressError(f"{text[:80]!r}: {host[:60]} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if ":" in host or not is_host(host):
        raise AddressError(f"{text[:80]!r}: {host[:60]!r} is not a host name or address (write an IPv6 address "
                           "as [ADDRESS]:PORT)")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets (as gRPC and URLs want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
