"""`fedrec` command line: the only place that parses flags into a SimulationConfig.

Every error the user can fix (a bad flag value, a malformed data file, a folder that holds
another run, a corrupt checkpoint) is printed as one `fedrec: error: ...` line with exit status
2; an interruption prints how to continue, with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

# Keep TensorFlow's C++ start-up chatter out of the terminal; must precede the first TF import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from coordinator.errors import CoordinatorError  # noqa: E402
from protocol.messages import one_line  # noqa: E402
from tff_pipeline.config import ConfigError, SimulationConfig, training_config  # noqa: E402
from tff_pipeline.worker_address import WorkerAddress  # noqa: E402

PROG = "fedrec"
# Flags that do not change what is trained, so they may accompany --resume.
_RUN_FLAGS = {"out", "resume", "quiet", "overwrite", "command"}


def _simulate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="federated training in a TFF simulation (one client per user)")
    add_training_flags(p)
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


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a SimulationConfig (what is trained, and how), shared by `simulate` and `up`."""
    d = SimulationConfig()
    p.add_argument("--dataset", choices=["synthetic", "ml-100k", "movielens-csv"], help=f"default {d.dataset}")
    p.add_argument("--data-dir", help="folder with u.data (ml-100k) or ratings.csv (movielens-csv)")
    p.add_argument("--split", help="ml-100k: u1..u5, ua, ub, random, loo; others: random, loo")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--rounds", type=int,
                   help=f"default {d.rounds}; with --target-epsilon alone, planned for the budget")
    p.add_argument("--clients-per-round", type=int,
                   help=f"cohort size (expected size under DP's Poisson sampling); default {d.clients_per_round}; "
                        "with --target-epsilon alone, planned for the budget (a third of the users, at most 1000)")
    p.add_argument("--dim", type=int, help="embedding dimension (default 16; 8 with --dp); 0 = biases only")
    p.add_argument("--user-l2", type=float, help=f"default {d.user_l2}")
    p.add_argument("--user-embedding-l2", type=float,
                   help="ridge penalty of the user's rating embedding alone (default: --user-l2; 1e4 with --dp: "
                        "the rating head is biases only)")
    p.add_argument("--item-l2", type=float, help=f"default {d.item_l2}; 0 with --dp")
    p.add_argument("--item-bias-l2", type=float, help=f"default {d.item_bias_l2}")
    p.add_argument("--local-steps", type=int, help=f"default {d.local_steps}")
    p.add_argument("--local-lr", dest="local_learning_rate", type=float, help=f"default {d.local_learning_rate}")
    p.add_argument("--implicit-lr", dest="implicit_learning_rate", type=float,
                   help=f"step of the ranking head on the item table; 0 turns it off (default "
                        f"{d.implicit_learning_rate})")
    p.add_argument("--implicit-weight", dest="implicit_unobserved_weight", type=float,
                   help=f"weight of the items a user did not rate in the ranking loss (default "
                        f"{d.implicit_unobserved_weight})")
    p.add_argument("--implicit-l2", type=float, help=f"ridge penalty of the user's ranking vector (default {d.implicit_l2})")
    p.add_argument("--dp-ranking-scale", type=float,
                   help="with --dp: scale of the ranking head's step inside the clipped update, undone after "
                        "the noise (its share of the clip norm and of the budget; default 0.5 with --dp)")
    p.add_argument("--server-optimizer", choices=["sgdm", "adam"],
                   help="default adam (FedAdam); sgdm (plain SGD, momentum 0) with --dp")
    p.add_argument("--server-lr", dest="server_learning_rate", type=float, help="default 0.01 (adam); 0.6 with --dp")
    p.add_argument("--server-momentum", type=float, help="default 0.9; 0 with --dp")
    p.add_argument("--server-adam-epsilon", type=float, help="default 1e-2 (damps rare items)")
    p.add_argument("--dp", choices=["none", "fixed", "adaptive"],
                   help="model aggregator: plain weighted mean (default), or DP with fixed / adaptive clipping")
    p.add_argument("--noise-multiplier", type=float)
    p.add_argument("--target-epsilon", type=float,
                   help="alone: plan the cohort and rounds left unset and calibrate the noise for them; "
                        "with --noise-multiplier: stop before exceeding it")
    p.add_argument("--delta", type=float, help=f"default {d.delta}")
    p.add_argument("--clip", type=float, help=f"L2 clip (initial clip when adaptive); default {d.clip}")
    p.add_argument("--target-quantile", dest="target_unclipped_quantile", type=float,
                   help=f"default {d.target_unclipped_quantile}")
    p.add_argument("--eval-every", type=int, help=f"default {d.eval_every}")
    p.add_argument("--centralized-epochs", type=int, help=f"default {d.centralized_epochs}")
    p.add_argument("--no-baselines", dest="baselines", action="store_const", const=False)


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Flags -> config; flags left unset take the preset of the run's privacy mode."""
    return training_config(given_training_values(args))


