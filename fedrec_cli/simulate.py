"""`fedrec simulate`, `fedrec export`, `fedrec worker`: the TFF side of the command line, and the
only place that turns flags into a SimulationConfig for a simulation."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedrec_cli.errors import PROG
from fedrec_cli.training_flags import add_training_flags, config_from_args, flag_of, given_training_values
from tff_pipeline import runtime
from tff_pipeline.config import ConfigError, SimulationConfig
from tff_pipeline.worker_address import WorkerAddress

# Flags that do not change what is trained, so they may accompany --resume.
_RUN_FLAGS = {"out", "resume", "quiet", "overwrite", "command"}


def _simulate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="federated training in a TFF simulation (users batched into TFF clients)")
    add_training_flags(p)
    p.add_argument("--users-per-client", type=int, metavar="N",
                   help="simulate N users in each TFF client, their work vectorized in one computation: the same "
                        "per-user FedAvg rounds (up to float rounding), several times faster; under --dp fixed or "
                        "adaptive each user's update is still clipped alone; not with --dp distributed (default "
                        "512 without DP, 1 with --dp; 1 = one TFF client per user). With --workers, "
                        "TFF spreads clients, not users: a cohort of at most N users is one client on one worker")
    p.add_argument("--out", type=Path, help="output folder (report, metrics.csv, checkpoints); must be new or "
                                            "empty, or hold an earlier run and --overwrite be given")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--resume", type=Path, help="continue the interrupted run in this folder, as configured there")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", metavar="HOST:PORT,...",
                   help="run TFF on these worker services (`fedrec worker`), each cohort spread over them; "
                        "default: one local TFF worker")
    p.add_argument("--worker-timeout", type=float, metavar="SECONDS",
                   help="with --workers: how long to wait for a worker to answer before giving up (default 20)")
    return p


def _worker_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from tff_pipeline import worker

    p = sub.add_parser("worker", help="serve TFF's worker_binary in the foreground, for `simulate --workers`")
    worker.add_arguments(p)
    return p


def _worker(args: argparse.Namespace) -> int:
    from tff_pipeline import worker

    return worker.serve(args.port, max_concurrent_calls=args.max_concurrent_calls)


def _check_workers(args: argparse.Namespace) -> tuple[tuple[WorkerAddress, ...] | None, float]:
    """--workers and --worker-timeout, parsed; every worker must answer now, before the slow
    start (data, TensorFlow), so an unreachable one costs at most the timeout."""
    from tff_pipeline import remote_runtime
    from tff_pipeline.worker_address import parse_workers

    timeout = remote_runtime.CONNECT_TIMEOUT_SECONDS if args.worker_timeout is None else args.worker_timeout
    if args.workers is None:
        if args.worker_timeout is not None:
            raise ConfigError("worker_timeout", "applies only with --workers")
        return None, timeout
    if not 0 < timeout <= 3600:
        raise ConfigError("worker_timeout", f"must be more than 0 and at most 3600 seconds, got {timeout:g}")
    workers = parse_workers(args.workers)
    remote_runtime.check_reachable(workers, timeout=timeout)
    return workers, timeout


@contextlib.contextmanager
def _tff_context(workers: tuple[WorkerAddress, ...] | None, timeout: float) -> Iterator[None]:
    """The local TFF worker (None: runtime.install's default), or TFF's context over remote
    workers, for the block."""
    if workers is None:
        yield
        return
    from edge_client.native_log import filtered_stderr
    from tff_pipeline import remote_runtime

    with filtered_stderr(remote_runtime.COMPILE_NOISE), remote_runtime.using_workers(workers, connect_timeout=timeout):
        yield


def _given_training_flags(args: argparse.Namespace) -> list[str]:
    return sorted(given_training_values(args))


def plan_privacy_budget(config: SimulationConfig, split: Any, *, given_rounds: int | None,
                         given_cohort: int | None) -> SimulationConfig:
    """--target-epsilon alone: plan the cohort size and rounds the user left unset, print the plan,
    and record the planned values in the config (so config.json and --resume use them)."""
    import numpy as np

    from tff_pipeline.privacy import planner
    from tff_pipeline.privacy.distributed import model_values

    population = int(np.unique(split.train.users).size)
    shape = planner.distributed_shape(config, model_values(split.num_items, config.dim))
    config, plan = planner.plan_run(config, population, rounds=given_rounds, clients_per_round=given_cohort,
                                    distributed=shape)
    if plan is not None:
        print(plan.describe())
    return config


def _progress_callbacks(enabled: bool):
    if not enabled:
        return None, None, lambda: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
        transient=False,
    )
    task: dict[str, Any] = {}
    latest: dict[str, Any] = {}

    def on_start(done: int, total: int) -> None:
        progress.start()
        task["id"] = progress.add_task("train", total=total, completed=done, metrics="")

    def on_round(row: dict[str, Any]) -> None:
        latest.update({k: v for k, v in row.items() if v is not None})
        parts = [f"cohort {row['cohort']}"]
        for key in ("rmse", "hr@10"):
            if key in latest:
                parts.append(f"{key} {latest[key]:.4f}")
        if "epsilon_rdp" in latest:
            parts.append(f"eps {latest['epsilon_rdp']:.3f}")
        progress.update(task["id"], advance=1, metrics="  ".join(parts))

    return on_start, on_round, progress.stop


def _simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tff_pipeline.run_folder import RunFolder

    if args.resume is not None:
        given = _given_training_flags(args)
        if given:
            flags = ", ".join(flag_of(parser, name) for name in given)
            raise ConfigError("resume", f"{flags} cannot be changed when resuming: the run continues as configured "
                                        f"in {args.resume}/config.json (start a new run to change them)")
        if args.out is not None and os.path.realpath(args.out) != os.path.realpath(args.resume):
            raise ConfigError("resume", "--out and --resume name different folders; --resume writes into its own")
        if args.overwrite:
            raise ConfigError("resume", "--overwrite starts a new run; it cannot be combined with --resume")
        resumed = RunFolder(args.resume)
        identity = resumed.read_identity()
        config = identity.config
        folder: RunFolder | None = resumed
    else:
        config = config_from_args(args)
        folder = None if args.out is None else RunFolder(args.out)
        identity = None
        if folder is not None:
            folder.check_can_start(overwrite=args.overwrite)

    if args.workers is not None and config.dp == "distributed":
        # Its secure modular sums are rewritten for the local worker only; over TFF's mergeable
        # context the partial sums would need merging modulo 2^b, which is not built or tested.
        raise ConfigError("workers", "--dp distributed runs on the local TFF worker only (not yet over --workers)")
    workers, worker_timeout = _check_workers(args)
    from tff_pipeline.data import load_dataset

    split = load_dataset(config.dataset, data_dir=config.data_dir, split=config.split, seed=config.seed,
                         synthetic_users=config.synthetic_users)
    config.check_model_size(split.num_items)
    if identity is None:
        config = plan_privacy_budget(config, split, given_rounds=args.rounds, given_cohort=args.clients_per_round)
    runtime.import_training_stack()
    from tff_pipeline import reporting, simulation

    if folder is not None and identity is None:
        identity = folder.start(config, overwrite=args.overwrite)
    runtime.install()
    on_start, on_round, stop = _progress_callbacks(not args.quiet)
    try:
        with _tff_context(workers, worker_timeout):
            result = simulation.run(
                config, split, out_dir=None if folder is None else folder.path, resume=args.resume is not None,
                identity=identity, on_round=on_round, on_start=on_start,
            )
    except KeyboardInterrupt:
        stop()
        if folder is not None:
            print(f"{PROG}: interrupted; the last finished round is saved: continue with "
                  f"`fedrec simulate --resume {folder.path}`", file=sys.stderr)
        raise
    finally:
        stop()
        runtime.shutdown()
    if folder is not None:
        reporting.write_outputs(folder, result.report, result.params, split.vocab)
        print(f"wrote {folder.path}/report.json, report.md, metrics.csv, final_model.npz, vocabulary.json")
    print(reporting.markdown(reporting.json_safe(result.report)))
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write a run's model as a TFLite package (model.tflite + manifest.json)")
    p.add_argument("--run", type=Path, required=True, help="a finished `fedrec simulate --out` folder")
    p.add_argument("--out", type=Path, required=True,
                   help="package folder to write: new, empty, or an earlier package with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the model package already in --out")
    p.add_argument("--round", dest="round_num", type=int, default=None,
                   help="export the checkpoint after this round instead of the final model")
    return p


def _export(args: argparse.Namespace) -> int:
    from tff_pipeline.export.package import check_export_target, export_run

    check_export_target(args.run, args.out, overwrite=args.overwrite)
    runtime.import_training_stack()

    manifest = export_run(args.run, args.out, round_num=args.round_num, overwrite=args.overwrite)
    privacy = manifest.privacy
    spent = (f"epsilon {privacy['epsilon_rdp']:.3g} (RDP) / {privacy['epsilon_pld']:.3g} (PLD) at delta {privacy['delta']:g}"
             if privacy else "no DP")
    print(f"wrote {args.out}: {manifest.model_version}, {manifest.num_items} items x dim {manifest.dim}, "
          f"{manifest.model_bytes / 1024:.1f} KiB, round {manifest.round}, {spent}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, tuple[argparse.ArgumentParser, Any]]:
    """The TFF side's commands: name -> (its parser, its runner)."""
    simulate_parser = _simulate_parser(sub)
    return {
        "simulate": (simulate_parser, lambda args: _simulate(args, simulate_parser)),
        "export": (_export_parser(sub), _export),
        "worker": (_worker_parser(sub), _worker),
    }
