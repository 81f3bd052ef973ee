"""`fedrec export`: a run folder -> a model package (`model.tflite` + `manifest.json`).

The package is written (`edge_client.manifest.write_package`) only after the model has converted
and every signature has run in LiteRT (`LiteModel.self_test`, the device's own check), so a
failed export never leaves a half-written package where a device could pick it up.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import numpy as np

from edge_client.litert_model import LiteModel
from edge_client.manifest import (
    HYPERPARAMETER_KEYS,
    MODEL_FILE,
    SIGNATURES,
    Manifest,
    sha256_bytes,
    write_package,
)
from tff_pipeline import model
from tff_pipeline.config import SimulationConfig
from tff_pipeline.privacy import accounting

REPORT_FILE = "report.json"
FINAL_MODEL_FILE = "final_model.npz"
VOCABULARY_FILE = "vocabulary.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class ExportError(ValueError):
    """The run cannot be exported; the message names the file and what is wrong."""


def load_run_params(run_dir: Path, round_num: int | None = None) -> tuple[model.GlobalParams, int]:
    """Global parameters of the run's final model, or of the checkpoint after `round_num`."""
    report = _read_json(run_dir / REPORT_FILE)
    final_round = int(report["privacy"]["rounds"])
    if round_num is None or round_num == final_round:
        path = run_dir / FINAL_MODEL_FILE
        if not path.exists():
            raise ExportError(f"{path}: missing (is {run_dir} a finished `fedrec simulate --out` folder?)")
        with np.load(path) as arrays:
            arrays_out = tuple(arrays[k] for k in ("item_embeddings", "item_bias", "global_mean"))
        return model.GlobalParams(*arrays_out), final_round
    path = run_dir / CHECKPOINT_DIR / f"round_{round_num:05d}.npz"
    if not path.exists():
        kept = sorted(int(p.stem.split("_")[1]) for p in (run_dir / CHECKPOINT_DIR).glob("round_*.npz"))
        raise ExportError(f"{path}: no checkpoint for round {round_num}; this run keeps rounds {kept} and the final {final_round}")
    with np.load(path) as arrays:
        # The state is a LearningAlgorithmState; its first leaves are the global model weights.
        arrays_out = tuple(arrays[f"arr_{k}"] for k in range(3))
    return model.GlobalParams(*arrays_out), round_num


def build_manifest_fields(
    run_dir: Path, params: model.GlobalParams, round_num: int
) -> tuple[dict, model.ModelConfig]:
    """Everything the manifest says except the model file's hash, size and version."""
    config = SimulationConfig.from_dict(_read_json(run_dir / CONFIG_FILE))
    report = _read_json(run_dir / REPORT_FILE)
    vocabulary = _read_json(run_dir / VOCABULARY_FILE)
    num_items, dim = np.shape(params.item_embeddings)
    if np.shape(params.item_bias) != (num_items,) or np.shape(params.global_mean) != ():
        raise ExportError(f"{run_dir}: parameter shapes {[np.shape(p) for p in params]} are not a model's")
    if len(vocabulary["item_raw_ids"]) != num_items:
        raise ExportError(f"{run_dir / VOCABULARY_FILE}: {len(vocabulary['item_raw_ids'])} items, the model has {num_items}")
    model_config = config.model_config(int(num_items))
    rating_min, rating_max = report["data"]["rating_scale"]
    privacy = None
    if config.private:
        plan = report["privacy"]
        spent = accounting.privacy_spent(
            noise_multiplier=plan["noise_multiplier"], sampling_rate=plan["sampling_rate"],
            rounds=round_num, delta=plan["delta"],
        )
        privacy = {"epsilon_rdp": spent.epsilon_rdp, "epsilon_pld": spent.epsilon_pld, "delta": plan["delta"],
                   "noise_multiplier": plan["noise_multiplier"], "rounds": round_num,
                   "mechanism": f"user-level DP-FedAvg, {config.dp} clipping, Poisson sampling rate {plan['sampling_rate']:.4g}"}
    return dict(
        round=round_num, dataset=report["data"]["name"], num_items=int(num_items), dim=int(dim),
        item_ids=tuple(int(x) for x in vocabulary["item_raw_ids"]),
        item_titles=None if vocabulary.get("item_titles") is None else tuple(vocabulary["item_titles"]),
        rating_min=float(rating_min), rating_max=float(rating_max),
        hyperparameters={k: getattr(model_config, k) for k in HYPERPARAMETER_KEYS},
        privacy=privacy, signatures=SIGNATURES,
    ), model_config


def export_run(run_dir: Path, out_dir: Path, *, round_num: int | None = None) -> Manifest:
    """Convert the run's model (final, or after `round_num`) and write the package to `out_dir`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    params, round_num = load_run_params(run_dir, round_num)
    fields, model_config = build_manifest_fields(run_dir, params, round_num)
    if model_config.dim < 1:
        raise ExportError(f"{run_dir}: dim={model_config.dim}; the TFLite export needs dim >= 1")
    return export_params(params, model_config, out_dir, fields)


def export_params(
    params: model.GlobalParams, model_config: model.ModelConfig, out_dir: Path, fields: dict
) -> Manifest:
    """Convert `params` and write the package; `fields` are the manifest's descriptive fields
    (round, dataset, num_items, dim, item_ids, item_titles, rating_min/max, hyperparameters,
    privacy, signatures)."""
    from tff_pipeline.export import tflite
    from tff_pipeline.export.ondevice_model import OnDeviceModel

    model_bytes = tflite.convert(OnDeviceModel(params, model_config))
    digest = sha256_bytes(model_bytes)
    dataset_slug = re.sub(r"[^A-Za-z0-9._-]+", "-", fields["dataset"]).strip("-.") or "model"
    manifest = Manifest(
        model_version=f"{dataset_slug}-r{fields['round']}-{digest[:8]}", model_sha256=digest,
        model_bytes=len(model_bytes),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **fields,
    )
    # Run every signature in LiteRT as a device would, before anything is written.
    LiteModel.from_bytes(model_bytes, manifest, model_path=Path(out_dir) / MODEL_FILE).self_test()
    write_package(Path(out_dir), model_bytes, manifest)
    return manifest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing (is {path.parent} a finished `fedrec simulate --out` folder?)") from None
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
