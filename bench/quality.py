"""Quality benchmark on MovieLens-100K: the rating table (RMSE on the official u1 fold) next to the
ranking table (the standard leave-one-out protocol: HR@10/NDCG@10 against 99 sampled negatives,
mean of 3 negative samples, and Recall@20/NDCG@20 against the whole catalog), for baselines,
centralized references, the federated model without DP and with user-level DP at epsilon 1, 4, 8.

DP rows run what `fedrec simulate --dp adaptive --target-epsilon E` runs with no other flag: the
private preset and the privacy planner's cohort and rounds; beside each, the same with
`--dp distributed` (the devices add discrete Skellam noise under secure aggregation; its
accountant asks for more noise, see the README's privacy section). Draws utility against epsilon.

    uv run python bench/quality.py                     # u1 + loo, DP at epsilon 1, 4, 8 (~35 min)
    uv run python bench/quality.py --folds all         # RMSE on u1..u5 (DP rows on u1)
    uv run python bench/quality.py --dp-only           # only the DP rows (central and distributed)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tff_pipeline import (
    baselines,
    centralized,
    personalized_eval,
    plots,
    ranking_baselines,
    runtime,
    simulation,
)
from tff_pipeline.config import NON_PRIVATE_PRESET, PRIVATE_PRESET, SimulationConfig
from tff_pipeline.data import DatasetSplit, load_ml100k
from tff_pipeline.privacy import planner
from tff_pipeline.privacy.distributed import model_values

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
RATING_METRICS = ("rmse", "mae")
RANKING_METRICS = ("hr@10", "ndcg@10", "recall@20", "ndcg@20")
Row = dict


def federated_config(args: argparse.Namespace, split_name: str, **changes) -> SimulationConfig:
    base = SimulationConfig(
        dataset="ml-100k", data_dir=str(args.data_dir), split=split_name, seed=args.seed,
        rounds=args.rounds, clients_per_round=args.clients_per_round, eval_every=10**6, baselines=False,
        **NON_PRIVATE_PRESET,
    )
    return dataclasses.replace(base, **changes)


def dp_config(args: argparse.Namespace, split_name: str, split: DatasetSplit,
              epsilon: float, dp: str) -> tuple[SimulationConfig, str]:
    """What the plain `fedrec simulate --dp DP --target-epsilon E` runs: the private preset, and
    the planner's cohort and rounds."""
    config = federated_config(args, split_name, **PRIVATE_PRESET, dp=dp, target_epsilon=epsilon, delta=args.delta)
    config, plan = planner.plan_config(config, split.train.users, model_values=model_values(split.num_items, config.dim))
    bits = f", b {config.dp_bits}" if dp == "distributed" else ""
    return config, f"planned: cohort {plan.clients_per_round}, {plan.rounds} rounds, z {plan.noise_multiplier:.2f}{bits}"


def timed(fn: Callable[[], dict]) -> tuple[dict, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def centralized_rows(split: DatasetSplit, config: SimulationConfig, epochs: int) -> list[tuple[str, dict, float]]:
    rows = []
    for name, model_config in (
        ("centralized rating MF (ALS, ranks by stars)",
         dataclasses.replace(config, implicit_learning_rate=0.0).model_config(split.num_items)),
        ("centralized, same model and objective (ALS)", config.model_config(split.num_items)),
    ):
        def train_and_evaluate(model_config=model_config):
            reference = centralized.train_centralized(split, model_config, epochs=epochs, item_l2=config.user_l2)
            return personalized_eval.evaluate_global_model(reference.params, split, model_config)

        rows.append((name, *timed(train_and_evaluate)))
    return rows


def federated_rows(args: argparse.Namespace, split_name: str, split: DatasetSplit,
                   with_dp: bool) -> list[tuple[str, dict, float, str]]:
    runs = [] if args.dp_only else [
        ("federated, rating head only (ranks by stars)", federated_config(args, split_name, implicit_learning_rate=0.0), ""),
        ("**federated (this model)**", federated_config(args, split_name), ""),
    ]
    if with_dp:
        for epsilon in args.epsilons:
            config, note = dp_config(args, split_name, split, epsilon, args.dp)
            runs.append((f"federated, DP eps={epsilon:g}", config, note))
            if args.distributed:
                config, note = dp_config(args, split_name, split, epsilon, "distributed")
                runs.append((f"federated, distributed DP, eps={epsilon:g}", config, note))
    rows = []
    for name, config, note in runs:
        report, seconds = timed(lambda config=config: simulation.run(config, split).report)
        privacy = report["privacy"]
        if privacy["epsilon_rdp"] is not None:
            pld = "" if privacy["epsilon_pld"] is None else f" / {privacy['epsilon_pld']:.2f} (PLD)"
            note += f"; spent eps {privacy['epsilon_rdp']:.2f} (RDP){pld}"
        rows.append((name, report["final"], seconds, note.strip("; ")))
    return rows


def run_split(args: argparse.Namespace, split_name: str, *, with_dp: bool, ranking: bool) -> list[Row]:
    split = load_ml100k(args.data_dir, split=split_name, seed=args.seed)
    metrics = RANKING_METRICS if ranking else RATING_METRICS
    rows: list[Row] = []

    def add(name: str, result: dict, seconds: float, note: str = "") -> None:
        rows.append({"split": split_name, "model": name, **{k: result.get(k) for k in metrics},
                     "seconds": seconds, "note": note})
        print(f"  {split_name}: {name}: " + ", ".join(f"{k} {result.get(k)}" for k in metrics), file=sys.stderr, flush=True)

    simple = [("user+item biases", baselines.biases)]
    if ranking:
        simple = [("popularity", baselines.popularity), *simple,
                  ("iALS (numpy, d=16)", ranking_baselines.ials), ("BPR-MF (numpy, d=16)", ranking_baselines.bpr)]
    else:
        simple = [("global mean", baselines.global_mean), ("local-only (device alone)", baselines.local_only), *simple]
    for name, fn in [] if args.dp_only else simple:
        add(name, *timed(lambda fn=fn: fn(split)))
    references = [] if args.dp_only else centralized_rows(split, federated_config(args, split_name),
                                                          args.centralized_epochs)
    for name, result, seconds in references:
        add(name, result, seconds)
    for name, result, seconds, note in federated_rows(args, split_name, split, with_dp):
        add(name, result, seconds, note)
    return rows


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(rows: list[Row], title: str, metrics: tuple[str, ...]) -> None:
    print(f"\n### {title}\n")
    print("| model | " + " | ".join(m.upper().replace("NDCG@20", "NDCG@20 (full)").replace("RECALL@20", "Recall@20 (full)")
                                    for m in metrics) + " | wall s | note |")
    print("|---|" + "---|" * (len(metrics) + 2))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(fmt(r[k]) for k in metrics) + f" | {fmt(r['seconds'], 1)} | {r['note']} |")
    sys.stdout.flush()


