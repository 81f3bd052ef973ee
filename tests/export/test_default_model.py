"""The model package shipped in tflite_models/ (so the edge client works out of the box)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURES, Manifest
from protocol.package import read_verified_model

DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "tflite_models" / "synthetic"


def test_the_shipped_package_verifies_and_every_signature_runs():
    from ai_edge_litert.interpreter import Interpreter

    manifest = Manifest.read(DEFAULT_PACKAGE / MANIFEST_FILE)
    model_bytes = read_verified_model(manifest, DEFAULT_PACKAGE / MODEL_FILE)
    assert manifest.dataset.startswith("synthetic") and manifest.privacy is None
    assert manifest.item_titles is not None and len(manifest.item_titles) == manifest.num_items
    interpreter = Interpreter(model_content=model_bytes)
    assert set(SIGNATURES) <= set(interpreter.get_signature_list())
    weights = interpreter.get_signature_runner("get_weights")()
    assert weights["item_embeddings"].shape == (manifest.num_items, manifest.dim)
    top = interpreter.get_signature_runner("topk")(k=np.int32(5))
    assert len(set(top["item_ids"].tolist())) == 5


@pytest.mark.slow
def test_the_shipped_package_is_what_the_default_run_exports(tmp_path):
    """Rebuild it as the README says (default `fedrec simulate`, then `fedrec export`)."""
    run, package = tmp_path / "run", tmp_path / "package"
    for args in (["simulate", "--no-baselines", "--quiet", "--out", str(run)],
                 ["export", "--run", str(run), "--out", str(package)]):
        done = subprocess.run([sys.executable, "-m", "fedrec_cli", *args], capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-3000:]
    shipped = Manifest.read(DEFAULT_PACKAGE / MANIFEST_FILE)
    rebuilt = Manifest.read(package / MANIFEST_FILE)
    for field in ("dataset", "round", "num_items", "dim", "item_ids", "item_titles", "hyperparameters"):
        assert getattr(rebuilt, field) == getattr(shipped, field), field
    from ai_edge_litert.interpreter import Interpreter

    def weights(folder: Path) -> dict:
        return Interpreter(model_path=str(folder / MODEL_FILE)).get_signature_runner("get_weights")()

    # Training is seeded; float summation order in TFF's runtime may differ between runs.
    for key, value in weights(DEFAULT_PACKAGE).items():
        np.testing.assert_allclose(weights(package)[key], value, rtol=1e-3, atol=1e-4, err_msg=key)
    assert json.loads((run / "report.json").read_text())["privacy"]["rounds"] == shipped.round