def given_training_values(args: argparse.Namespace) -> dict[str, Any]:
    """The SimulationConfig fields the user gave as flags (None: not given)."""
    fields = {f.name for f in dataclasses.fields(SimulationConfig)}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def _given_training_flags(args: argparse.Namespace) -> list[str]:
    return sorted(given_training_values(args))


def plan_privacy_budget(config: SimulationConfig, split: Any, *, given_rounds: int | None,
                         given_cohort: int | None) -> SimulationConfig:
    """--target-epsilon alone: plan the cohort size and rounds the user left unset, print the plan,
    and record the planned values in the config (so config.json and --resume use them)."""
    import numpy as np

    from tff_pipeline.privacy import planner

    population = int(np.unique(split.train.users).size)
    config, plan = planner.plan_run(config, population, rounds=given_rounds, clients_per_round=given_cohort)
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


def import_training_stack() -> None:
    """Import TensorFlow and TFF once, dropping only their harmless CPU start-up lines."""
    from edge_client.native_log import TENSORFLOW_CPU_NOISE, filtered_stderr

    with filtered_stderr(TENSORFLOW_CPU_NOISE):
        import tensorflow  # noqa: F401
        import tensorflow_federated  # noqa: F401


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
        folder = RunFolder(args.resume)
        identity = folder.read_identity()
        config = identity.config
    else:
        config = config_from_args(args)
        folder = None if args.out is None else RunFolder(args.out)
        identity = None
        if folder is not None:
            folder.check_can_start(overwrite=args.overwrite)

    workers, worker_timeout = _check_workers(args)
    from tff_pipeline.data import load_dataset

    split = load_dataset(config.dataset, data_dir=config.data_dir, split=config.split, seed=config.seed)
    config.check_model_size(split.num_items)
    if identity is None:
        config = plan_privacy_budget(config, split, given_rounds=args.rounds, given_cohort=args.clients_per_round)
    import_training_stack()
    from tff_pipeline import reporting, runtime, simulation

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
    import_training_stack()

    manifest = export_run(args.run, args.out, round_num=args.round_num, overwrite=args.overwrite)
    privacy = manifest.privacy
    spent = (f"epsilon {privacy['epsilon_rdp']:.3g} (RDP) / {privacy['epsilon_pld']:.3g} (PLD) at delta {privacy['delta']:g}"
             if privacy else "no DP")
    print(f"wrote {args.out}: {manifest.model_version}, {manifest.num_items} items x dim {manifest.dim}, "
          f"{manifest.model_bytes / 1024:.1f} KiB, round {manifest.round}, {spent}")
    return 0


def flag_of(parser: argparse.ArgumentParser, dest: str) -> str:
    for action in parser._actions:  # noqa: SLF001 (argparse keeps no public map of dest -> flag)
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    simulate_parser = _simulate_parser(sub)
    _export_parser(sub)
    _worker_parser(sub)
    from coordinator import cli as coordinator_cli

    deployment_parsers = coordinator_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        if args.command in deployment_parsers:
            return coordinator_cli.run(args)
        if args.command == "worker":
            return _worker(args)
        return _export(args) if args.command == "export" else _simulate(args, simulate_parser)
    except ConfigError as error:
        command_parser = deployment_parsers.get(args.command, simulate_parser)
        flag = "--resume" if error.field == "resume" else flag_of(command_parser, error.field)
        print(f"{PROG}: error: {one_line(f'{flag}: {error.message}')}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # DataError, RunFolderError, ExportError, ... are ValueErrors
        print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except CoordinatorError as error:  # the coordinator's own refusals (state folder, address)
        print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