def draw_utility_against_epsilon(rows: list[Row], metric: str, reference_model: str, path: Path) -> None:
    points = [(float(r["model"].split("eps=")[1]), r[metric]) for r in rows if "DP eps=" in r["model"]]
    distributed = [(float(r["model"].split("eps=")[1]), r[metric]) for r in rows if "distributed DP, eps=" in r["model"]]
    if not points and not distributed:
        return
    by_name = {r["model"]: r[metric] for r in rows}
    image = plots.utility_against_epsilon(
        points, by_name.get("**federated (this model)**"), by_name.get(reference_model),
        metric=metric.upper(), reference_label=reference_model, distributed=distributed,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", default="u1", help="rating folds: u1 (default), a comma list, or 'all' for u1..u5")
    parser.add_argument("--no-ranking", action="store_true", help="skip the leave-one-out ranking table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=300, help="rounds of the non-private runs")
    parser.add_argument("--clients-per-round", type=int, default=100, help="cohort of the non-private runs")
    parser.add_argument("--centralized-epochs", type=int, default=15)
    parser.add_argument("--dp", default="adaptive", choices=["fixed", "adaptive"])
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 4.0, 8.0])
    parser.add_argument("--no-distributed", dest="distributed", action="store_false",
                        help="skip the distributed-DP rows")
    parser.add_argument("--dp-only", action="store_true", help="only the DP rows (no baselines or references)")
    parser.add_argument("--delta", type=float, default=1e-4)
    parser.add_argument("--figures", type=Path, default=ROOT / "bench" / "figures",
                        help="where the utility-against-epsilon PNGs go")
    parser.add_argument("--json", type=Path, default=None, help="also write all rows here")
    args = parser.parse_args()
    if not (args.data_dir / "u.data").exists():
        print(f"MovieLens-100K not found at {args.data_dir} (its license forbids redistribution; "
              "pass --data-dir)", file=sys.stderr)
        return 2
    folds = ["u1", "u2", "u3", "u4", "u5"] if args.folds == "all" else args.folds.split(",")
    runtime.install()
    rating_rows: list[Row] = []
    ranking_rows: list[Row] = []
    try:
        for index, fold in enumerate(folds):
            rows = run_split(args, fold, with_dp=index == 0, ranking=False)
            print_table(rows, f"Rating prediction, ML-100K {fold} (official fold)", RATING_METRICS)
            rating_rows += rows
        if not args.no_ranking:
            ranking_rows = run_split(args, "loo", with_dp=True, ranking=True)
            print_table(ranking_rows, "Ranking, ML-100K leave-one-out (latest interaction held out; HR/NDCG@10 vs 99 "
                                      "sampled negatives, mean of 3 samples; Recall/NDCG@20 vs the whole catalog)",
                        RANKING_METRICS)
    finally:
        runtime.shutdown()
    if len(folds) > 1:
        names = [r["model"] for r in rating_rows if r["split"] == folds[0] and "DP" not in r["model"]]
        means = [{"model": name, "note": f"mean of {len(folds)} folds",
                  "seconds": float(np.mean([r["seconds"] for r in rating_rows if r["model"] == name])),
                  **{k: float(np.mean([r[k] for r in rating_rows if r["model"] == name])) for k in RATING_METRICS}}
                 for name in names]
        print_table(means, f"Rating prediction, mean over {','.join(folds)}", RATING_METRICS)
    draw_utility_against_epsilon([r for r in rating_rows if r["split"] == folds[0]], "rmse", "user+item biases",
                                 args.figures / "rmse_vs_epsilon.png")
    draw_utility_against_epsilon(ranking_rows, "hr@10", "popularity", args.figures / "hr_vs_epsilon.png")
    if args.json:
        args.json.write_text(json.dumps(rating_rows + ranking_rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
