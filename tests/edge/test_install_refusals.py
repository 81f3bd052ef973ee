"""Refused installs: damaged or mismatched packages never replace the active model or touch the data."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_client.device import Device, DeviceError
from protocol.manifest import MANIFEST_FILE, MODEL_FILE


def _tamper(source: Path, out: Path, *, model: Callable[[bytes], bytes] | None = None,
            manifest: Callable[[dict], None] | None = None, consistent: bool = False) -> Path:
    """A copy of `source` with its model bytes and/or manifest changed; `consistent` re-hashes."""
    shutil.copytree(source, out)
    data = (out / MODEL_FILE).read_bytes()
    if model is not None:
        data = model(data)
        (out / MODEL_FILE).write_bytes(data)
    fields = json.loads((out / MANIFEST_FILE).read_text())
    if consistent:
        fields["model_sha256"] = hashlib.sha256(data).hexdigest()
        fields["model_bytes"] = len(data)
    if manifest is not None:
        manifest(fields)
    (out / MANIFEST_FILE).write_text(json.dumps(fields))
    return out


def _flip_middle(data: bytes) -> bytes:
    flipped = bytearray(data)
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        flipped[offset] ^= 0xFF
    return bytes(flipped)


def _flip_header(data: bytes) -> bytes:
    flipped = bytearray(data)
    for offset in range(16):
        flipped[offset] ^= 0xFF
    return bytes(flipped)


def _fewer_items(fields: dict) -> None:
    fields["num_items"] = 29
    fields["item_ids"] = fields["item_ids"][:29]
    fields["item_titles"] = fields["item_titles"][:29]


CASES = {
    "flipped bytes": ({"model": _flip_middle}, r"model\.tflite: model sha256 .* does not match"),
    "flipped header, re-hashed": ({"model": _flip_header, "consistent": True},
                                  r"model\.tflite: not a usable TFLite model"),
    "truncated": ({"model": lambda d: d[: len(d) // 2]}, r"model\.tflite: model file has \d+ bytes, the manifest says"),
    "truncated, re-hashed": ({"model": lambda d: d[: len(d) // 2], "consistent": True},
                             r"model\.tflite: not a usable TFLite model"),
    "sha256 mismatch": ({"manifest": lambda f: f.update(model_sha256="0" * 64)}, r"does not match the manifest's 000000"),
    "dim mismatch": ({"manifest": lambda f: f.update(dim=5)},
                     r"weights do not match the manifest's num_items=30, dim=5: item_embeddings \(30, 4\)"),
    "num_items mismatch": ({"manifest": _fewer_items}, r"weights do not match the manifest's num_items=29"),
    "random bytes, re-hashed": ({"model": lambda d: np.random.default_rng(0).bytes(len(d)), "consistent": True},
                                r"model\.tflite: not a usable TFLite model"),
    "empty model, re-hashed": ({"model": lambda d: b"", "consistent": True}, r"model_bytes must be an integer in \[1, "),
    "empty manifest": ({"manifest": lambda f: f.clear()}, r"manifest lacks the fields"),
}


@pytest.fixture
def used_device(make_package, tmp_path) -> Device:
    """A device with a model, ratings and personal parameters."""
    device = Device(tmp_path / "device")
    device.install(make_package())
    for k, stars in enumerate([5, 4, 1, 2, 5, 3]):
        device.rate(1000 + 7 * k, stars)
    device.personalize()
    return device


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_package_is_refused_and_the_device_stays_as_it_was(case, used_device, make_package, tmp_path):
    changes, message = CASES[case]
    bad = _tamper(make_package(seed=1, round_num=2), tmp_path / "bad", **changes)
    before = used_device.status()
    ratings = used_device.ratings()
    recommendations = used_device.recommend(k=5)
    with pytest.raises(DeviceError, match=message) as refused:
        used_device.install(bad)
    assert f"install refused (model {before.model_version} stays active)" in str(refused.value)
    with Device(used_device.device_dir) as restarted:
        after = restarted.status()
        assert after.model_version == before.model_version and after.model_error is None
        assert after.installed_versions == before.installed_versions
        assert restarted.ratings() == ratings
        np.testing.assert_array_equal(after.params.embedding, before.params.embedding)
        assert restarted.recommend(k=5) == recommendations
    assert not [p for p in (used_device.device_dir / "models").iterdir() if p.name.startswith(".")]


def test_missing_files_and_folders_are_named(used_device, make_package, tmp_path):
    with pytest.raises(DeviceError, match=r"nowhere: not a model package folder"):
        used_device.install(tmp_path / "nowhere")
    no_model = _tamper(make_package(seed=1, round_num=2), tmp_path / "no_model")
    (no_model / MODEL_FILE).unlink()
    with pytest.raises(DeviceError, match=r"no_model/model\.tflite: no such model file"):
        used_device.install(no_model)
    broken = _tamper(make_package(seed=1, round_num=2), tmp_path / "broken")
    (broken / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(DeviceError, match=r"broken/manifest\.json: not valid JSON"):
        used_device.install(broken)


def test_a_first_install_that_is_refused_leaves_no_model(make_package, tmp_path):
    bad = _tamper(make_package(), tmp_path / "bad", model=_flip_middle)
    device = Device(tmp_path / "device")
    with pytest.raises(DeviceError, match=r"install refused \(nothing was installed\)"):
        device.install(bad)
    assert device.status().model_version is None


def test_a_package_reusing_the_active_version_with_other_contents_is_refused(used_device, make_package, tmp_path):
    active = used_device.status().model_version
    impostor = _tamper(make_package(seed=1, round_num=2), tmp_path / "impostor",
                       manifest=lambda f: f.update(model_version=active))
    with pytest.raises(DeviceError, match=f"has model_version {active} but different contents"):
        used_device.install(impostor)
    assert used_device.status().model_version == active
