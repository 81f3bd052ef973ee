"""What user-level DP costs a small population: the synthetic set's 400 users against the two
simple baselines (most-popular for ranking, user+item biases for stars).

Runs `fedrec simulate` (what `fedrec up` trains for the same flags) for a few settings and seeds
and prints, per setting, the mean and spread of each run's difference to its own baselines and
how many runs beat both. The rows are the deployment default (`fedrec up` with no flag), the best
ε = 8 setting of a 45-setting sweep, the one setting found that beats both baselines every time
(ε = 32), and training without DP. DP noise is fresh each run, so the spread matters more than
any single run.

    uv run python bench/small_population_dp.py                 # 4 settings x seeds 0,1,2 (~10 min on 2 cores)
    uv run python bench/small_population_dp.py --seeds 0 --settings deployment-default,no-dp
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS: dict[str, list[str]] = {
    # `fedrec up` with no flag: ε = 8, the planner's cohort (133 of 400), 20 rounds, the private preset.
    "deployment-default": ["--dp", "adaptive", "--target-epsilon", "8", "--rounds", "20"],
    "eps8-best": ["--dp", "adaptive", "--target-epsilon", "8", "--rounds", "30", "--clients-per-round", "300",
                  "--user-embedding-l2", "10", "--server-lr", "1.5", "--dim", "4"],
    "eps32": ["--dp", "adaptive", "--target-epsilon", "32", "--rounds", "30", "--clients-per-round", "300",
              "--user-embedding-l2", "10", "--server-lr", "1.5"],
    "no-dp": ["--dp", "none", "--rounds", "300"],
}


def run(flags: list[str], seed: int, out: Path) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedrec_cli", "simulate", *flags, "--seed", str(seed),
                           "--quiet", "--out", str(out)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"fedrec simulate {' '.join(flags)} --seed {seed} failed: {done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    final, baselines = report["final"], report["baselines"]
    return {"rmse": final["rmse"], "hr": final["hr@10"], "d_rmse": final["rmse"] - baselines["biases"]["rmse"],
            "d_hr": final["hr@10"] - baselines["popularity"]["hr@10"], "epsilon": report["privacy"]["epsilon_rdp"],
            "seconds": time.monotonic() - started}


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:+.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:+.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--seeds", default="0,1,2", help="synthetic data and sampling seeds (default 0,1,2)")
    args = parser.parse_args()
    names = [name for name in args.settings.split(",") if name]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting {unknown[0]!r}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print("| setting | ε (RDP) | RMSE − biases' | HR@10 − popularity's | beats both | seconds per run |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-small-dp-") as scratch:
        for name in names:
            rows = [run(SETTINGS[name], seed, Path(scratch) / f"{name}-{seed}") for seed in seeds]
            both = sum(row["d_rmse"] < 0 and row["d_hr"] > 0 for row in rows)
            epsilon = rows[0]["epsilon"]
            print(f"| {name} | {'-' if epsilon is None else f'{epsilon:.2f}'} | {spread([r['d_rmse'] for r in rows])} "
                  f"| {spread([r['d_hr'] for r in rows])} | {both}/{len(rows)} | "
                  f"{statistics.mean(r['seconds'] for r in rows):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
