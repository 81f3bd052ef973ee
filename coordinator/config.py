"""The coordinator's configuration: one frozen object, parsed and checked only at the entry points.

`coordinator.toml` (`fedrec serve --config`):

    state_dir = "coordinator-state"      # durable state (SQLite, checkpoints, packages, TLS)
    catalog = "catalog.json"             # the item catalog; absent: the synthetic data set's
    [server]
    host = "127.0.0.1"                   # where gRPC listens (an IP address or a host name)
    port = 7443                          # 0: any free port (written to state_dir/address)
    metrics_host = "127.0.0.1"           # where /metrics, /healthz, /readyz listen (default: host)
    metrics_port = 9090                  # -1: none
    enroll_token = "..."                 # absent: made on first start, kept in state_dir/enroll-token
    enrollment_margin = 0.1              # identities the token admits beyond the population
    [training]                           # the fields of `fedrec simulate` (SimulationConfig)
    dp = "adaptive"
    target_epsilon = 8.0
    [rounds]                             # DeploymentConfig below
    population = 400                     # devices expected to enroll (required with a catalog)

Every value is checked when the file is read (type, range, address syntax, list-ness); a bad
one is refused with one line naming its section and key, before anything is created or
imported. The [training] table goes through the same path as `fedrec simulate`'s flags
(defaults, then the preset of its privacy mode for the keys not given, then the privacy
planner for the population, then validation), so a deployment trains exactly what the
simulation trains for the same settings. Library code takes these objects; only `load_config`
reads files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.round_run import RoundTiming
from protocol.addresses import is_host, join_host_port
from protocol.files import FileRefused, read_bounded
from tff_pipeline.config import ConfigError, SimulationConfig, check_integer, check_number, training_config

if TYPE_CHECKING:
    from tff_pipeline.privacy.planner import BudgetPlan

SELECTIONS = ("auto", "uniform", "seeded", "poisson")
# What a deployment trains when the user says nothing about privacy (`fedrec up`, `fedrec serve`
# without --config): user-level DP with a stated budget, ε = 8 at δ = 1e-4, the planner's cohort
# (a third of the population) and 20 rounds. Under DP, fewer rounds ranked better on the
# 400-user synthetic set (loo HR@10 0.481 at 20 rounds, 0.458 at 30, 0.411 at 50, 0.372 at the
# planner's 300), and real rounds cost seconds each. A coordinator.toml says what it wants and
# gets exactly that (no [training] dp: no DP, as in `fedrec simulate`).
DEPLOYMENT_DP = {"dp": "adaptive", "target_epsilon": 8.0}
DEPLOYMENT_ROUNDS = 20
# The built-in synthetic data set's users: the population when neither a catalog nor a
# population is configured (the synthetic catalog is the default).
SYNTHETIC_POPULATION = 400
DEFAULT_ENROLLMENT_MARGIN = 0.1
MAX_CONFIG_BYTES = 1 << 20
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256
MAX_POPULATION = 10**8
_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no spaces: typed in shells, kept in a file


def _host(config: Any, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, str) or not is_host(value):
        raise ConfigError(name, f"must be an IP address or a host name, got {str(value)[:80]!r}")


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
    # The number of devices expected to enroll: DP plans its noise and sampling rate for it and
    # enrollment admits at most this many identities plus the margin (`fedrec up` sets it to its
    # device count). Required when a catalog is configured; the synthetic catalog's is 400.
    population: int | None = None

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError("selection", f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        check_number(self, "over_selection", low=0, high=10)
        check_number(self, "selection_timeout_s", low=0, high=86400, low_open=True)
        check_number(self, "checkin_hold_s", low=0, high=3600, low_open=True)
        check_number(self, "phase_timeout_s", low=0, high=86400, low_open=True)
        check_number(self, "report_window_s", low=0, high=86400, low_open=True)
        check_number(self, "straggler_grace_s", low=0, high=3600)
        check_integer(self, "max_weight", 1, 2**20)
        check_number(self, "plain_clip", low=0, high=1e6, low_open=True)
        check_integer(self, "fraction_bits", 8, 32)
        check_integer(self, "export_every", 1, 10**6)
        check_integer(self, "max_consecutive_abandoned", 1, 10**6)
        if self.population is not None:
            check_integer(self, "population", 2, MAX_POPULATION)
        if self.min_reporters is not None:
            check_integer(self, "min_reporters", 2, MAX_POPULATION)
            if self.population is not None and self.min_reporters > self.population:
                raise ConfigError("min_reporters", f"{self.min_reporters} is more than the population of "
                                                   f"{self.population} devices: no round could complete")

    @property
    def timing(self) -> RoundTiming:
        return RoundTiming(self.phase_timeout_s, self.report_window_s, self.straggler_grace_s)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    metrics_host: str | None = None  # None: the same as host
    metrics_port: int = 0  # 0: any free port; -1: no metrics endpoint
    enroll_token: str | None = None
    hostnames: tuple[str, ...] = ()  # extra names for the server certificate (a Service's DNS name)
    enrollment_margin: float = DEFAULT_ENROLLMENT_MARGIN  # identities admitted beyond the population
    # Bring-your-own TLS: a folder with tls.crt, tls.key and ca.crt (a mounted kubernetes.io/tls Secret)
    # served instead of the coordinator's own server certificate (`coordinator.tls.with_external_server`).
    tls_dir: str | None = None

    def __post_init__(self) -> None:
        _host(self, "host")
        if self.metrics_host is not None:
            _host(self, "metrics_host")
        check_integer(self, "port", 0, 65535)
        check_integer(self, "metrics_port", -1, 65535)
        if self.enroll_token is not None:
            token = self.enroll_token
            if not isinstance(token, str):
                raise ConfigError("enroll_token", f"must be text, got {type(token).__name__} {str(token)[:20]}")
            if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
                raise ConfigError("enroll_token", f"must be {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} printable ASCII "
                                                  f"characters without spaces (got {len(token)} characters)")
        if not isinstance(self.hostnames, tuple):
            raise ConfigError("hostnames", f"must be a list of host names, got {self.hostnames!r}"[:120])
        for name in self.hostnames:
            if not isinstance(name, str) or not is_host(name):
                raise ConfigError("hostnames", f"{str(name)[:80]!r} is not a host name or IP address")
        check_number(self, "enrollment_margin", low=0, high=10)
        if self.tls_dir is not None and (not isinstance(self.tls_dir, str) or not self.tls_dir.strip()
                                         or "\x00" in self.tls_dir):
            raise ConfigError("tls_dir", f"must be a folder's path, got {str(self.tls_dir)[:80]!r}")

    @property
    def listen_address(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host if self.metrics_host is not None else self.host


@dataclasses.dataclass(frozen=True)
class CoordinatorConfig:
    state_dir: Path
    training: SimulationConfig
    deployment: DeploymentConfig = DeploymentConfig()
    server: ServerConfig = ServerConfig()
    catalog: Path | None = None  # None: the synthetic data set's catalog
    plan: BudgetPlan | None = None  # the privacy planner's choices, when it made any (shown to the user)
    notes: tuple[str, ...] = ()  # what was chosen for the user (shown to them)
    given_rounds: int | None = None  # the rounds and cohort the user gave (None: the planner may choose)
    given_cohort: int | None = None
    planned: bool = False  # `planned` has run (the privacy planner's choices are in `training`)

    @property
    def population(self) -> int:
        if self.deployment.population is None:
            raise ConfigError("population", "is not set")
        return self.deployment.population

    @property
    def max_devices(self) -> int:
        """The most identities enrollment admits: the population plus the margin (Sybil bound)."""
        return math.floor(self.population * (1 + self.server.enrollment_margin))


def load_config(path: Path | str) -> CoordinatorConfig:
    """Read and check `coordinator.toml`; unknown keys are refused (a typo must not silently use a
    default) and every error names the file, the section and the key."""
    path = Path(path)
    try:
        text = read_bounded(path, max_bytes=MAX_CONFIG_BYTES, what="configuration file").decode("utf-8")
        data = tomllib.loads(text)
    except (FileRefused, UnicodeDecodeError) as error:
        raise ConfigError(str(path), f"cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"not valid TOML ({error})") from None
    try:
        return config_from_dict(data, base=path.parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error.field}", error.message) from None


def config_from_dict(data: dict[str, Any], *, base: Path) -> CoordinatorConfig:
    """The one path from a parsed `coordinator.toml` to a checked, planned configuration."""
    _refuse_unknown(data, {"state_dir", "catalog", "server", "training", "rounds"}, "")
    server_values = dict(_table(data, "server"))
    rounds_values = dict(_table(data, "rounds"))
    training_values = dict(_table(data, "training"))
    if "users_per_client" in training_values:
        raise ConfigError("[training] users_per_client", "is how the simulation batches its users; a deployment has "
                                                         "one client per device")
    _refuse_unknown(server_values, _field_names(ServerConfig), "server")
    _refuse_unknown(rounds_values, _field_names(DeploymentConfig), "rounds")
    state_dir = base / _path_value(data, "state_dir", "coordinator-state")
    catalog = None if data.get("catalog") is None else base / _path_value(data, "catalog", "")
    if "hostnames" in server_values:
        names = server_values["hostnames"]
        if not isinstance(names, list):
            raise ConfigError("[server] hostnames", f"must be a list of host names, got {str(names)[:80]!r}")
        server_values["hostnames"] = tuple(names)
    server = _section("server", ServerConfig, server_values)
    deployment = _section("rounds", DeploymentConfig, rounds_values)
    try:
        training = training_config(training_values)
    except ConfigError as error:
        raise ConfigError(f"[training] {error.field}", error.message) from None
    return resolve(CoordinatorConfig(state_dir=state_dir, training=training, deployment=deployment, server=server,
                                     catalog=catalog),
                   given_rounds=training_values.get("rounds"), given_cohort=training_values.get("clients_per_round"))


def deployment_training(given: dict[str, Any]) -> dict[str, Any]:
    """`given` training values completed with the deployment defaults: DP with the stated budget
    unless a privacy mode is given, and `DEPLOYMENT_ROUNDS` unless rounds are given."""
    values = dict(given)
    if "dp" not in values:
        values["dp"] = DEPLOYMENT_DP["dp"]
        if "noise_multiplier" not in values:
            values.setdefault("target_epsilon", DEPLOYMENT_DP["target_epsilon"])
    values.setdefault("rounds", DEPLOYMENT_ROUNDS)
    return values


# `fedrec serve` without --config: the synthetic catalog, its 400 users, the deployment defaults.
DEFAULT_CONFIG: dict[str, Any] = {"training": deployment_training({})}


def resolve(config: CoordinatorConfig, *, given_rounds: int | None, given_cohort: int | None) -> CoordinatorConfig:
    """Fill the population default and check the cohort against it (cheap; `planned` then runs
    the privacy planner). `given_*`: the values the user gave, which the planner keeps."""
    deployment = config.deployment
    if deployment.population is None:
        if config.catalog is not None:
            raise ConfigError("[rounds] population", "required: the number of devices expected to enroll (DP plans "
                                                     "its sampling and noise for it, and enrollment admits at most "
                                                     "this many devices plus the margin)")
        try:
            deployment = dataclasses.replace(deployment, population=SYNTHETIC_POPULATION)
        except ConfigError as error:  # min_reporters beyond the synthetic population
            raise ConfigError(f"[rounds] {error.field}", error.message) from None
    assert deployment.population is not None  # set above, or refused
    population = int(deployment.population)
    training = config.training
    if given_cohort is not None and training.clients_per_round > population:
        raise ConfigError("[training] clients_per_round",
                          f"{training.clients_per_round} is more than the population of {population} devices "
                          "([rounds] population): a cohort larger than the fleet could never be sampled")
    if training.private and training.target_epsilon is None and training.noise_multiplier is None:
        raise ConfigError("[training] dp", "DP needs target_epsilon or noise_multiplier (or both)")
    config = dataclasses.replace(config, deployment=deployment, given_rounds=given_rounds, given_cohort=given_cohort)
    return config if training.private else _fit_cohort(config)


DEFAULT_GOAL_FRACTION = 0.5  # a Poisson round without min_reporters needs half its expected cohort


def poisson_goal(deployment: DeploymentConfig, expected_clients: float) -> int:
    """The reports a Poisson round needs: `min_reporters`, else half the expected cohort. Under
    distributed DP it is also m, the reporters each device's noise share is sized for."""
    return deployment.min_reporters or max(2, math.floor(DEFAULT_GOAL_FRACTION * expected_clients))


