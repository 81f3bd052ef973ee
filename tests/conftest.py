"""Shared test fixtures: the TFF runtime is installed once and its workers stopped at the end."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tff_runtime():
    """Install the tracked TFF context; stop its worker_binary when the session ends."""
    from tff_pipeline import runtime

    runtime.install()
    yield runtime
    runtime.shutdown()
    assert runtime.worker_pids() == []


@pytest.fixture(scope="session")
def make_package(tmp_path_factory):
    """Factory of small real model packages (TFLite conversion of seeded random parameters).

    `make_package(num_items=30, dim=4, seed=0, round_num=1, titles=True)` returns the package
    folder; packages are built once per argument set and must be treated as read-only (copy one
    before corrupting it).
    """
    built: dict[tuple, object] = {}

    def build(*, num_items: int = 30, dim: int = 4, seed: int = 0, round_num: int = 1, titles: bool = True):
        key = (num_items, dim, seed, round_num, titles)
        if key not in built:
            import numpy as np

            from protocol.manifest import HYPERPARAMETER_KEYS, SIGNATURES
            from tff_pipeline import model
            from tff_pipeline.export.package import export_params

            rng = np.random.default_rng(seed)
            config = model.ModelConfig(num_items=num_items, dim=dim, local_steps=3, implicit_learning_rate=1.0)
            params = model.GlobalParams(
                rng.normal(0, 0.5, (num_items, dim)).astype(np.float32),
                rng.normal(0, 0.3, num_items).astype(np.float32),
                np.float32(3.5),
            )
            fields = dict(
                round=round_num, dataset="tiny", num_items=num_items, dim=dim,
                item_ids=tuple(1000 + 7 * k for k in range(num_items)),
                item_titles=tuple(f"Item {1000 + 7 * k}" for k in range(num_items)) if titles else None,
                rating_min=1.0, rating_max=5.0,
                hyperparameters={k: getattr(config, k) for k in HYPERPARAMETER_KEYS},
                privacy=None, signatures=SIGNATURES,
            )
            out = tmp_path_factory.mktemp("package") / f"tiny-d{dim}-s{seed}-r{round_num}"
            export_params(params, config, out, fields)
            built[key] = out
        return built[key]

    return build


@pytest.fixture(scope="session")
def png_size():
    """`png_size(path)` -> (height, width) of a PNG file, decoded (a truncated or empty file fails)."""
    from pathlib import Path

    def size(path: Path) -> tuple[int, int]:
        import matplotlib.image

        assert Path(path).read_bytes().startswith(b"\x89PNG")
        return matplotlib.image.imread(path).shape[:2]

    return size
