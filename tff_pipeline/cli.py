"""`fedrec` command line: the only place that parses flags into a SimulationConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

# Keep TensorFlow's C++ start-up chatter out of the terminal; must precede the first TF import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tff_pipeline.config import SimulationConfig, preset


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    defaults = SimulationConfig()
    p = sub.add_parser("simulate", help="federated training in a TFF simulation (one client per user)")
    p.add_argument("--dataset", default=defaults.dataset, choices=["synthetic", "ml-100k", "movielens-csv"])
    p.add_argument("--data-dir", default=None, help="folder with u.data (ml-100k) or ratings.csv (movielens-csv)")
    p.add_argument("--split", default=None, help="ml-100k: u1..u5, ua, ub, random, loo; others: random, loo")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--rounds", type=int, default=defaults.rounds)
    p.add_argument("--clients-per-round", type=int, default=defaults.clients_per_round,
                   help="cohort size (expected size under DP's Poisson sampling)")
    p.add_argument("--dim", type=int, default=None,
                   help="embedding dimension (default 16; 2 with --dp); 0 = biases only")
    p.add_argument("--user-l2", type=float, default=defaults.user_l2)
    p.add_argument("--item-l2", type=float, default=defaults.item_l2)
    p.add_argument("--item-bias-l2", type=float, default=defaults.item_bias_l2)
    p.add_argument("--local-steps", type=int, default=defaults.local_steps)
    p.add_argument("--local-lr", dest="local_learning_rate", type=float, default=defaults.local_learning_rate)
    p.add_argument("--server-optimizer", default=None, choices=["sgdm", "adam"],
                   help="default adam (FedAdam); sgdm (plain SGD, momentum 0) with --dp")
    p.add_argument("--server-lr", dest="server_learning_rate", type=float, default=None,
                   help="default 0.01 (adam); 0.6 with --dp")
    p.add_argument("--server-momentum", type=float, default=None, help="default 0.9; 0 with --dp")
    p.add_argument("--server-adam-epsilon", type=float, default=None, help="default 1e-2 (damps rare items)")
    p.add_argument("--dp", default=defaults.dp, choices=["none", "fixed", "adaptive"],
                   help="model aggregator: plain weighted mean, or DP with fixed / adaptive clipping")
    p.add_argument("--noise-multiplier", type=float, default=None)
    p.add_argument("--target-epsilon", type=float, default=None,
                   help="alone: calibrate the noise for --rounds; with --noise-multiplier: stop before exceeding it")
    p.add_argument("--delta", type=float, default=defaults.delta)
    p.add_argument("--clip", type=float, default=defaults.clip, help="L2 clip (initial clip when adaptive)")
    p.add_argument("--target-quantile", dest="target_unclipped_quantile", type=float,
                   default=defaults.target_unclipped_quantile)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--centralized-epochs", type=int, default=defaults.centralized_epochs)
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--out", type=Path, default=None, help="output folder (report, metrics.csv, checkpoints)")
    p.add_argument("--resume", type=Path, default=None, help="continue the interrupted run in this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Flags -> config; flags left unset take the preset of the run's privacy mode."""
    fields = {f.name for f in dataclasses.fields(SimulationConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    for key, value in preset(args.dp).items():
        values.setdefault(key, value)
    return SimulationConfig(**values)


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


def _simulate(args: argparse.Namespace) -> int:
    from tff_pipeline import runtime, simulation, reporting
    from tff_pipeline.data import load_dataset

    if args.resume is not None:
        out_dir = args.resume
        config_path = out_dir / simulation.CONFIG_FILE
        if not config_path.exists():
            raise SystemExit(f"fedrec: --resume {out_dir}: no {simulation.CONFIG_FILE} there")
        config = SimulationConfig.from_dict(json.loads(config_path.read_text()))
    else:
        out_dir = args.out
        config = _config_from_args(args)
    split = load_dataset(config.dataset, data_dir=config.data_dir, split=config.split, seed=config.seed)
    runtime.install()
    on_start, on_round, stop = _progress_callbacks(not args.quiet)
    try:
        result = simulation.run(
            config, split, out_dir=out_dir, resume=args.resume is not None,
            on_round=on_round, on_start=on_start,
        )
    finally:
        stop()
        runtime.shutdown()
    if out_dir is not None:
        reporting.write_outputs(out_dir, result.report, result.params, split.vocab)
        print(f"wrote {out_dir}/report.json, report.md, metrics.csv, final_model.npz, vocabulary.json")
    print(reporting.markdown(result.report))
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as a TFLite package (model.tflite + manifest.json)")
    p.add_argument("--run", type=Path, required=True, help="a `fedrec simulate --out` folder")
    p.add_argument("--out", type=Path, required=True, help="package folder to write (replaced atomically)")
    p.add_argument("--round", dest="round_num", type=int, default=None,
                   help="export the checkpoint after this round instead of the final model")


def _export(args: argparse.Namespace) -> int:
    from tff_pipeline.export.package import export_run

    manifest = export_run(args.run, args.out, round_num=args.round_num)
    privacy = manifest.privacy
    spent = (f"epsilon {privacy['epsilon_rdp']:.3g} (RDP) / {privacy['epsilon_pld']:.3g} (PLD) at delta {privacy['delta']:g}"
             if privacy else "no DP")
    print(f"wrote {args.out}: {manifest.model_version}, {manifest.num_items} items x dim {manifest.dim}, "
          f"{manifest.model_bytes / 1024:.1f} KiB, round {manifest.round}, {spent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub)
    _export_parser(sub)
    args = parser.parse_args(argv)
    try:
        return _export(args) if args.command == "export" else _simulate(args)
    except (ValueError, FileNotFoundError) as error:  # DataError, ExportError are ValueErrors
        print(f"fedrec: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
