"""Cost of federation on MovieLens-100K: one federated pass over every client against one
centralized (ALS) epoch of the same model on the same data, measured in alternation in one
process so that machine noise hits both alike. Prints one row per repetition and the median.

    uv run python bench/cost.py                # split u1, 5 repetitions
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tff_pipeline import centralized, runtime, simulation
from tff_pipeline.config import NON_PRIVATE_PRESET, SimulationConfig
from tff_pipeline.data import load_ml100k
from tff_pipeline.federated import process

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="u1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients-per-round", type=int, default=100)
    args = parser.parse_args()
    if not (args.data_dir / "u.data").exists():
        print(f"MovieLens-100K not found at {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    split = load_ml100k(args.data_dir, split=args.split, seed=0)
    config = SimulationConfig(dataset="ml-100k", split=args.split, clients_per_round=args.clients_per_round,
                              **NON_PRIVATE_PRESET)
    model_config = config.model_config(split.num_items)
    runtime.install()
    try:
        population = simulation.ClientPopulation(split)
        learning_process = process.build_fedrec_process(
            model_config, aggregator=config.aggregator_config(noise_multiplier=0.0, expected_clients=len(population)),
            server_optimizer=config.server_optimizer_config(), seed=0,
        )
        everyone = population.datasets(np.arange(len(population)))
        rng = np.random.default_rng(0)
        cohorts = np.array_split(rng.permutation(len(population)), int(np.ceil(len(population) / args.clients_per_round)))
        state = learning_process.initialize()
        state = learning_process.next(state, everyone).state  # tracing
        print(f"ML-100K {args.split}: {len(population)} clients, {split.num_items} items, dim {model_config.dim}\n")
        print("| rep | centralized epoch s | all-client round s | ratio | pass as rounds of "
              f"{args.clients_per_round} s | ratio |")
        print("|---|---|---|---|---|---|")
        ratios, split_ratios = [], []
        for rep in range(args.repeats):
            reference = centralized.train_centralized(split, model_config, epochs=4, item_l2=config.user_l2)
            epoch = float(np.median(reference.epoch_seconds[1:]))
            start = time.perf_counter()
            state = learning_process.next(state, everyone).state
            one_round = time.perf_counter() - start
            start = time.perf_counter()
            for cohort in cohorts:
                state = learning_process.next(state, population.datasets(cohort)).state
            as_rounds = time.perf_counter() - start
            ratios.append(one_round / epoch)
            split_ratios.append(as_rounds / epoch)
            print(f"| {rep + 1} | {epoch:.3f} | {one_round:.3f} | {ratios[-1]:.1f}x | {as_rounds:.3f} "
                  f"| {split_ratios[-1]:.1f}x |")
            sys.stdout.flush()
        print(f"\nmedian ratio: {np.median(ratios):.1f}x as one all-client round, "
              f"{np.median(split_ratios):.1f}x as {len(cohorts)} rounds of ~{args.clients_per_round}")
    finally:
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