def distributed_shape(config: CoordinatorConfig) -> Any:
    """Distributed DP's `planner.DistributedShape` for this deployment (None for other modes): the
    catalog's model size, and m = the round's goal (`poisson_goal`), known once the cohort is."""
    if config.training.dp != "distributed":
        return None
    from coordinator.catalog import Catalog, synthetic_catalog
    from tff_pipeline.privacy import planner
    from tff_pipeline.privacy.distributed import model_values

    try:
        catalog = Catalog.read(config.catalog) if config.catalog is not None else synthetic_catalog(config.training.seed)
    except (OSError, ValueError) as error:
        raise ConfigError("catalog", f"cannot read it to size distributed DP ({error})") from None
    return planner.distributed_shape(config.training, model_values(catalog.num_items, config.training.dim),
                                     noise_reporters=functools.partial(poisson_goal, config.deployment))


def planned(config: CoordinatorConfig) -> CoordinatorConfig:
    """`config` after the privacy planner, as `fedrec simulate` plans for its users, done for the
    devices expected to enroll: the cohort and rounds not given, and the noise for the budget,
    recorded in `training` (`planned_noise_multiplier`: `training.sampling_setting` runs it, and a
    coordinator.toml that `fedrec up` writes carries it, so it is calibrated once). Seconds of
    accounting, so the CLI runs it after the quick checks and the state folder's lock. Idempotent."""
    if config.planned:
        return config
    training, plan = config.training, None
    if training.private:
        from tff_pipeline.privacy import planner

        try:
            shape = distributed_shape(config)
            training, plan = planner.plan_run(training, config.population, rounds=config.given_rounds,
                                              clients_per_round=config.given_cohort, distributed=shape)
            # the (z, q, T) it will run: the recorded z, checked
            planner.plan_privacy(training, config.population, distributed=shape)
        except ValueError as error:
            raise ConfigError("[training] dp", str(error)) from None
    config = dataclasses.replace(config, training=training, plan=plan, planned=True)
    return _fit_cohort(config) if plan is None else config


