"""`--workers HOST:PORT,...`: parsed and checked before TensorFlow is imported, so a typo costs
no start-up time and is reported as one `fedrec: error: --workers: ...` line."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from tff_pipeline.config import ConfigError

# RFC 1123 host names (k8s Service and pod DNS names are of this form).
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


@dataclasses.dataclass(frozen=True)
class WorkerAddress:
    """One TFF worker service; `str()` is the gRPC target (IPv6 literals in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(entry: str) -> WorkerAddress:
    """`host:port`, `[v6]:port`; raises ConfigError('workers', ...) naming the entry."""
    text = entry.strip()
    if not text:
        raise ConfigError("workers", "has an empty entry; give HOST:PORT[,HOST:PORT...]")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError("workers", f"{entry!r}: an IPv6 address needs the form [ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("workers", f"{entry!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError("workers", f"{entry!r} is not HOST:PORT")
        if ":" in host:
            raise ConfigError("workers", f"{entry!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
        if not _HOSTNAME.match(host):
            raise ConfigError("workers", f"{entry!r}: {host!r} is not a host name or IP address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError("workers", f"{entry!r}: the port must be a number from 1 to 65535, got {port_text!r}")
    return WorkerAddress(host, int(port_text))


def parse_workers(text: str) -> tuple[WorkerAddress, ...]:
    """A comma-separated list of distinct worker addresses (at least one)."""
    addresses = tuple(parse_address(entry) for entry in text.split(","))
    seen: set[WorkerAddress] = set()
    for address in addresses:
        if address in seen:
            raise ConfigError("workers", f"lists {address} twice; each worker service is given once")
        seen.add(address)
    return addresses
