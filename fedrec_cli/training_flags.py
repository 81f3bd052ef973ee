"""The flags of a SimulationConfig (what is trained, and how): one definition that `fedrec
simulate` and `fedrec up` both use, and the way back from parsed flags to a config."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tff_pipeline.config import SimulationConfig, training_config


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a SimulationConfig, shared by `simulate` and `up`."""
    d = SimulationConfig()
    p.add_argument("--dataset", choices=["synthetic", "ml-100k", "movielens-csv"], help=f"default {d.dataset}")
    p.add_argument("--data-dir", help="folder with u.data (ml-100k) or ratings.csv (movielens-csv)")
    p.add_argument("--synthetic-users", type=int,
                   help="users of the synthetic data set (default 400): the same generator at any scale")
    p.add_argument("--split", help="ml-100k: u1..u5, ua, ub, random, loo; others: random, loo")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--rounds", type=int,
                   help=f"default {d.rounds}; with --target-epsilon alone, planned for the budget")
    p.add_argument("--clients-per-round", type=int,
                   help=f"cohort size (expected size under DP's Poisson sampling); default {d.clients_per_round}; "
                        "with --target-epsilon alone, planned for the budget (a third of the users, at most 1000)")
    p.add_argument("--dim", type=int, help="embedding dimension (default 16; 8 with --dp); 0 = biases only")
    p.add_argument("--user-l2", type=float, help=f"default {d.user_l2}")
    p.add_argument("--user-embedding-l2", type=float,
                   help="ridge penalty of the user's rating embedding alone (default: --user-l2; 1e4 with --dp: "
                        "the rating head is biases only)")
    p.add_argument("--item-l2", type=float, help=f"default {d.item_l2}; 0 with --dp")
    p.add_argument("--item-bias-l2", type=float, help=f"default {d.item_bias_l2}")
    p.add_argument("--local-steps", type=int, help=f"default {d.local_steps}")
    p.add_argument("--local-lr", dest="local_learning_rate", type=float, help=f"default {d.local_learning_rate}")
    p.add_argument("--implicit-lr", dest="implicit_learning_rate", type=float,
                   help=f"step of the ranking head on the item table; 0 turns it off (default "
                        f"{d.implicit_learning_rate})")
    p.add_argument("--implicit-weight", dest="implicit_unobserved_weight", type=float,
                   help=f"weight of the items a user did not rate in the ranking loss (default "
                        f"{d.implicit_unobserved_weight})")
    p.add_argument("--implicit-l2", type=float, help=f"ridge penalty of the user's ranking vector (default {d.implicit_l2})")
    p.add_argument("--dp-ranking-scale", type=float,
                   help="with --dp: scale of the ranking head's step inside the clipped update, undone after "
                        "the noise (its share of the clip norm and of the budget; default 0.5 with --dp)")
    p.add_argument("--server-optimizer", choices=["sgdm", "adam"],
                   help="default adam (FedAdam); sgdm (plain SGD, momentum 0) with --dp")
    p.add_argument("--server-lr", dest="server_learning_rate", type=float, help="default 0.01 (adam); 0.6 with --dp")
    p.add_argument("--server-momentum", type=float, help="default 0.9; 0 with --dp")
    p.add_argument("--server-adam-epsilon", type=float, help="default 1e-2 (damps rare items)")
    p.add_argument("--dp", choices=["none", "fixed", "adaptive", "distributed"],
                   help="model aggregator: plain weighted mean (default), central DP with fixed / adaptive "
                        "clipping, or distributed DP (each device adds its share of Skellam noise; fixed clip)")
    p.add_argument("--dp-bits", type=int,
                   help=f"with --dp distributed: the bit width b of the secure sum (default {d.dp_bits}, at most 22)")
    p.add_argument("--noise-multiplier", type=float)
    p.add_argument("--target-epsilon", type=float,
                   help="alone: plan the cohort and rounds left unset and calibrate the noise for them; "
                        "with --noise-multiplier: stop before exceeding it")
    p.add_argument("--delta", type=float, help=f"default {d.delta}")
    p.add_argument("--clip", type=float, help=f"L2 clip (initial clip when adaptive); default {d.clip}")
    p.add_argument("--target-quantile", dest="target_unclipped_quantile", type=float,
                   help=f"default {d.target_unclipped_quantile}")
    p.add_argument("--eval-every", type=int, help=f"default {d.eval_every}")
    p.add_argument("--centralized-epochs", type=int, help=f"default {d.centralized_epochs}")
    p.add_argument("--no-baselines", dest="baselines", action="store_const", const=False)


def given_training_values(args: argparse.Namespace) -> dict[str, Any]:
    """The SimulationConfig fields the user gave as flags (None: not given)."""
    fields = {f.name for f in dataclasses.fields(SimulationConfig)}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Flags -> config; flags left unset take the preset of the run's privacy mode."""
    return training_config(given_training_values(args))


def flag_of(parser: argparse.ArgumentParser, dest: str) -> str:
    """The flag a user typed for a config field (`local_learning_rate` -> `--local-lr`)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return dest
