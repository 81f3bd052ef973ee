"""`fedrec export`: a run folder -> a model package (`model.tflite` + `manifest.json`).

Every piece read from the run folder must carry the run id of its config.json, so a package can
never pair one run's weights with another run's ε. The model file bakes in the digest of the
manifest's content (`protocol.manifest`). The package is written (`protocol.package.write_package`)
only after the model has converted and every signature has run in LiteRT (`LiteModel.self_test`,
the device's own check), so a failed export leaves nothing where a device could pick it up; and
it is never written over anything but an earlier package (`--overwrite`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_client.litert_model import LiteModel
from protocol.manifest import (
    HYPERPARAMETER_KEYS,
    MODEL_FILE,
    SIGNATURES,
    Manifest,
    ManifestError,
    provisional_manifest,
    sha256_bytes,
)
from protocol.package import check_package_target, write_package
from tff_pipeline.errors import PipelineError
from tff_pipeline.privacy import accounting
from tff_pipeline.run_folder import (
    FINAL_MODEL_FILE,
    REPORT_FILE,
    VOCABULARY_FILE,
    RunFolder,
    RunFolderError,
    RunIdentity,
    read_json,
)

if TYPE_CHECKING:  # TensorFlow is imported only once an export really runs (the CLI checks --out first)
    from tff_pipeline import model


class ExportError(PipelineError, ValueError):
    """The run cannot be exported; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """The pieces of a finished run folder that an export reads, checked to be one run's."""

    folder: RunFolder
    identity: RunIdentity
    report: dict[str, Any]
    vocabulary: dict[str, Any]

    @property
    def final_round(self) -> int:
        return int(self.report["privacy"]["rounds"])


def read_finished_run(run_dir: Path) -> FinishedRun:
    folder = RunFolder(run_dir)
    try:
        identity = folder.read_identity()
        if not (folder / REPORT_FILE).exists():
            raise ExportError(f"{folder / REPORT_FILE}: missing; the run has not finished "
                              f"(continue it with `fedrec simulate --resume {run_dir}`)")
        report = read_json(folder / REPORT_FILE, what="report")
        vocabulary = read_json(folder / VOCABULARY_FILE, what="vocabulary")
        for name, piece in ((REPORT_FILE, report), (VOCABULARY_FILE, vocabulary)):
            if not isinstance(piece, dict):
                raise ExportError(f"{folder / name}: not a JSON object")
            folder.require_same_run(identity, name, piece.get("run_id"))
    except RunFolderError as error:
        raise ExportError(str(error)) from None
    try:
        int(report["privacy"]["rounds"])
        if not isinstance(vocabulary["item_raw_ids"], list):
            raise TypeError("item_raw_ids")
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"{folder.path}: report.json or vocabulary.json lacks required fields") from None
    return FinishedRun(folder, identity, report, vocabulary)


def load_run_params(run: FinishedRun, round_num: int | None = None) -> tuple[model.GlobalParams, int]:
    """Global parameters of the run's final model, or of the checkpoint after `round_num`."""
    from tff_pipeline import checkpoint, model

    folder, identity = run.folder, run.identity
    if round_num is None or round_num == run.final_round:
        path = folder / FINAL_MODEL_FILE
        try:
            with np.load(path, allow_pickle=False) as arrays:
                found = str(arrays["run_id"]) if "run_id" in arrays.files else None
                params = tuple(arrays[k] for k in ("item_embeddings", "item_bias", "global_mean"))
        except FileNotFoundError:
            raise ExportError(f"{path}: missing (is {folder.path} a finished `fedrec simulate --out` folder?)") from None
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise ExportError(f"{path}: truncated or corrupt ({type(error).__name__})") from None
        _same_run(folder, identity, FINAL_MODEL_FILE, found)
        return model.GlobalParams(*params), run.final_round
    if not 1 <= round_num <= run.final_round:
        raise ExportError(f"--round {round_num}: this run has rounds 1..{run.final_round}")
    path = folder.checkpoints / checkpoint.round_file(round_num)
    if not path.exists():
        kept = sorted(int(p.stem.split("_")[1]) for p in folder.checkpoints.glob("round_*.npz"))
        raise ExportError(f"{path}: no checkpoint for round {round_num}; this run keeps rounds {kept} "
                          f"and the final {run.final_round}")
    try:
        flat, found = checkpoint.read_arrays(path)
    except RunFolderError as error:
        raise ExportError(str(error)) from None
    _same_run(folder, identity, str(path.relative_to(folder.path)), found)
    # The state is a LearningAlgorithmState; its first leaves are the global model weights.
    return model.GlobalParams(*flat[:3]), round_num


def _same_run(folder: RunFolder, identity: RunIdentity, name: str, found: str | None) -> None:
    try:
        folder.require_same_run(identity, name, found)
    except RunFolderError as error:
        raise ExportError(str(error)) from None


