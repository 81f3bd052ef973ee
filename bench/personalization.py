"""Personalization lift on the device path, on MovieLens-100K.

The exported TFLite model runs in LiteRT (as on a device). For every user it is evaluated three
ways on the same held-out ratings and the same NCF ranking task:
  * fitted on-device: `personalize` on the user's own train ratings, then `infer`;
  * not fitted: the user's parameters at their initial value (zero), i.e. the global model alone;
  * the simulation's own evaluation of the same global parameters (TF, batched direct solve).
The lift is what on-device fitting buys; the fitted row should match the simulation's to ~1e-4.

    uv run python bench/personalization.py                 # trains a u1 run first (~1-2 min)
    uv run python bench/personalization.py --run runs/u1   # or use a `fedrec simulate --out` run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_client.litert_model import LiteModel, UserParams
from tff_pipeline import evaluation, model, personalized_eval
from tff_pipeline.data import DatasetSplit, load_dataset
from tff_pipeline.export.package import export_run
from tff_pipeline.run_folder import RunFolder

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


def train_default_run(data_dir: Path, out: Path) -> None:
    command = [sys.executable, "-m", "fedrec_cli", "simulate", "--dataset", "ml-100k", "--data-dir",
               str(data_dir), "--split", "u1", "--clients-per-round", "100", "--no-baselines", "--quiet",
               "--out", str(out)]
    print("training:", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


class DeviceScores:
    """Per-user scores computed by the device's LiteRT model wrapper, looked up as an evaluation.ScoreFn."""

    def __init__(self, package: Path, split: DatasetSplit, *, fit: bool) -> None:
        device_model = LiteModel.load(package)
        train = split.train
        users = np.unique(np.concatenate([split.test.users, split.ranking.users]))
        order = np.argsort(train.users, kind="stable")
        bounds = np.searchsorted(train.users[order], np.arange(split.num_users + 1))
        every_item = np.arange(split.num_items, dtype=np.int32)
        self.scores = np.full((split.num_users, split.num_items), np.nan, np.float32)
        self.fit_seconds: list[float] = []
        for u in users:
            if fit:
                rows = order[bounds[u]:bounds[u + 1]]
                start = time.perf_counter()
                device_model.personalize(train.items[rows], train.ratings[rows])
                self.fit_seconds.append(time.perf_counter() - start)
            else:
                device_model.set_user(UserParams.zeros(device_model.dim))
            self.scores[u] = device_model.infer(every_item)  # all items: full-catalog metrics need them

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.scores[users, items]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a finished `fedrec simulate --out` folder")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrec-lift-") as tmp:
        run = args.run
        if run is None:
            if not (args.data_dir / "u.data").exists():
                print(f"MovieLens-100K not found at {args.data_dir} (pass --data-dir or --run)", file=sys.stderr)
                return 2
            run = Path(tmp) / "run"
            train_default_run(args.data_dir, run)
        config = RunFolder(run).read_identity().config
        split = load_dataset(config.dataset, data_dir=config.data_dir, split=config.split, seed=config.seed,
                             synthetic_users=config.synthetic_users)
        package = Path(tmp) / "package"
        manifest = export_run(run, package)
        with np.load(run / "final_model.npz") as final:
            params = model.GlobalParams(final["item_embeddings"], final["item_bias"], final["global_mean"])
        simulated = personalized_eval.evaluate_global_model(params, split, config.model_config(split.num_items))
        fitted_scores = DeviceScores(package, split, fit=True)
        fitted = evaluation.evaluate(fitted_scores, split)
        unfitted = evaluation.evaluate(DeviceScores(package, split, fit=False), split)

    print(f"\n### Personalization lift: {split.name}, model {manifest.model_version} "
          f"(dim {manifest.dim}, {manifest.model_bytes / 1024:.0f} KiB), "
          f"{len(fitted_scores.fit_seconds)} users with held-out ratings\n")
    print("| evaluation | RMSE | MAE | HR@10 | NDCG@10 |")
    print("|---|---|---|---|---|")
    for name, metrics in (("on-device, fitted (LiteModel personalize + infer)", fitted),
                          ("on-device, not fitted (user params at init = 0)", unfitted),
                          ("simulation's own evaluation (TF, direct solve)", simulated)):
        print(f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" for k in ("rmse", "mae", "hr@10", "ndcg@10")) + " |")
    seconds = np.array(fitted_scores.fit_seconds) * 1e6
    print(f"\nlift from on-device fitting: RMSE {unfitted['rmse'] - fitted['rmse']:+.4f} "
          f"({unfitted['rmse']:.4f} -> {fitted['rmse']:.4f}), HR@10 {fitted['hr@10'] - unfitted['hr@10']:+.4f}")
    print(f"|fitted - simulation|: RMSE {abs(fitted['rmse'] - simulated['rmse']):.6f}, "
          f"HR@10 {abs(fitted['hr@10'] - simulated['hr@10']):.4f}")
    print(f"personalize call (all of a user's train ratings): median {np.median(seconds):.1f} us, "
          f"p99 {np.percentile(seconds, 99):.1f} us over {len(seconds)} users")
    return 0


if __name__ == "__main__":
    sys.exit(main())
