"""The one frozen configuration object of a simulation run (entry points build it; library
code takes it or its parts as keyword arguments and never reads flags or the environment)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tff_pipeline.errors import PipelineError

if TYPE_CHECKING:  # the config is read before TensorFlow is imported (the CLI checks flags first)
    from tff_pipeline import model
    from tff_pipeline.federated.aggregation import AggregatorConfig
    from tff_pipeline.federated.process import ServerOptimizerConfig

DEFAULT_DELTA = 1e-4
# Limits that refuse absurd requests before any memory is spent on them: the global model is
# num_items x dim floats, held several times over (server optimizer state, every cohort
# member's delta, the TFLite file, which cannot exceed 2 GiB).
MAX_DIM = 1024
MAX_GLOBAL_PARAMETERS = 2**26
MAX_ROUNDS = 1_000_000
MAX_SYNTHETIC_USERS = 10_000_000
MAX_LOCAL_STEPS = 1000
# Users per TFF client of a run without DP (`SimulationConfig.users_per_client`). bench/cost.py on
# ML-100K (2 cores shared with other jobs), one all-users round against a centralized epoch, medians
# of 5: 0.90-0.95x in 1-2 groups (<= 512 or 1000 users), 1.07-1.25x in 8 groups of <= 128, 6-7x with
# one TFF client per user; on the synthetic default (400 users) 1.41x in one group, 1.97x in two,
# 2.17x in four: TFF costs a few ms per client, so groups are large. A group's normal-equation terms
# are [ratings, d+1, d+1] floats: ~50 MB for 512 ML-100K users at d=16.
DEFAULT_USERS_PER_CLIENT = 512
# Privacy settings the accountants can compute with (dp-accounting divides by z^2 and finds no
# noise for budgets far beyond any meaningful guarantee: ZeroDivisionError at z = 1e-300,
# "no bracketing interval" at epsilon 1e4 over one round), and far beyond any useful one.
MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 0.01, 1e4
MIN_TARGET_EPSILON, MAX_TARGET_EPSILON = 0.01, 1e4
# The planner's calibration starts at z = 0.1 and the config's budgets need at most ~4e6 (epsilon
# 0.01 over 10^6 full-cohort rounds at delta 1e-300); a recorded z beyond these bounds was not planned.
MAX_PLANNED_NOISE_MULTIPLIER = 1e8

# What our ML-100K sweeps found best (closing notes of issues 2 and 8); the CLI fills any of these
# flags the user leaves unset from the preset of the run's privacy mode.
NON_PRIVATE_PRESET = {
    "dim": 16, "server_optimizer": "adam", "server_learning_rate": 0.01, "server_momentum": 0.9,
    # A large Adam epsilon damps the steps of rarely-rated items (shrinkage): it traded 0.009
    # RMSE for +25% HR@10 on ML-100K u1, reaching 97% of the centralized model's HR@10.
    "server_adam_epsilon": 1e-2,
}
# Under DP noise, FedAdam and server momentum amplify or integrate the noise on rarely-rated items,
# so the private preset uses plain server SGD. The rating head is biases only (the user's rating
# embedding penalised to ~0; the rating embedding bought nothing under DP: u1 RMSE 0.969 with
# biases only, 0.968 at d=2) and the item table serves the ranking head (d=8: loo HR@10 0.495
# at epsilon 8 against 0.455 at d=2 with a shared rating embedding). Both heads share one clip
# norm, and so one privacy budget: the ranking step's share is set by dp_ranking_scale. At
# epsilon 8, scale 1 gave u1 RMSE 0.992 / loo HR@10 0.495, 0.5 gave 0.973 / 0.461, 0.25 gave
# 0.971 / 0.397 (popularity: 0.406); without the ranking head (--implicit-lr 0) 0.970 RMSE
# and rankings by stars (0.20 HR@10 on u1).
PRIVATE_PRESET = {
    "dim": 8, "server_optimizer": "sgdm", "server_learning_rate": 0.6, "server_momentum": 0.0,
    "server_adam_epsilon": 1e-7, "user_embedding_l2": 1e4, "item_l2": 0.0, "dp_ranking_scale": 0.5,
}


def preset(dp: str) -> dict[str, object]:
    return dict(NON_PRIVATE_PRESET if dp == "none" else PRIVATE_PRESET)


def training_config(given: Mapping[str, Any]) -> SimulationConfig:
    """The one path from the values a user gave (flags of `fedrec simulate` / `fedrec up`, or the
    [training] table of coordinator.toml) to a checked config: the defaults, then the preset of
    the run's privacy mode for every key not given, then validation. Unknown keys are refused."""
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(map(str, set(given) - known))
    if unknown:
        key = unknown[0] if unknown[0].isidentifier() and unknown[0].isascii() else repr(unknown[0])[:66]
        raise ConfigError(key, f"unknown key (known: {', '.join(sorted(known))})")
    values = dict(given)
    for key, value in preset(values.get("dp", SimulationConfig.dp)).items():
        values.setdefault(key, value)
    return SimulationConfig(**values)


