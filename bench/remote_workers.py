"""Seconds per round of the same federated simulation on TFF's local worker, on 1 remote TFF worker
service and on 2 (`fedrec simulate --workers`), measured in one run on this machine.

What runs: `simulation.run` on a synthetic data set (defaults: 2,000 users, 300 items, 40 ratings
per user, dim 16, 5 local steps, 1,000 clients per round so that each worker gets work worth
spreading), the same config and cohorts in every mode. The worker services are real
`python -m tff_pipeline.worker` processes on loopback ports, started once for the whole run. The
modes are interleaved, `--repeats` times (a shared machine's load varies). Per-round time is the
simulation's own `train_seconds` (the `learning_process.next` call: upload of the cohort's data,
client work, aggregation, server update); the first round of each run is reported apart (it
includes compiling the round), the median of the others is the figure. Also reported: CPU seconds
per round of this process (the driver: TFF's Python side, serialization, gRPC) and of each
worker_binary, and the largest difference of the final parameters from the local run's.

What the remote modes pay that the local one does not: every round's client data and the model
cross gRPC, and the round runs in TFF's mergeable form (each worker's partial aggregate, a merge,
then after_merge, which takes the round's argument again, so the first slice's client data is
serialized twice). With `--pinned`, each worker may use one CPU (as one-core pods on different
machines would); the driver is not pinned. On a 2-core machine the driver's and the workers' CPU
together bound every mode: 2 workers here show that the work is spread and run in parallel, not
the speed-up separate machines would give.

    uv run python bench/remote_workers.py                    # local, 1 worker, 2 workers
    uv run python bench/remote_workers.py --tff-single-loop --pinned
    uv run python bench/remote_workers.py --rounds 6 --users 4000 --clients-per-round 2000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from edge_client.native_log import filtered_stderr
from tff_pipeline.config import SimulationConfig
from tff_pipeline.data import synthetic_split
from tff_pipeline.runtime import import_training_stack
from tff_pipeline.worker import LocalService, local_services
from tff_pipeline.worker_address import WorkerAddress


@dataclasses.dataclass
class Mode:
    name: str
    workers: list[WorkerAddress] | None  # None: the local TFF worker
    worker_pids: list[int]
    loop_per_worker: bool = True
    first_rounds: list[float] = dataclasses.field(default_factory=list)
    rounds: list[float] = dataclasses.field(default_factory=list)  # rounds 2..N of every repeat
    worker_cpu: list[float] = dataclasses.field(default_factory=list)  # CPU seconds per worker, all rounds
    driver_cpu: list[float] = dataclasses.field(default_factory=list)  # this process, per round 2..N
    params: tuple[np.ndarray, ...] = ()

    @property
    def per_round(self) -> float:
        return statistics.median(self.rounds)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(mode: Mode, config: SimulationConfig, split: Any) -> None:
    from tff_pipeline import remote_runtime, simulation

    context = (contextlib.nullcontext() if mode.workers is None
               else remote_runtime.using_workers(mode.workers, loop_per_worker=mode.loop_per_worker))
    driver = [time.process_time()]  # at the end of each round (all of this process's threads)
    with context:
        cpu_before = [_cpu_seconds(pid) for pid in mode.worker_pids]
        result = simulation.run(config, split, on_round=lambda row: driver.append(time.process_time()))
        cpu = [_cpu_seconds(pid) - before for pid, before in zip(mode.worker_pids, cpu_before)]
    mode.driver_cpu.extend(np.diff(driver[1:]).tolist())
    seconds = np.diff([0.0, *(row["train_seconds"] for row in result.report["history"])])
    mode.first_rounds.append(float(seconds[0]))
    mode.rounds.extend(float(x) for x in seconds[1:])
    mode.worker_cpu = [a + b for a, b in zip(mode.worker_cpu, cpu)] if mode.worker_cpu else cpu
    mode.params = tuple(np.asarray(p) for p in result.params)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (the first is reported apart)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per mode, the modes interleaved (a shared machine's load varies)")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (each one client)")
    parser.add_argument("--clients-per-round", type=int, default=1000)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--tff-single-loop", action="store_true",
                        help="also time 2 workers driven from TFF's one event loop (no loop per worker)")
    parser.add_argument("--pinned", action="store_true",
                        help="also time workers pinned to one CPU each (CPU 0; CPUs 0 and 1), as one-core pods "
                             "on different machines would be")
    args = parser.parse_args()
    if args.rounds < 2 or args.repeats < 1:
        parser.error("--rounds must be at least 2 (the first round is reported apart), --repeats at least 1")

    import_training_stack()
    from tff_pipeline import remote_runtime, runtime

    split = synthetic_split(seed=0, num_users=args.users)
    config = SimulationConfig(
        rounds=args.rounds, clients_per_round=args.clients_per_round, local_steps=args.local_steps, dim=args.dim,
        eval_every=10**6, baselines=False,
    )
    print(f"{split.num_users} clients, {split.num_items} items, dim {config.dim}, {config.local_steps} local steps, "
          f"{config.clients_per_round} clients per round, {config.rounds} rounds per run, {args.repeats} runs per "
          f"mode; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
          f"{os.getloadavg()[0]:.2f} at start", flush=True)

    runtime.install()
    with contextlib.ExitStack() as stack:
        stack.callback(runtime.shutdown)
        stack.enter_context(filtered_stderr(remote_runtime.COMPILE_NOISE))
        free = stack.enter_context(local_services(2))
        modes = [Mode("local (TFF's local worker)", None, []),
                 Mode("1 worker service", _addresses(free[:1]), [free[0].worker_pid]),
                 Mode("2 worker services", _addresses(free), [s.worker_pid for s in free])]
        if args.tff_single_loop:
            modes.append(Mode("2 worker services, TFF's one event loop", _addresses(free),
                              [s.worker_pid for s in free], loop_per_worker=False))
        if args.pinned:
            pinned = stack.enter_context(local_services(2, cpu_sets=[{0}, {1}]))
            modes += [Mode("1 worker service, 1 CPU", _addresses(pinned[:1]), [pinned[0].worker_pid]),
                      Mode("2 worker services, 1 CPU each", _addresses(pinned), [s.worker_pid for s in pinned])]
            if args.tff_single_loop:
                modes.append(Mode("2 worker services, 1 CPU each, TFF's one event loop", _addresses(pinned),
                                  [s.worker_pid for s in pinned], loop_per_worker=False))
        for _ in range(args.repeats):
            for mode in modes:
                if mode.workers is None:
                    _run_local(mode, config, split)
                else:
                    _run(mode, config, split)
    _print_table(modes, config, args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def _addresses(services: list[LocalService]) -> list[WorkerAddress]:
    return [WorkerAddress("127.0.0.1", service.port) for service in services]


def _run_local(mode: Mode, config: SimulationConfig, split: Any) -> None:
    """The local worker starts inside the run (so its CPU is not measured) and is stopped after
    it, so that it holds no memory while the remote modes run."""
    from tff_pipeline import runtime

    _run(mode, config, split)
    runtime.shutdown()


def _print_table(modes: list[Mode], config: SimulationConfig, repeats: int) -> None:
    local = modes[0]
    print(f"\n| mode | first round (s, median) | s/round (median of rounds 2-{config.rounds} x {repeats}) "
          "| vs local | driver CPU s/round | worker CPU s/round | max abs(param - local) |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(mode.params, local.params))
        total_rounds = config.rounds * repeats
        cpu = " + ".join(f"{c / total_rounds:.2f}" for c in mode.worker_cpu) or "-"
        print(f"| {mode.name} | {statistics.median(mode.first_rounds):.2f} | {mode.per_round:.3f} "
              f"| {mode.per_round / local.per_round:.2f}x | {statistics.median(mode.driver_cpu):.2f} | {cpu} "
              f"| {diff:.1e} |")
    by_name = {mode.name: mode for mode in modes}
    for two, one in (("2 worker services", "1 worker service"),
                     ("2 worker services, TFF's one event loop", "1 worker service"),
                     ("2 worker services, 1 CPU each", "1 worker service, 1 CPU"),
                     ("2 worker services, 1 CPU each, TFF's one event loop", "1 worker service, 1 CPU")):
        if two in by_name:
            print(f"{two} / {one}: {by_name[two].per_round / by_name[one].per_round:.2f} "
                  "(seconds per round; below 1 is a speed-up)")


if __name__ == "__main__":
    sys.exit(main())
