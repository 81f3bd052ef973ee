"""What distributed DP costs on the upload path (issue 18), at ML-100K's model size, beside central DP.

Per device: the CPU of encoding one upload (central: fixed point; distributed: clip, rotation,
scaling, stochastic rounding and the Skellam share, `protocol.distributed_dp.encode`) and the
masked upload's bytes (central: `fixed_point_for(n, value bound 1, 22 fraction bits)` over the
upload layout; distributed: b bits over the padded model values). On the coordinator: the CPU of
decoding the secure sum (central: fixed point; distributed: centring, unscaling and the inverse
rotation). And the noise each planned setting puts on the averaged update at the same ε, from the
two accountants. Medians of repeated runs in one process; ratios from the same run.

    uv run python bench/distributed_dp.py
    uv run python bench/distributed_dp.py --json runs/bench-distributed-dp.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol import distributed_dp
from protocol.upload import UploadLayout
from secagg.quantize import fixed_point_for, packed_size
from tff_pipeline.privacy import accounting
from tff_pipeline.privacy import distributed as ddp_accounting

ITEMS, DIM = 1682, 16  # ML-100K's catalog at the default dimension


def median_cpu(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="cohort of the secure sum (default 1000)")
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n, layout = args.devices, UploadLayout(ITEMS, DIM)
    rng = np.random.default_rng(0)
    update = rng.normal(size=layout.length)
    update *= 0.5 / np.linalg.norm(update)

    central = fixed_point_for(max_summands=n, value_bound=1.0, fraction_bits=22)
    spec = distributed_dp.DistributedDpSpec(bits=args.bits, l2_clip=0.5, noise_multiplier=1.0, clients=n,
                                            noise_reporters=n // 2, dim=layout.num_model_values)
    seed = os.urandom(16)
    model_values = update[:layout.num_model_values]
    total_central = central.encode(update, value_bound=1.0)
    total_ddp = distributed_dp.encode(model_values, spec, seed).elements
    figures = {
        "devices": n, "model_values": layout.num_model_values, "bits_central": central.bit_width,
        "bits_distributed": spec.bits, "scale": spec.scale,
        "upload_bytes_central": packed_size(layout.length, central.bit_width),
        "upload_bytes_distributed": spec.upload_bytes,
        "device_encode_ms_central": 1e3 * median_cpu(lambda: central.encode(update, value_bound=1.0), args.repeats),
        "device_encode_ms_distributed": 1e3 * median_cpu(lambda: distributed_dp.encode(model_values, spec, seed),
                                                         args.repeats),
        "server_decode_ms_central": 1e3 * median_cpu(lambda: central.decode(total_central), args.repeats),
        "server_decode_ms_distributed": 1e3 * median_cpu(lambda: distributed_dp.decode_sum(total_ddp, spec, seed),
                                                         args.repeats),
    }
    # The noise on the averaged update at epsilon 8, 300 rounds, q = 1/3 of 3000 users (cohort 1000):
    # central z / n against distributed sqrt(n / m) z / n (each device's share is sized for m).
    q, rounds, delta = n / 3000, 300, 1e-4
    z_central = accounting.calibrate_noise_multiplier(target_epsilon=8.0, sampling_rate=q, rounds=rounds, delta=delta)
    z_ddp = ddp_accounting.calibrate_noise_multiplier(
        target_epsilon=8.0, sampling_rate=q, rounds=rounds, delta=delta, bits=args.bits, clip=0.5, expected_clients=n,
        noise_reporters=n // 2, dim=layout.num_model_values)
    figures.update(z_central=z_central, z_distributed=z_ddp,
                   noise_on_mean_central=z_central * 0.5 / n,
                   noise_on_mean_distributed=z_ddp * 0.5 * math.sqrt(n / (n // 2)) / n)
    figures["noise_distributed_over_central"] = figures["noise_on_mean_distributed"] / figures["noise_on_mean_central"]
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