class ConfigError(PipelineError, ValueError):
    """A configuration value that cannot be used; `field` names it (the CLI maps it to its flag)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    dataset: str = "synthetic"
    data_dir: str | None = None
    # The synthetic data set's number of users (None: the generator's default, 400); the same
    # generator at any scale, for what DP costs a large population.
    synthetic_users: int | None = None
    split: str | None = None
    seed: int = 0
    rounds: int = 300
    clients_per_round: int = 50
    # Users per TFF client: several users' work in one TF computation
    # (`client_work.build_group_client_work`), the same per-user FedAvg round up to float order
    # without TFF's per-client overhead (bench/cost.py). None: DEFAULT_USERS_PER_CLIENT without DP,
    # one under DP; 1: one TFF client per user. Under central DP (fixed, adaptive) a group clips
    # every user's update alone (`aggregation.PerUserRecordsQuery`); distributed DP is one a client.
    # Absent from `to_dict` when None, so earlier runs keep their digest.
    users_per_client: int | None = None
    # Model and local work.
    dim: int = 16
    user_l2: float = 10.0
    # Ridge penalty of the user's rating embedding alone (None: user_l2). A huge value makes the
    # rating head biases only, leaving the item table to the ranking head (the private preset).
    user_embedding_l2: float | None = None
    item_l2: float = 0.1
    item_bias_l2: float = 0.0
    local_steps: int = 5
    local_learning_rate: float = 0.1
    # The ranking head (implicit feedback on the same item table; model.ModelConfig).
    implicit_learning_rate: float = 3.0
    implicit_unobserved_weight: float = 0.1
    implicit_l2: float = 3.0
    # Under DP: the ranking head's step is scaled by this before clipping and back after the
    # noised sum (federated/aggregation.py: PartScaledFactory says why).
    dp_ranking_scale: float = 1.0
    # Server.
    server_optimizer: str = "adam"  # adaptive server optimizer (FedAdam, Reddi et al. 2021)
    server_learning_rate: float = 0.01
    server_momentum: float = 0.9
    server_adam_epsilon: float = 1e-2
    # Differential privacy.
    dp: str = "none"  # none | fixed | adaptive | distributed
    # Distributed DP: the bit width of the secure sum each device's noised, rounded upload lives in.
    dp_bits: int = 20
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    # Set by the privacy planner, never given: the noise multiplier it calibrated for target_epsilon
    # over `rounds` rounds of `clients_per_round` expected clients (`planner.plan_run`), recorded
    # with the cohort and rounds it planned so that the run, a resumed run and the coordinator use
    # it instead of calibrating again. Absent from `to_dict` until planned.
    planned_noise_multiplier: float | None = None
    delta: float = DEFAULT_DELTA
    clip: float = 0.5
    target_unclipped_quantile: float = 0.5
    # Reporting.
    eval_every: int = 10
    centralized_epochs: int = 15
    baselines: bool = True

    def __post_init__(self) -> None:
        from tff_pipeline.data import DATASETS  # numpy only; kept local so config stays light

        _choice(self, "dataset", DATASETS)
        _optional_text(self, "data_dir")
        if self.dataset == "synthetic" and self.data_dir is not None:
            raise ConfigError("data_dir", "is for ml-100k and movielens-csv; the synthetic data set is generated")
        if self.synthetic_users is not None:
            check_integer(self, "synthetic_users", 2, MAX_SYNTHETIC_USERS)
            if self.dataset != "synthetic":
                raise ConfigError("synthetic_users", "applies to the synthetic data set only")
        _optional_text(self, "split")
        check_integer(self, "seed", 0, 2**63 - 1)
        check_integer(self, "rounds", 1, MAX_ROUNDS)
        check_integer(self, "clients_per_round", 1, 10**9)
        if self.users_per_client is not None:
            check_integer(self, "users_per_client", 1, 10**9)
            if self.dp == "distributed" and self.users_per_client != 1:
                raise ConfigError("users_per_client", "does not serve --dp distributed: every device adds its own "
                                                      "noise share to its own update")
        check_integer(self, "dim", 0, MAX_DIM)
        check_number(self, "user_l2", low=0.0, low_open=True)  # > 0: the user's ridge fit must be well posed
        if self.user_embedding_l2 is not None:
            check_number(self, "user_embedding_l2", low=0.0, low_open=True)
        check_number(self, "item_l2", low=0.0)
        check_number(self, "item_bias_l2", low=0.0)
        check_integer(self, "local_steps", 0, MAX_LOCAL_STEPS)
        check_number(self, "local_learning_rate", low=0.0, low_open=True)
        check_number(self, "implicit_learning_rate", low=0.0)
        check_number(self, "implicit_unobserved_weight", low=0.0, low_open=True)
        check_number(self, "implicit_l2", low=0.0, low_open=True)
        check_number(self, "dp_ranking_scale", low=0.0, low_open=True)
        _choice(self, "server_optimizer", ("sgdm", "adam"))
        check_number(self, "server_learning_rate", low=0.0, low_open=True)
        check_number(self, "server_momentum", low=0.0, high=1.0, high_open=True)
        check_number(self, "server_adam_epsilon", low=0.0, low_open=True)
        _choice(self, "dp", ("none", "fixed", "adaptive", "distributed"))
        check_integer(self, "dp_bits", 1, 22)
        if self.dp != "distributed" and self.dp_bits != SimulationConfig.dp_bits:
            raise ConfigError("dp_bits", "applies to --dp distributed only")
        if self.noise_multiplier is not None:
            check_number(self, "noise_multiplier", low=MIN_NOISE_MULTIPLIER, high=MAX_NOISE_MULTIPLIER)
        if self.target_epsilon is not None:
            check_number(self, "target_epsilon", low=MIN_TARGET_EPSILON, high=MAX_TARGET_EPSILON)
        if self.planned_noise_multiplier is not None:
            check_number(self, "planned_noise_multiplier", low=MIN_NOISE_MULTIPLIER, high=MAX_PLANNED_NOISE_MULTIPLIER)
            if self.target_epsilon is None or self.noise_multiplier is not None:
                raise ConfigError("planned_noise_multiplier", "is the privacy planner's noise for a target epsilon "
                                                              "alone (no noise multiplier given)")
        check_number(self, "delta", low=0.0, high=1.0, low_open=True, high_open=True)
        check_number(self, "clip", low=0.0, low_open=True)
        check_number(self, "target_unclipped_quantile", low=0.0, high=1.0, low_open=True, high_open=True)
        check_integer(self, "eval_every", 1, MAX_ROUNDS)
        check_integer(self, "centralized_epochs", 1, 1000)
        if not isinstance(self.baselines, bool):
            raise ConfigError("baselines", f"must be true or false, got {self.baselines!r}")
        if self.dp == "none" and self.dp_ranking_scale != 1.0:
            raise ConfigError("dp_ranking_scale", "applies to DP runs only (add --dp fixed, adaptive or distributed)")
        if self.dp == "none" and (self.noise_multiplier is not None or self.target_epsilon is not None):
            raise ConfigError("dp", "--noise-multiplier/--target-epsilon need --dp fixed, adaptive or distributed")

    def check_model_size(self, num_items: int) -> None:
        """Refuse a model too large to train or export, before any of it is allocated."""
        if num_items * self.dim > MAX_GLOBAL_PARAMETERS:
            raise ConfigError("dim", f"{num_items} items x dim {self.dim} = {num_items * self.dim} parameters, "
                                     f"more than the {MAX_GLOBAL_PARAMETERS} this build supports; lower --dim")

    @property
    def private(self) -> bool:
        return self.dp != "none"

    @property
    def client_group_size(self) -> int | None:
        """Users per TFF client group, or None for one TFF client per user (under DP, or when
        `users_per_client` is 1)."""
        if self.users_per_client is None:
            return None if self.private else DEFAULT_USERS_PER_CLIENT
        return None if self.users_per_client == 1 else self.users_per_client

    def model_config(self, num_items: int) -> model.ModelConfig:
        from tff_pipeline import model

        return model.ModelConfig(
            num_items=num_items,
            dim=self.dim,
            user_l2=self.user_l2 if self.user_embedding_l2 is None else self.user_embedding_l2,
            user_bias_l2=self.user_l2,
            item_l2=self.item_l2,
            item_bias_l2=self.item_bias_l2,
            local_steps=self.local_steps,
            local_learning_rate=self.local_learning_rate,
            implicit_learning_rate=self.implicit_learning_rate,
            implicit_unobserved_weight=self.implicit_unobserved_weight,
            implicit_l2=self.implicit_l2,
        )

    def server_optimizer_config(self) -> ServerOptimizerConfig:
        from tff_pipeline.federated.process import ServerOptimizerConfig

        return ServerOptimizerConfig(
            name=self.server_optimizer,
            learning_rate=self.server_learning_rate,
            momentum=self.server_momentum,
            adam_epsilon=self.server_adam_epsilon,
        )

    def aggregator_config(self, *, noise_multiplier: float, expected_clients: float,
                          noise_reporters: int | None = None) -> AggregatorConfig:
        """`noise_reporters`: m of distributed DP's noise rule (`privacy.distributed`)."""
        from tff_pipeline.federated.aggregation import AggregatorConfig, AggregatorKind

        return AggregatorConfig(
            kind=AggregatorKind(self.dp),
            noise_multiplier=noise_multiplier,
            clip=self.clip,
            expected_clients_per_round=expected_clients,
            target_unclipped_quantile=self.target_unclipped_quantile,
            part_scale=self.dp_ranking_scale,
            bits=self.dp_bits,
            noise_reporters=noise_reporters,
        )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if values["planned_noise_multiplier"] is None:  # so configurations from before it existed keep their digest
            del values["planned_noise_multiplier"]
        if values["dp"] != "distributed":  # likewise: only distributed DP has a bit width
            del values["dp_bits"]
        if values["synthetic_users"] is None:  # likewise
            del values["synthetic_users"]
        if values["users_per_client"] is None:  # likewise
            del values["users_per_client"]
        return values

    @classmethod
    def from_dict(cls, values: Any) -> SimulationConfig:
        if not isinstance(values, dict):
            raise ValueError("a configuration must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**values)


def check_integer(config: Any, name: str, low: int, high: int) -> None:
    """`config.name` is an integer (not a bool) in [low, high], or ConfigError(name)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {str(value)[:40]!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"must be in [{low}, {high}], got {value}")


def check_number(config: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """`config.name` is a finite number (not a bool) within the bounds, or ConfigError(name)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {str(value)[:40]!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise ConfigError(name, f"must be a finite number, got {str(value)[:40]}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else f'{low:g}'}, " \
                   f"{'inf' if high is None else f'{high:g}'}{')' if high_open or high is None else ']'}"
        raise ConfigError(name, f"must be in {interval}, got {value:g}")


def _choice(config: SimulationConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {value!r}")


def _optional_text(config: SimulationConfig, name: str) -> None:
    value = getattr(config, name)
    if value is not None and not isinstance(value, str):
        raise ConfigError(name, f"must be text, got {value!r}")
