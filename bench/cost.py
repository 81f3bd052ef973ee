"""Cost of federation: one federated pass over every client against one centralized (ALS) epoch
of the same model on the same data, measured in alternation in one process so that machine noise
hits both alike. Each repetition times, in turn: a centralized epoch (median of 3 after a warm-up
epoch), one all-users round with client groups of `--users-per-client` users (the simulation's
`--users-per-client`: the users' work vectorized inside one TFF client computation), the same
round with one TFF client per user, and the pass as rounds of `--clients-per-round` users
(grouped). Prints one row per repetition and the medians; `--json FILE` writes them.

    uv run python bench/cost.py                          # ML-100K u1, 5 repetitions
    uv run python bench/cost.py --dataset synthetic      # the synthetic default (400 users)
    uv run python bench/cost.py --json cost.json
    uv run python bench/cost.py --dp adaptive            # under central DP (private preset, z = 1)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tff_pipeline import centralized, runtime, simulation
from tff_pipeline.config import DEFAULT_USERS_PER_CLIENT, training_config
from tff_pipeline.data import load_dataset
from tff_pipeline.federated import process

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["ml-100k", "synthetic"], default="ml-100k")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default=None, help="default: u1 (ml-100k), random (synthetic)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--users-per-client", type=int, default=DEFAULT_USERS_PER_CLIENT,
                        help=f"users per TFF client on the grouped path (default {DEFAULT_USERS_PER_CLIENT})")
    parser.add_argument("--dp", choices=["none", "fixed", "adaptive"], default="none",
                        help="the aggregator (DP: the private preset, noise multiplier 1; groups clip user by user)")
    parser.add_argument("--json", type=Path, help="write the measurements and medians here")
    args = parser.parse_args()
    if args.dataset == "ml-100k" and not (args.data_dir / "u.data").exists():
        print(f"MovieLens-100K not found at {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    split = load_dataset(args.dataset, data_dir=args.data_dir if args.dataset == "ml-100k" else None,
                         split=args.split, seed=0)
    # The preset of the privacy mode fills the rest (as `fedrec simulate` does).
    config = training_config(dict(dataset=args.dataset, split=args.split, clients_per_round=args.clients_per_round,
                                  users_per_client=args.users_per_client, dp=args.dp,
                                  noise_multiplier=None if args.dp == "none" else 1.0))
    noise_multiplier = 0.0 if args.dp == "none" else 1.0
    model_config = config.model_config(split.num_items)
    runtime.install()
    try:
        population = simulation.ClientPopulation(split)

        def build(grouped: bool):
            return process.build_fedrec_process(
                model_config,
                aggregator=config.aggregator_config(noise_multiplier=noise_multiplier, expected_clients=len(population)),
                server_optimizer=config.server_optimizer_config(), seed=0, grouped=grouped)

        per_user, grouped = build(False), build(True)
        everyone = np.arange(len(population))
        rng = np.random.default_rng(0)
        cohorts = np.array_split(rng.permutation(len(population)), int(np.ceil(len(population) / args.clients_per_round)))
        per_user_state = per_user.next(per_user.initialize(), population.datasets(everyone)).state  # tracing
        grouped_state = grouped.next(grouped.initialize(), population.groups(everyone, args.users_per_client)).state
        groups = len(population.groups(everyone, args.users_per_client))
        print(f"{split.name}, dp {args.dp}: {len(population)} users, {split.num_items} items, dim {model_config.dim}; "
              f"grouped: {groups} TFF clients of <= {args.users_per_client} users\n")
        print("| rep | centralized epoch s | all-users round, grouped s | ratio | one client per user s | ratio "
              f"| pass as rounds of {args.clients_per_round}, grouped s | ratio |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for rep in range(args.repeats):
            reference = centralized.train_centralized(split, model_config, epochs=4, item_l2=config.user_l2)
            epoch = float(np.median(reference.epoch_seconds[1:]))
            start = time.perf_counter()
            grouped_state = grouped.next(grouped_state, population.groups(everyone, args.users_per_client)).state
            grouped_round = time.perf_counter() - start
            start = time.perf_counter()
            per_user_state = per_user.next(per_user_state, population.datasets(everyone)).state
            per_user_round = time.perf_counter() - start
            start = time.perf_counter()
            for cohort in cohorts:
                grouped_state = grouped.next(grouped_state, population.groups(cohort, args.users_per_client)).state
            as_rounds = time.perf_counter() - start
            rows.append({"centralized_epoch_s": epoch, "grouped_round_s": grouped_round,
                         "per_user_round_s": per_user_round, "grouped_rounds_pass_s": as_rounds})
            print(f"| {rep + 1} | {epoch:.3f} | {grouped_round:.3f} | {grouped_round / epoch:.2f}x "
                  f"| {per_user_round:.3f} | {per_user_round / epoch:.2f}x | {as_rounds:.3f} | {as_rounds / epoch:.2f}x |")
            sys.stdout.flush()
        ratio = lambda key: float(np.median([row[key] / row["centralized_epoch_s"] for row in rows]))  # noqa: E731
        summary = {
            "dataset": split.name, "dp": args.dp, "users": len(population), "items": split.num_items,
            "dim": model_config.dim,
            "users_per_client": args.users_per_client, "tff_clients_grouped": groups,
            "clients_per_round": args.clients_per_round, "repeats": args.repeats,
            # One federated pass over all users (one round, grouped) against one centralized epoch.
            "federated_over_centralized": ratio("grouped_round_s"),
            "per_user_clients_over_centralized": ratio("per_user_round_s"),
            "grouped_rounds_pass_over_centralized": ratio("grouped_rounds_pass_s"),
            "rows": rows,
        }
        print(f"\nmedian ratio to a centralized epoch: {summary['federated_over_centralized']:.2f}x as one all-users "
              f"round in {groups} client groups; {summary['per_user_clients_over_centralized']:.2f}x with one TFF "
              f"client per user; {summary['grouped_rounds_pass_over_centralized']:.2f}x as {len(cohorts)} grouped "
              f"rounds of ~{args.clients_per_round}")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
