"""The model package schema shared by the exporter (server side) and the device.

A model package is a directory with `model.tflite` and `manifest.json`. The manifest says what
the model is (version, round, dataset), how to map its dense item indices back to the app's item
ids and titles, the shapes and hyperparameters the device needs, the model file's sha256 and
size, and the privacy spent to train it. This module is pure Python (json, hashlib) so that both
sides can import it; the device never needs TensorFlow to read it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
SIGNATURES = (
    "infer", "topk", "personalize", "client_update", "get_weights", "set_global", "set_user",
)
HYPERPARAMETER_KEYS = (
    "user_l2", "user_bias_l2", "item_l2", "item_bias_l2", "local_steps", "local_learning_rate",
)
PRIVACY_KEYS = ("epsilon_rdp", "epsilon_pld", "delta", "noise_multiplier", "rounds", "mechanism")
# Versions name folders on the device, so they are restricted to a safe file-name alphabet.
_VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ManifestError(ValueError):
    """A model package that must not be used, with the reason and the file it is in."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What `manifest.json` holds; `validate()` runs on construction."""

    model_version: str
    round: int | None
    dataset: str
    num_items: int
    dim: int
    item_ids: tuple[int, ...]  # the app's item id of each dense index
    item_titles: tuple[str, ...] | None
    rating_min: float
    rating_max: float
    hyperparameters: dict[str, float]
    model_sha256: str
    model_bytes: int
    privacy: dict[str, Any] | None
    signatures: tuple[str, ...] = SIGNATURES
    created_at: str = ""
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.format != FORMAT_VERSION:
            raise ManifestError(f"manifest format {self.format} is not supported (this client reads {FORMAT_VERSION})")
        if not isinstance(self.model_version, str) or not _VERSION_PATTERN.fullmatch(self.model_version):
            raise ManifestError(
                f"model_version {self.model_version!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if not _is_int(self.num_items) or self.num_items <= 0:
            raise ManifestError(f"num_items must be a positive integer, got {self.num_items!r}")
        if not _is_int(self.dim) or self.dim <= 0:
            raise ManifestError(f"dim must be a positive integer, got {self.dim!r}")
        if len(self.item_ids) != self.num_items:
            raise ManifestError(f"item_ids has {len(self.item_ids)} entries for num_items={self.num_items}")
        if not all(_is_int(x) for x in self.item_ids):
            raise ManifestError("item_ids must be integers")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ManifestError("item_ids contains duplicates")
        if self.item_titles is not None and len(self.item_titles) != self.num_items:
            raise ManifestError(f"item_titles has {len(self.item_titles)} entries for num_items={self.num_items}")
        if not (_is_finite(self.rating_min) and _is_finite(self.rating_max) and self.rating_min < self.rating_max):
            raise ManifestError(f"rating range [{self.rating_min}, {self.rating_max}] is invalid")
        missing = [k for k in HYPERPARAMETER_KEYS if k not in self.hyperparameters]
        if missing:
            raise ManifestError(f"hyperparameters lack {', '.join(missing)}")
        if not (isinstance(self.model_sha256, str) and len(self.model_sha256) == 64
                and all(c in "0123456789abcdef" for c in self.model_sha256)):
            raise ManifestError("model_sha256 must be 64 lowercase hex digits")
        if not _is_int(self.model_bytes) or self.model_bytes <= 0:
            raise ManifestError(f"model_bytes must be a positive integer, got {self.model_bytes!r}")
        absent = [s for s in SIGNATURES if s not in self.signatures]
        if absent:
            raise ManifestError(f"the model lacks the signatures {', '.join(absent)}")

    @functools.cached_property
    def dense_index(self) -> dict[int, int]:
        """The app's item id -> the model's dense index (built once per manifest)."""
        return {raw: dense for dense, raw in enumerate(self.item_ids)}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["item_ids"] = list(self.item_ids)
        data["item_titles"] = None if self.item_titles is None else list(self.item_titles)
        data["signatures"] = list(self.signatures)
        return data

    def to_json(self) -> str:
        """One top-level field per line (readable diffs), values compact (ids stay on one line)."""
        lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in self.to_dict().items()]
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: Path | str | None = None) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("the manifest must be a JSON object", source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ManifestError(f"unknown manifest fields: {', '.join(unknown)}", source)
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ManifestError(f"manifest lacks the fields {', '.join(missing)}", source)
        values = dict(data)
        try:
            values["item_ids"] = tuple(values["item_ids"])
            if values["item_titles"] is not None:
                values["item_titles"] = tuple(str(t) for t in values["item_titles"])
            values["signatures"] = tuple(values.get("signatures", SIGNATURES))
            if not isinstance(values["hyperparameters"], dict):
                raise ManifestError("hyperparameters must be an object")
            return cls(**values)
        except ManifestError as error:
            raise ManifestError(str(error), source) from None
        except TypeError as error:
            raise ManifestError(f"malformed manifest: {error}", source) from None

    @classmethod
    def read(cls, path: Path | str) -> Manifest:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ManifestError("manifest file is missing", path) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(f"cannot read the manifest: {error}", path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}", path) from None
        return cls.from_dict(data, source=path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified_model(manifest: Manifest, model_path: Path | str) -> bytes:
    """The model file's bytes, after checking them against the manifest's size and sha256."""
    model_path = Path(model_path)
    try:
        data = model_path.read_bytes()
    except FileNotFoundError:
        raise ManifestError("model file is missing", model_path) from None
    if len(data) != manifest.model_bytes:
        raise ManifestError(
            f"model file has {len(data)} bytes, the manifest says {manifest.model_bytes} "
            "(truncated or replaced?)", model_path,
        )
    digest = sha256_bytes(data)
    if digest != manifest.model_sha256:
        raise ManifestError(
            f"model sha256 {digest[:12]}... does not match the manifest's {manifest.model_sha256[:12]}... "
            "(corrupt or replaced?)", model_path,
        )
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_package(target: Path | str, model_bytes: bytes, manifest: Manifest) -> None:
    """Write `model.tflite` and `manifest.json` as the folder `target`, all or nothing.

    Both files go to a temporary sibling folder, are fsynced, and the folder is renamed into
    place (an existing `target` is moved aside first and deleted after), so a crash leaves either
    the old package or the new one where readers look, never half of one. Used by the exporter
    and by a device installing a package.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; a package is meant to be readable
    old = target.with_name(f".{target.name}.old")
    try:
        (staging / MODEL_FILE).write_bytes(model_bytes)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        for name in (MODEL_FILE, MANIFEST_FILE):
            _fsync(staging / name)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