def build_manifest_fields(run: FinishedRun, params: model.GlobalParams, round_num: int) -> tuple[dict, model.ModelConfig]:
    """Everything the manifest says except the model file's hash, size and version."""
    config, report, vocabulary = run.identity.config, run.report, run.vocabulary
    num_items, dim = np.shape(params.item_embeddings)
    if np.shape(params.item_bias) != (num_items,) or np.shape(params.global_mean) != ():
        raise ExportError(f"{run.folder.path}: parameter shapes {[np.shape(p) for p in params]} are not a model's")
    if not all(np.all(np.isfinite(p)) for p in params):
        raise ExportError(f"{run.folder.path}: the model holds non-finite parameters; it cannot be exported")
    if len(vocabulary["item_raw_ids"]) != num_items:
        raise ExportError(f"{run.folder / VOCABULARY_FILE}: {len(vocabulary['item_raw_ids'])} items, "
                          f"the model has {num_items}")
    model_config = config.model_config(int(num_items))
    rating_min, rating_max = report["data"]["rating_scale"]
    privacy = None
    if config.private:
        plan = report["privacy"]
        spent = accounting.privacy_spent(
            noise_multiplier=plan["noise_multiplier"], sampling_rate=plan["sampling_rate"],
            rounds=round_num, delta=config.delta,
        )
        privacy = {"epsilon_rdp": spent.epsilon_rdp, "epsilon_pld": spent.epsilon_pld, "delta": config.delta,
                   "noise_multiplier": plan["noise_multiplier"], "rounds": round_num,
                   "mechanism": f"user-level DP-FedAvg, {config.dp} clipping, Poisson sampling rate "
                                f"{plan['sampling_rate']:.4g}"}
    return dict(
        round=round_num, dataset=report["data"]["name"], num_items=int(num_items), dim=int(dim),
        item_ids=tuple(int(x) for x in vocabulary["item_raw_ids"]),
        item_titles=None if vocabulary.get("item_titles") is None else tuple(vocabulary["item_titles"]),
        rating_min=float(rating_min), rating_max=float(rating_max),
        hyperparameters={k: getattr(model_config, k) for k in HYPERPARAMETER_KEYS},
        privacy=privacy, signatures=SIGNATURES,
    ), model_config


def export_run(run_dir: Path, out_dir: Path, *, round_num: int | None = None, overwrite: bool = False) -> Manifest:
    """Convert the run's model (final, or after `round_num`) and write the package to `out_dir`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export_target(run_dir, out_dir, overwrite=overwrite)
    run = read_finished_run(run_dir)
    params, round_num = load_run_params(run, round_num)
    fields, model_config = build_manifest_fields(run, params, round_num)
    if model_config.dim < 1:
        raise ExportError(f"{run_dir}: dim={model_config.dim}; the TFLite export needs dim >= 1")
    return export_params(params, model_config, out_dir, fields, overwrite=overwrite)


def check_export_target(run_dir: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Refuse, before any conversion, an --out that export must not write: inside the run folder,
    or anything but an earlier package (and that only with --overwrite)."""
    run_real, out_real = Path(os.path.realpath(run_dir)), Path(os.path.realpath(out_dir))
    if out_real == run_real or run_real in out_real.parents:
        raise ExportError(f"--out {out_dir}: inside the run folder {run_dir}; choose a folder outside it")
    try:
        check_package_target(out_dir, replace=overwrite)
    except ManifestError as error:
        raise ExportError(f"--out {error}; export never replaces other files or folders") from None


def export_params(
    params: model.GlobalParams, model_config: model.ModelConfig, out_dir: Path, fields: dict, *,
    overwrite: bool = False,
) -> Manifest:
    """Convert `params` and write the package; `fields` are the manifest's descriptive fields
    (round, dataset, num_items, dim, item_ids, item_titles, rating_min/max, hyperparameters,
    privacy, signatures)."""
    from tff_pipeline.export import tflite
    from tff_pipeline.export.ondevice_model import OnDeviceModel

    try:
        digest = provisional_manifest(fields).content_digest()
    except ManifestError as error:
        raise ExportError(f"the manifest would be invalid: {error}") from None
    model_bytes = tflite.convert(OnDeviceModel(params, model_config, manifest_digest=digest))
    file_digest = sha256_bytes(model_bytes)
    dataset_slug = re.sub(r"[^A-Za-z0-9._-]+", "-", fields["dataset"]).strip("-.")[:80] or "model"
    manifest = Manifest(
        model_version=f"{dataset_slug}-r{fields['round']}-{file_digest[:8]}", model_sha256=file_digest,
        model_bytes=len(model_bytes),
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **fields,
    )
    # Run every signature in LiteRT as a device would, before anything is written.
    LiteModel.from_bytes(model_bytes, manifest, model_path=Path(out_dir) / MODEL_FILE).self_test()
    try:
        write_package(Path(out_dir), model_bytes, manifest, replace=overwrite)
    except ManifestError as error:
        raise ExportError(str(error)) from None
    return manifest
