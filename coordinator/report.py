"""The report of a `fedrec up` deployment: the keys of `fedrec simulate`'s, plus the deployment's own.

The model is the coordinator's last checkpoint; it is evaluated by the harness (which holds the
held-out ratings the devices never uploaded) exactly as `fedrec simulate` evaluates its model.
ε is the coordinator's ledger of the DP events it applied, composed by the function that composes
the simulation's events (`simulation.assemble_report`), not a recomputation from the plan.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from coordinator.state_store import StateError, StateStore
from coordinator.up import deployment_figures
from tff_pipeline.privacy.ledger import PrivacyLedger
from tff_pipeline.privacy.planner import PrivacyPlan


@dataclasses.dataclass(frozen=True)
class DeploymentResult:
    report: dict[str, Any]
    params: Any  # tff_pipeline.model.GlobalParams


def deployment_report(*, config: Any, split: Any, identity: Any, state_dir: Path, shard_dirs: list[Path],
                      final_status: Any, wall_seconds: float) -> DeploymentResult:
    from tff_pipeline import model, personalized_eval, simulation

    store = StateStore(state_dir)
    try:
        checkpoint = store.latest_checkpoint()
        if checkpoint is None:
            raise StateError(f"{state_dir}: the coordinator saved no model")
        summaries = store.checkpoint_summaries()
        setting = json.loads(store.get_meta("privacy_setting") or "{}")
        events = [entry.event for entry in PrivacyLedger(store.connection).events()]
    finally:
        store.close()
    params = model.GlobalParams(*checkpoint.arrays["params"])
    model_config = config.model_config(split.num_items)
    final = personalized_eval.evaluate_global_model(params, split, model_config)
    plan = PrivacyPlan(
        noise_multiplier=float(setting.get("noise_multiplier", 0.0)),
        sampling_rate=float(setting.get("sampling_rate", 1.0)), rounds=int(setting.get("rounds", config.rounds)),
        how="deployment: ε from the coordinator's ledger of applied DP events" if config.private else "non-private")
    history = [{"round": version, "cohort": summary.get("reporters"), "train_seconds": None,
                "clip": summary.get("clip"), "epsilon_rdp": summary.get("epsilon")}
               for version, summary in summaries if version > 0]
    population = round(float(setting.get("expected_clients", 0)) / max(float(setting.get("sampling_rate", 1.0)), 1e-12))
    figures = deployment_figures(state_dir, final_status, shard_dirs)
    round_seconds = figures.pop("round_seconds", [])
    report = simulation.assemble_report(config, split, plan, final, history, float(sum(round_seconds)), population,
                                        model_config, events=events)
    report["privacy"]["rounds"] = checkpoint.params_version
    if config.private:
        report["privacy"]["sampling"] = "poisson over the devices checked in (selection window)"
    report["deployment"] = figures
    report["timing"]["wall_seconds"] = wall_seconds  # start-up (export, device installs) included
    report["run_id"] = identity.run_id
    return DeploymentResult(report, params)
