"""Privacy at scale (issue 20): utility against ε on synthetic populations of 1,000, 10,000 and
100,000 users, each trained as a user runs it, with the planner's cohort and rounds.

    uv run python bench/privacy_scale.py                          # 1k, 10k, 100k users; ε 1, 2, 4, 8 and none
    uv run python bench/privacy_scale.py --users 1000,10000 --epsilons 1,8,none
    uv run python bench/privacy_scale.py --json runs/privacy-scale.json

Every cell is one `fedrec simulate --synthetic-users N` in a child process (the same generator at
every scale), whose whole process tree's resident memory is sampled (`bench/memory.py`):
- ε given: `--dp adaptive --target-epsilon E --delta D --no-baselines`; the planner picks the
  cohort (a third of the users, at most 1,000, or the one whose noise is least) and the rounds, and
  calibrates the noise; D = min(1e-4, 1/(10 N)), since δ must stay well below 1/N.
- none: the defaults (no DP, 300 rounds of 50), with the baselines (centralized, popularity).
Prints one table (RMSE, HR@10, the plan, wall time and peak memory per cell), says per population
the smallest ε measured within 0.05 HR@10 of the non-private run ("DP is cheap from here"), and
draws HR@10 against ε per population (`--png`, default bench/figures/privacy_scale.png). DP noise
is fresh in every run: a cell moves by about ±0.01 HR@10 between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory import measure  # bench/memory.py: wall time and peak tree RSS of a command

CHEAP_WITHIN = 0.05  # HR@10 of the non-private run


def delta_for(users: int) -> float:
    return min(1e-4, 1.0 / (10 * users))


def run_cell(users: int, epsilon: float | None, out: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "fedrec_cli", "simulate", "--synthetic-users", str(users), "--out", str(out),
            "--quiet"]
    if epsilon is not None:
        argv += ["--dp", "adaptive", "--target-epsilon", f"{epsilon:g}", "--delta", f"{delta_for(users):g}",
                 "--no-baselines"]
    seconds, peak_mb, status, last = measure(argv, ROOT)
    if status != 0:
        raise SystemExit(f"{users} users, ε {epsilon}: fedrec simulate exited {status}: {last}")
    report = json.loads((out / "report.json").read_text())
    privacy = report.get("privacy") or {}
    return {
        "users": users, "epsilon": epsilon, "delta": privacy.get("delta"),
        "epsilon_spent": privacy.get("epsilon_rdp"), "noise_multiplier": privacy.get("noise_multiplier"),
        "rounds": report["config"]["rounds"], "cohort": report["config"]["clients_per_round"],
        "rmse": report["final"]["rmse"], "hr@10": report["final"]["hr@10"],
        "baselines": report.get("baselines") or {}, "seconds": seconds, "peak_mb": peak_mb,
    }


def cheap_from(rows: list[dict[str, Any]], users: int) -> float | None:
    """The smallest ε measured whose HR@10 is within CHEAP_WITHIN of the non-private run's (None if none)."""
    reference = next((r["hr@10"] for r in rows if r["users"] == users and r["epsilon"] is None), None)
    if reference is None:
        return None
    close = [r["epsilon"] for r in rows if r["users"] == users and r["epsilon"] is not None
             and r["hr@10"] >= reference - CHEAP_WITHIN]
    return min(close) if close else None


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for k, users in enumerate(sorted({r["users"] for r in rows})):
        color = f"C{k}"
        points = sorted((r["epsilon"], r["hr@10"]) for r in rows if r["users"] == users and r["epsilon"] is not None)
        if points:
            axis.plot([e for e, _ in points], [h for _, h in points], marker="o", color=color,
                      label=f"{users:,} users, DP")
        reference = [r for r in rows if r["users"] == users and r["epsilon"] is None]
        if reference:
            axis.axhline(reference[0]["hr@10"], color=color, linestyle="--", label=f"{users:,} users, no DP")
            popularity = (reference[0]["baselines"].get("popularity") or {}).get("hr@10")
            if popularity is not None:
                axis.axhline(popularity, color=color, linestyle=":", linewidth=1, label=f"{users:,} users, popularity")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("ε (user level, RDP)")
    axis.set_ylabel("HR@10")
    axis.set_title("Utility against ε by population (synthetic, planner's cohort and rounds)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1000,10000,100000")
    parser.add_argument("--epsilons", default="1,2,4,8,none")
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "figures" / "privacy_scale.png")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    populations = [int(u) for u in args.users.split(",")]
    epsilons = [None if e.strip() == "none" else float(e) for e in args.epsilons.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedrec-privacy-scale-") as tmp:
        for users in populations:
            for epsilon in epsilons:
                out = Path(tmp) / f"{users}-{epsilon or 'none'}"
                rows.append(run_cell(users, epsilon, out))
                r = rows[-1]
                print(f"[{users:,} users, ε {fmt(epsilon, 'g')}] HR@10 {r['hr@10']:.4f}, RMSE {r['rmse']:.4f}, "
                      f"{r['rounds']} rounds of {r['cohort']}, {r['seconds']:.0f} s, peak {r['peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
    print("\n## Privacy at scale (synthetic data, the planner's cohort and rounds)\n")
    print("| users | ε | δ | cohort x rounds | noise z | RMSE | HR@10 | HR@10 - no DP | wall s | peak MB (tree) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        reference = next((x["hr@10"] for x in rows if x["users"] == r["users"] and x["epsilon"] is None), None)
        gap = None if reference is None else r["hr@10"] - reference
        print(f"| {r['users']:,} | {fmt(r['epsilon'], 'g') if r['epsilon'] is not None else 'none'} "
              f"| {fmt(r['delta'], 'g')} | {r['cohort']:,} x {r['rounds']} | {fmt(r['noise_multiplier'], '.3f')} "
              f"| {r['rmse']:.4f} | {r['hr@10']:.4f} | {fmt(gap, '+.4f')} | {r['seconds']:.0f} | {r['peak_mb']:.0f} |")
    print()
    for users in populations:
        reference = [r for r in rows if r["users"] == users and r["epsilon"] is None]
        popularity = (reference[0]["baselines"].get("popularity") or {}).get("hr@10") if reference else None
        cheap = cheap_from(rows, users)
        print(f"- {users:,} users: " + (f"DP within {CHEAP_WITHIN} HR@10 of no DP from ε = {cheap:g}"
                                        if cheap is not None else f"no ε measured is within {CHEAP_WITHIN} HR@10 of no DP")
              + (f"; popularity {popularity:.4f}" if popularity is not None else ""))
    draw(rows, args.png)
    print(f"\nwrote {args.png}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "cheap_from": {str(u): cheap_from(rows, u) for u in populations},
                                         "within": CHEAP_WITHIN}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
