"""Bounds on what a hostile peer can make the coordinator do: failed enrollments and log lines.

`FailureLimiter` is a token bucket per peer address plus one for everyone: each failed
enrollment takes a token, and a peer with none left is refused before its token is even
checked, until the bucket refills. Guessing a configured token (at least 16 characters) at
the default rate of 10 per minute per address, 60 per minute in all, is hopeless; before this,
300 wrong guesses took 0.5 s. Honest devices never fail, so they never meet the limit unless
an attacker shares their address.

`LogLimiter` keeps a flood of refused messages from becoming a flood of log lines: one line per
kind per interval, with the number that were not logged.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

GLOBAL_KEY = "*"


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    def __init__(self, *, burst: int = 10, per_minute: float = 10.0, global_burst: int = 100,
                 global_per_minute: float = 60.0, max_tracked: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate = float(burst), per_minute / 60.0
        self.global_burst, self.global_rate = float(global_burst), global_per_minute / 60.0
        self.max_tracked = max_tracked
        self.clock = clock
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def retry_after(self, peer: str) -> float:
        """0 if `peer` may try now; otherwise the seconds until it may."""
        return max(self._wait(peer, self.burst, self.rate), self._wait(GLOBAL_KEY, self.global_burst, self.global_rate))

    def failed(self, peer: str) -> None:
        """Count one failed attempt of `peer` (and of everyone)."""
        self._take(peer, self.burst, self.rate)
        self._take(GLOBAL_KEY, self.global_burst, self.global_rate)

    def _wait(self, key: str, burst: float, rate: float) -> float:
        bucket = self._refilled(key, burst, rate)
        return 0.0 if bucket is None or bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / rate

    def _take(self, key: str, burst: float, rate: float) -> None:
        bucket = self._refilled(key, burst, rate)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, self.clock())
            while len(self._buckets) > self.max_tracked:  # forget the least recently failed peers
                self._buckets.popitem(last=False)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._buckets.move_to_end(key)

    def _refilled(self, key: str, burst: float, rate: float) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        now = self.clock()
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.5:41234" -> "ipv4:10.0.0.5")."""
    if peer.startswith("ipv6:["):
        return peer.split("]", 1)[0] + "]"
    head, _, tail = peer.rpartition(":")
    return head if head and tail.isdigit() else peer


class LogLimiter:
    """`should_log(kind)` is True at most once per `interval_s` per kind; `suppressed(kind)` says
    how many were not logged since the last line of that kind."""

    def __init__(self, *, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self._last: dict[str, float] = {}
        self._skipped: collections.Counter[str] = collections.Counter()

    def should_log(self, kind: str) -> bool:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._skipped[kind] += 1
            return False
        self._last[kind] = now
        return True

    def take_suppressed(self, kind: str) -> int:
        return self._skipped.pop(kind, 0)