def _fit_cohort(config: CoordinatorConfig) -> CoordinatorConfig:
    """A default cohort the fleet cannot hold (50 over 20 devices) is sized to the fleet, and said."""
    training, population = config.training, config.population
    fit = _largest_cohort(config.deployment, training, population)
    if config.given_cohort is not None or training.clients_per_round <= fit:
        return config
    note = (f"cohort sized to the fleet: {fit} of {population} devices per round (the default "
            f"{training.clients_per_round} would not fit; set clients_per_round to choose)")
    return dataclasses.replace(config, training=dataclasses.replace(training, clients_per_round=fit),
                               notes=(*config.notes, note))


def _largest_cohort(deployment: DeploymentConfig, training: SimulationConfig, population: int) -> int:
    """The largest default cohort a fleet of `population` serves well: uniform selection keeps room
    for its over-selection (stragglers are not waited for); Poisson and seeded take the fleet."""
    selection = deployment.selection
    if selection == "auto":
        selection = "poisson" if training.private else "uniform"
    if selection == "uniform":
        return max(2, math.floor(population / (1 + deployment.over_selection)))
    return population


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"[{name}] {error.field}", error.message) from None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}]", f"must be a table, got {str(value)[:40]!r}")
    return value


def _path_value(data: dict[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(key, f"must be a non-empty path, got {str(value)[:80]!r}")
    return value


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _refuse_unknown(section: dict[str, Any], allowed: set[str], name: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        key = unknown[0] if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", unknown[0]) else repr(unknown[0])[:66]
        raise ConfigError(f"[{name}] {key}" if name else key, f"unknown key (known: {', '.join(sorted(allowed))})")
