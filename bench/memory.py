"""Peak memory and time for a large ratings file: training on it, and a device refusing it.

    uv run python bench/memory.py                  # a 200 MB u.data (ML-100K format), ~8.5 M ratings
    uv run python bench/memory.py --megabytes 50

Generates the file (deterministic: 100 k users, 1682 items, ~85 ratings each, in the ML-100K
tab format), then runs, as a user would, in child processes whose whole process tree's resident
memory is sampled every 50 ms:
1. `fedrec simulate --dataset ml-100k --split random` on it (baselines included, few rounds);
2. `fedrec-edge import-ratings` of the same file on a device with the bundled model.
Prints one table: wall seconds, peak RSS of the tree (the trainer plus its TFF worker), exit status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_ratings(path: Path, megabytes: float, *, num_items: int = 1682, per_user: int = 85, seed: int = 0) -> int:
    """u.data lines `user<TAB>item<TAB>rating<TAB>timestamp` until the file has `megabytes` MB."""
    rng = np.random.default_rng(seed)
    target, rows, user = megabytes * 1e6, 0, 0
    with open(path, "w") as handle:
        while handle.tell() < target:
            users = np.repeat(np.arange(user + 1, user + 1001), per_user)
            offsets = rng.integers(0, num_items, 1000).repeat(per_user)
            items = (offsets + 13 * np.tile(np.arange(per_user), 1000)) % num_items + 1  # distinct per user
            stars = rng.integers(1, 6, len(users))
            stamps = 880_000_000 + rng.integers(0, 10_000_000, len(users))
            handle.write("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(users, items, stars, stamps)))
            rows += len(users)
            user += 1000
    return rows


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def measure(argv: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """(seconds, peak tree RSS in MB, exit status, last stderr line) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    peak = 0
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.05)
    reader.join(timeout=5)
    last = stderr[-1].strip() if stderr else ""
    return time.perf_counter() - start, peak / 1e6, process.returncode, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrec-memory-") as tmp:
        data = Path(tmp) / "ml"
        data.mkdir()
        started = time.perf_counter()
        rows = write_ratings(data / "u.data", args.megabytes)
        size = (data / "u.data").stat().st_size
        print(f"generated {size / 1e6:.0f} MB, {rows} ratings in {time.perf_counter() - started:.0f} s\n")
        fedrec = [sys.executable, "-m", "fedrec_cli"]
        edge = [sys.executable, "-m", "edge_client.cli", "--device-dir", str(Path(tmp) / "device")]
        subprocess.run([*edge, "install"], check=True, capture_output=True)
        cases = [
            ("train: fedrec simulate (baselines on)",
             [*fedrec, "simulate", "--dataset", "ml-100k", "--data-dir", str(data), "--split", "random",
              "--rounds", str(args.rounds), "--eval-every", str(args.rounds), "--centralized-epochs", "2",
              "--quiet", "--out", str(Path(tmp) / "run")]),
            ("device: fedrec-edge import-ratings", [*edge, "import-ratings", str(data / "u.data")]),
        ]
        print("| case | seconds | peak RSS (MB) | exit | last stderr line |")
        print("|---|---|---|---|---|")
        for name, argv in cases:
            seconds, peak, status, last = measure(argv, REPO)
            print(f"| {name} | {seconds:.1f} | {peak:.0f} | {status} | {last[:110]} |", flush=True)


if __name__ == "__main__":
    main()
