"""Model packages the coordinator publishes: the global parameters exported for devices.

A package is the same TFLite export as `fedrec export` (`tff_pipeline.export.package`), with the
run's hyperparameters baked into its `client_update`, so every package of a run computes the
same local work and a device may train with any of them. The coordinator exports version 0
before the first round (devices need a model to take part) and then every `export_every`
completed rounds; devices adopt the latest one when they check in.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from coordinator.catalog import Catalog
from coordinator.state_store import PACKAGES_DIR, StateStore
from protocol.manifest import HYPERPARAMETER_KEYS, SIGNATURES, Manifest


def package_folder(store: StateStore, params_version: int) -> Path:
    return store.state_dir / PACKAGES_DIR / f"params-{params_version:06d}"


def publish(store: StateStore, *, params: Any, model_config: Any, catalog: Catalog, params_version: int,
            privacy: dict[str, Any] | None) -> Manifest:
    """Export `params` (after `params_version` rounds) and index the package; returns its manifest."""
    from tff_pipeline import model
    from tff_pipeline.export.package import export_params

    folder = package_folder(store, params_version)
    indexed = {path for _, _, path in store.packages()}
    if folder.exists() and folder not in indexed:
        shutil.rmtree(folder)  # an export a kill interrupted before it was indexed: ours, unused
    fields = dict(
        round=params_version, dataset=catalog.dataset, num_items=catalog.num_items, dim=model_config.dim,
        item_ids=catalog.item_ids, item_titles=catalog.item_titles,
        rating_min=catalog.rating_min, rating_max=catalog.rating_max,
        hyperparameters={key: getattr(model_config, key) for key in HYPERPARAMETER_KEYS},
        privacy=privacy, signatures=SIGNATURES,
    )
    manifest = export_params(model.GlobalParams(*params), model_config, folder, fields)
    store.add_package(manifest.model_version, params_version=params_version, folder=folder)
    return manifest
