"""The coordinator's configuration: one frozen object, parsed only at the entry points.

`coordinator.toml` (every key optional; `fedrec serve --config`):

    state_dir = "coordinator-state"      # durable state (SQLite, checkpoints, packages, TLS)
    catalog = "catalog.json"             # the item catalog; absent: the synthetic data set's
    [server]
    host = "127.0.0.1"                   # where gRPC listens
    port = 7443                          # 0: any free port (written to state_dir/address)
    metrics_port = 9090                  # Prometheus /metrics; -1: none
    enroll_token = "..."                 # absent: made on first start, kept in state_dir/enroll-token
    [training]                           # the fields of `fedrec simulate` (SimulationConfig)
    rounds = 50
    clients_per_round = 20
    [rounds]                             # DeploymentConfig below
    over_selection = 0.3

Library code takes these objects; only `load_config` reads files.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

from coordinator.round_run import RoundTiming
from tff_pipeline.config import ConfigError, SimulationConfig

SELECTIONS = ("auto", "uniform", "seeded", "poisson")


@dataclasses.dataclass(frozen=True)
class DeploymentConfig:
    """How rounds run over real devices (what `fedrec simulate` does not need)."""

    selection: str = "auto"  # auto: poisson under DP, uniform otherwise
    over_selection: float = 0.3  # uniform: select this fraction more than the goal
    min_reporters: int | None = None  # the goal; default: the cohort (uniform, seeded), half the expected one (poisson)
    selection_timeout_s: float = 30.0
    checkin_hold_s: float = 20.0
    phase_timeout_s: float = 30.0
    report_window_s: float = 60.0
    straggler_grace_s: float = 2.0
    max_weight: int = 1024  # cap of a device's example-count weight without DP
    plain_clip: float = 100.0  # L2 bound of an update without DP (secure aggregation needs a bound)
    fraction_bits: int = 22  # fixed-point precision of uploads
    export_every: int = 10  # publish a new model package every N completed rounds
    max_consecutive_abandoned: int = 20  # then stop: something is wrong with the fleet
    # The number of devices expected to enroll: DP plans its noise and sampling rate for it
    # (`fedrec up` sets it to its device count). Default: the devices enrolled at the first round.
    population: int | None = None

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError("selection", f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        checks = {
            "over_selection": 0 <= self.over_selection <= 10,
            "selection_timeout_s": 0 < self.selection_timeout_s <= 86400,
            "checkin_hold_s": 0 < self.checkin_hold_s <= 3600,
            "phase_timeout_s": 0 < self.phase_timeout_s <= 86400,
            "report_window_s": 0 < self.report_window_s <= 86400,
            "straggler_grace_s": 0 <= self.straggler_grace_s <= 3600,
            "max_weight": isinstance(self.max_weight, int) and 1 <= self.max_weight <= 2**20,
            "plain_clip": 0 < self.plain_clip <= 1e6 and math.isfinite(self.plain_clip),
            "fraction_bits": isinstance(self.fraction_bits, int) and 8 <= self.fraction_bits <= 32,
            "export_every": isinstance(self.export_every, int) and self.export_every >= 1,
            "max_consecutive_abandoned": isinstance(self.max_consecutive_abandoned, int)
            and self.max_consecutive_abandoned >= 1,
        }
        if self.population is not None:
            checks["population"] = isinstance(self.population, int) and self.population >= 2
        if self.min_reporters is not None:
            checks["min_reporters"] = isinstance(self.min_reporters, int) and self.min_reporters >= 2
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(name, f"out of range: {getattr(self, name)!r}")

    @property
    def timing(self) -> RoundTiming:
        return RoundTiming(self.phase_timeout_s, self.report_window_s, self.straggler_grace_s)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0  # 0: any free port; -1: no metrics endpoint
    enroll_token: str | None = None
    hostnames: tuple[str, ...] = ()  # extra names for the server certificate (a Service's DNS name)


@dataclasses.dataclass(frozen=True)
class CoordinatorConfig:
    state_dir: Path
    training: SimulationConfig
    deployment: DeploymentConfig = DeploymentConfig()
    server: ServerConfig = ServerConfig()
    catalog: Path | None = None  # None: the synthetic data set's catalog


def load_config(path: Path | str) -> CoordinatorConfig:
    """Parse `coordinator.toml`; unknown keys are refused (a typo must not silently use a default)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("config", f"{path}: cannot read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", f"{path}: not valid TOML ({error})") from None
    return config_from_dict(data, base=path.parent)


def config_from_dict(data: dict[str, Any], *, base: Path) -> CoordinatorConfig:
    allowed = {"state_dir", "catalog", "server", "training", "rounds"}
    _refuse_unknown(data, allowed, "")
    server = data.get("server", {})
    _refuse_unknown(server, {f.name for f in dataclasses.fields(ServerConfig)}, "server.")
    rounds = data.get("rounds", {})
    _refuse_unknown(rounds, {f.name for f in dataclasses.fields(DeploymentConfig)}, "rounds.")
    training = SimulationConfig.from_dict({**SimulationConfig().to_dict(), **data.get("training", {})})
    state_dir = base / str(data.get("state_dir", "coordinator-state"))
    catalog = None if data.get("catalog") is None else base / str(data["catalog"])
    if "hostnames" in server:
        server = {**server, "hostnames": tuple(server["hostnames"])}
    try:
        return CoordinatorConfig(state_dir=state_dir, training=training, deployment=DeploymentConfig(**rounds),
                                 server=ServerConfig(**server), catalog=catalog)
    except TypeError as error:
        raise ConfigError("config", str(error)) from None


def _refuse_unknown(section: Any, allowed: set[str], prefix: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(prefix.rstrip(".") or "config", "must be a table")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(prefix + unknown[0], f"unknown key (known: {', '.join(sorted(allowed))})")
