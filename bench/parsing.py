"""Parsing speed of a large rating file: the columnar fast path against the line-by-line reader.

    uv run python bench/parsing.py                           # 200 MB u.data, slow reader on a 20 MB slice
    uv run python bench/parsing.py --slow-megabytes 0        # slow reader on the whole file too (~1 min)
    uv run python bench/parsing.py --json parsing.json

Writes a u.data in the ML-100K tab format with bench/memory.py's `write_ratings` (deterministic,
~8.5 M ratings for 200 MB) into a temporary folder, then in one process times
- `read_rating_file` (what `load_ml100k` calls: the columnar fast path, duplicate check included)
  on the whole file and on a slice of its first lines;
- the line-by-line reader (`iter_tab_records` + `parse_rating_records`, also with the duplicate
  check) on that slice, extrapolated per row to the whole file (said so in the table);
and checks that both give identical arrays on the slice. Prints one table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# bench/coordinator.py would shadow the coordinator package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from tff_pipeline.data.csv_format import iter_tab_records, parse_rating_records, read_rating_file
from tff_pipeline.data.movielens import INTEGER_STARS

COLUMNS = ("users", "items", "ratings", "timestamps", "lines")


def _write_ratings():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_ratings


def _slice(source: Path, target: Path, megabytes: float) -> None:
    """The first whole lines of `source`, about `megabytes` MB of them."""
    with open(source, "rb") as handle:
        data = handle.read(int(megabytes * 1e6))
    target.write_bytes(data[: data.rfind(b"\n") + 1])


def _timed(read, path: Path):
    started = time.perf_counter()
    raw = read(path)
    return raw, time.perf_counter() - started


def fast(path: Path):
    return read_rating_file(path, INTEGER_STARS, delimiter="\t")


def slow(path: Path):
    return parse_rating_records(iter_tab_records(path), path, INTEGER_STARS, separator_name="tab")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=200.0, help="size of the generated u.data")
    parser.add_argument("--slow-megabytes", type=float, default=20.0,
                        help="slice the line-by-line reader parses (0: the whole file)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrec-parsing-") as tmp:
        big = Path(tmp) / "u.data"
        started = time.perf_counter()
        rows = _write_ratings()(big, args.megabytes)
        size = big.stat().st_size
        print(f"generated {size / 1e6:.0f} MB, {rows} ratings in {time.perf_counter() - started:.0f} s\n")
        whole = args.slow_megabytes <= 0 or args.slow_megabytes >= args.megabytes
        part = big
        if not whole:
            part = Path(tmp) / "slice.data"
            _slice(big, part, args.slow_megabytes)

        raw_fast, fast_s = _timed(fast, big)
        assert len(raw_fast) == rows, (len(raw_fast), rows)
        del raw_fast
        part_fast, part_fast_s = _timed(fast, part)
        part_slow, part_slow_s = _timed(slow, part)
        for name in COLUMNS:
            a, b = getattr(part_fast, name), getattr(part_slow, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), f"fast and slow differ in {name}"
        part_rows = len(part_slow)
        part_size = part.stat().st_size
        del part_fast, part_slow

    fast_us = fast_s / rows * 1e6
    slow_us = part_slow_s / part_rows * 1e6
    slice_label = "whole file" if whole else f"{part_size / 1e6:.0f} MB slice (its first lines)"
    print("| reader | file | rows | seconds | µs/row |")
    print("|---|---|---|---|---|")
    print(f"| fast (columnar, read_rating_file) | {size / 1e6:.0f} MB | {rows} | {fast_s:.2f} | {fast_us:.3f} |")
    if not whole:
        print(f"| fast (columnar, read_rating_file) | {slice_label} | {part_rows} | {part_fast_s:.2f} | "
              f"{part_fast_s / part_rows * 1e6:.3f} |")
    print(f"| slow (line by line) | {slice_label} | {part_rows} | {part_slow_s:.2f} | {slow_us:.3f} |")
    if not whole:
        print(f"| slow (line by line), extrapolated per row | {size / 1e6:.0f} MB | {rows} | "
              f"{slow_us * rows / 1e6:.1f} (extrapolated) | {slow_us:.3f} |")
    speedup = slow_us / fast_us
    print(f"\nspeedup per row: {speedup:.1f}x; fast and slow readers gave identical arrays on the {slice_label}")
    if args.json:
        figures = {
            "megabytes": round(size / 1e6, 1),
            "rows": rows,
            "fast_parse_s": round(fast_s, 3),
            "fast_us_per_row": round(fast_us, 4),
            "slow_us_per_row": round(slow_us, 4),
            "slow_rows": part_rows,
            "slow_extrapolated": not whole,
            "speedup": round(speedup, 1),
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
