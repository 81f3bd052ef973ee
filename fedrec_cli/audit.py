"""`fedrec audit`: the privacy effect measured, not only bounded (issue 18).

The same training flags as `fedrec simulate`, plus canaries: a TFF simulation in which canary
clients take part and a fifth of the users do not (`tff_pipeline.membership`), then
- the one-shot empirical ε (`tff_pipeline.audit`) beside the accountant's;
- user-level membership inference on the released model (AUC, advantage);
- with `--captures`, the rated-item AUC of each view the real coordinator's wire gave
  (`fedrec up --capture` folders, `coordinator.round_capture`).
Writes `--out DIR`: audit.json, report.md, canaries.png. Exit status 3 when the audit is flagged
(the run leaked more than its accountant's ε allows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedrec_cli.training_flags import add_training_flags, config_from_args
from tff_pipeline import runtime
from tff_pipeline.config import ConfigError

EXIT_FLAGGED = 3


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, tuple[argparse.ArgumentParser, Any]]:
    p = sub.add_parser("audit", help="measure the privacy effect: canaries' empirical ε beside the accountant's")
    add_training_flags(p)
    p.add_argument("--canaries", type=int, default=50,
                   help="canary clients inserted (as many more are drawn and never inserted; each adds 20 "
                        "never-rated items they live on; default 50)")
    p.add_argument("--captures", type=Path, nargs="+", default=[], metavar="DIR",
                   help="`fedrec up --capture` folders: their rated-item AUCs (per --dp mode) join audit.json")
    p.add_argument("--out", type=Path, required=True, help="output folder, new or empty: audit.json, report.md, PNG")
    p.add_argument("--break-noise", action="store_true", help=argparse.SUPPRESS)  # the audit's own check: noise off
    p.add_argument("--quiet", action="store_true")
    return {"audit": (p, _audit)}


def _audit(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise ConfigError("out", f"{out} is not an empty folder; an audit never overwrites what is there")
    if not 2 <= args.canaries <= 100_000:
        raise ConfigError("canaries", f"must be 2 to 100000, got {args.canaries}")
    config = config_from_args(args)
    rated_items = _rated_item_views(args.captures)  # read first: a bad folder fails before training
    if args.break_noise and not config.private:
        raise ConfigError("break_noise", "needs --dp: it turns a private run's noise off behind its plan")
    import numpy as np

    from tff_pipeline import membership
    from tff_pipeline.audit import with_canary_items
    from tff_pipeline.data import load_dataset
    from tff_pipeline.privacy import planner
    from tff_pipeline.privacy.distributed import model_values

    original = load_dataset(config.dataset, data_dir=config.data_dir, split=config.split, seed=config.seed,
                            synthetic_users=config.synthetic_users)
    split = with_canary_items(original, args.canaries)
    config.check_model_size(split.num_items)
    members, held_out = membership.hold_out_users(split, seed=config.seed)  # the non-members never train
    population = int(np.unique(members.train.users).size) + args.canaries  # canaries are clients too
    shape = planner.distributed_shape(config, model_values(split.num_items, config.dim))
    config, plan = planner.plan_run(config, population, rounds=args.rounds, clients_per_round=args.clients_per_round,
                                    distributed=shape)
    if plan is not None and not args.quiet:
        print(plan.describe())
    runtime.import_training_stack()
    from tff_pipeline import audit, model, personalized_eval, plots, simulation
    from tff_pipeline.privacy import accounting
    from tff_pipeline.privacy import distributed as ddp_accounting

    model_config = config.model_config(split.num_items)
    canaries = audit.draw_canaries(count=args.canaries, num_items=split.num_items, first_item=original.num_items,
                                   dim=config.dim,
                                   ranking_head=model_config.implicit, norm=config.clip, seed=config.seed)
    runtime.install()
    result = simulation.run(config, members, canaries=list(canaries.uploads),
                            applied_noise_multiplier=0.0 if args.break_noise else None)
    privacy_plan = planner.plan_privacy(config, population, distributed=shape)
    claimed = None
    if config.private:  # what the plan claims (a broken run's own events would show its missing noise)
        q, rounds = privacy_plan.sampling_rate, privacy_plan.rounds
        claimed = (accounting.epsilon_rdp(privacy_plan.noise_multiplier, q, rounds, config.delta)
                   if privacy_plan.distributed is None else
                   ddp_accounting.epsilon(privacy_plan.distributed, sampling_rate=q, rounds=rounds, delta=config.delta))
    initial = model.initial_global_params(model_config, seed=config.seed)
    figures = audit.canary_audit(canaries, [t.numpy() for t in initial], result.params, claimed_epsilon=claimed,
                                 delta=config.delta, seed=config.seed)
    losses = membership.per_user_loss(personalized_eval.fitted_score_fn(result.params, split, model_config), split)
    figures["membership"] = membership.loss_threshold_attack(losses, held_out, epsilon=claimed, delta=config.delta)
    figures["rated_item_auc"] = {name: view["auc"] for name, view in rated_items.items()}
    figures["rated_item_views"] = rated_items
    figures.update(setting=_setting(config, privacy_plan, args), final=result.report["final"],
                   noise_broken_on_purpose=bool(args.break_noise))
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(figures, indent=2, allow_nan=True) + "\n")
    (out / "canaries.png").write_bytes(plots.canary_cosines(
        figures["cosines"]["inserted"], figures["cosines"]["held_out"], epsilon=claimed,
        estimate=figures["epsilon_estimate"]))
    (out / "report.md").write_text(_markdown(figures))
    print(_markdown(figures))
    return EXIT_FLAGGED if figures["flagged"] else 0


def _rated_item_views(folders: list[Path]) -> dict[str, dict[str, Any]]:
    from coordinator.round_capture import rated_item_settings

    views: dict[str, dict[str, Any]] = {}
    for folder in folders:
        try:
            found = rated_item_settings(folder)
        except (OSError, ValueError) as error:
            raise ConfigError("captures", str(error)) from None
        repeated = sorted(set(found) & set(views))
        if repeated:
            raise ConfigError("captures", f"two capture folders measure {', '.join(repeated)}: give one per --dp mode")
        views.update(found)
    return views


def _setting(config: Any, plan: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {"dp": config.dp, "noise_multiplier": plan.noise_multiplier if config.private else None,
            "sampling_rate": plan.sampling_rate, "rounds": plan.rounds, "clip": config.clip,
            "dataset": config.dataset, "canaries": args.canaries}


def _markdown(figures: dict[str, Any]) -> str:
    setting, canaries = figures["setting"], figures["canaries"]
    low, high = figures["epsilon_estimate_interval"]
    claimed = "none (no DP)" if figures["epsilon"] is None else f"{figures['epsilon']:.3g}"
    verdict = ("**FLAGGED**: the canaries show more leakage than the accountant's ε allows"
               if figures["flagged"] else "not flagged")
    return "\n".join([
        "# Privacy audit (one-shot canaries, Andrew et al. 2024)",
        "",
        f"- setting: --dp {setting['dp']}, z {setting['noise_multiplier']}, q {setting['sampling_rate']:.3g}, "
        f"{setting['rounds']} rounds, clip {setting['clip']}, {setting['canaries']} canaries inserted"
        + (" (noise turned off on purpose)" if figures["noise_broken_on_purpose"] else ""),
        f"- accountant's ε: {claimed}; empirical ε estimate: {figures['epsilon_estimate']:.3g} "
        f"(95% bootstrap interval {low:.3g}–{high:.3g}) at δ {figures['delta']:g}",
        f"- cosine with the model's change: inserted {canaries['cosine_inserted_mean']:.4f}, never inserted "
        f"{canaries['cosine_held_out_mean']:.4f} ± {canaries['cosine_held_out_std']:.4f}",
        f"- verdict: {verdict}",
        *_membership_lines(figures["membership"]),
        *_rated_item_lines(figures["rated_item_views"]),
        "",
        "![canary cosines](canaries.png)",
        "",
    ])


def _membership_lines(found: dict[str, Any]) -> list[str]:
    return [f"- membership inference ({found['attack']}; {found['members']} members, {found['non_members']} "
            f"held-out users): AUC {found['auc']:.3f} ± {found['auc_standard_error']:.3f}, "
            f"advantage {found['advantage']:.3f} (DP allows at most {found['advantage_bound']:.3f})"]


def _rated_item_lines(views: dict[str, dict[str, Any]]) -> list[str]:
    if not views:
        return ["- rated-item inference: no `--captures` given"]
    lines = ["", "| what the server sees | rated-item AUC | uploads summed | rounds |", "|---|---|---|---|"]
    for name, view in views.items():
        summed = view["uploads_summed"]
        shown = "?" if summed is None else str(summed) if summed == 1 else f"{summed:.1f}"
        lines.append(f"| {name} | {view['auc']:.3f} | {shown} | {view['rounds']} |")
    return lines
