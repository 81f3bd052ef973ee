"""Heterogeneity of simulated devices: slow compute, latency, thin uplinks, time offline, dropouts.

Real fleets are not uniform, and a coordinator that only ever met identical, always-on devices
has not been tested. A profile turns one simulated device into a straggler or a dropout by
*waiting* (it never changes what is computed): extra compute time, per-call latency, upload
time from its bandwidth, availability windows during which it does not check in, and a
probability of vanishing in the middle of a round (at a random phase).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

DROP_POINTS = ("after_task", "after_advertise", "after_share", "after_masked_input")


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    compute_slowdown: float = 1.0  # the local work takes this many times as long
    latency_ms: float = 0.0  # added before every call
    upload_bytes_per_s: float = math.inf  # the masked vector's upload time
    period_s: float = 0.0  # availability: online for `online_fraction` of every period (0: always)
    online_fraction: float = 1.0
    phase_s: float = 0.0
    dropout_probability: float = 0.0  # per round: vanish at one of DROP_POINTS
    drop_at: str | None = None  # always there (when dropping), instead of a random point

    def __post_init__(self) -> None:
        if not self.compute_slowdown >= 1.0 or self.latency_ms < 0 or not self.upload_bytes_per_s > 0:
            raise ValueError(f"invalid device profile {self}")
        if not 0 < self.online_fraction <= 1 or self.period_s < 0 or not 0 <= self.dropout_probability <= 1:
            raise ValueError(f"invalid device profile {self}")
        if self.drop_at is not None and self.drop_at not in DROP_POINTS:
            raise ValueError(f"drop_at must be one of {DROP_POINTS}, got {self.drop_at!r}")

    def online(self, now_s: float) -> bool:
        if self.period_s <= 0 or self.online_fraction >= 1:
            return True
        return ((now_s + self.phase_s) % self.period_s) < self.online_fraction * self.period_s

    def seconds_until_online(self, now_s: float) -> float:
        if self.online(now_s):
            return 0.0
        position = (now_s + self.phase_s) % self.period_s
        return self.period_s - position

    def drop_point(self, rng: np.random.Generator) -> str | None:
        """Where this round's dropout happens, or None."""
        if self.dropout_probability > 0 and rng.random() < self.dropout_probability:
            return self.drop_at or DROP_POINTS[int(rng.integers(len(DROP_POINTS)))]
        return None


PRESETS: dict[str, DeviceProfile] = {
    "ideal": DeviceProfile(),
    # Phones on Wi-Fi and mobile networks: some slow, some on thin uplinks, a few that vanish.
    "mixed": DeviceProfile(compute_slowdown=1.0, latency_ms=20.0, upload_bytes_per_s=2e6, dropout_probability=0.05),
    # Devices that always vanish after sending their masked input (secure aggregation must recover).
    "drop-after-masking": DeviceProfile(dropout_probability=1.0, drop_at="after_masked_input"),
    # Stragglers: ten times slower local work, 200 ms per call, a thin uplink.
    "slow": DeviceProfile(compute_slowdown=10.0, latency_ms=200.0, upload_bytes_per_s=2e5),
}


def fleet_profiles(name: str, count: int, *, seed: int) -> list[DeviceProfile]:
    """`count` profiles: all the same preset, or `"heterogeneous"`: drawn per device (a quarter slow,
    latencies 5-200 ms, uplinks 0.2-20 MB/s, a tenth offline half the time, dropout 0-10%)."""
    if name in PRESETS:
        return [PRESETS[name]] * count
    if name != "heterogeneous":
        raise ValueError(f"unknown device profile {name!r} (known: {', '.join([*PRESETS, 'heterogeneous'])})")
    rng = np.random.default_rng([seed, 7])
    profiles = []
    for _ in range(count):
        intermittent = rng.random() < 0.1
        profiles.append(DeviceProfile(
            compute_slowdown=float(rng.choice([1.0, 1.0, 1.0, 4.0])),
            latency_ms=float(np.exp(rng.uniform(np.log(5), np.log(200)))),
            upload_bytes_per_s=float(np.exp(rng.uniform(np.log(2e5), np.log(2e7)))),
            period_s=60.0 if intermittent else 0.0, online_fraction=0.5 if intermittent else 1.0,
            phase_s=float(rng.uniform(0, 60)),
            dropout_probability=float(rng.uniform(0, 0.1)),
        ))
    return profiles
