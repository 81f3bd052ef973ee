"""The model package's manifest: what a model is, and everything a device needs to use it.

A model package is a folder with `model.tflite` and `manifest.json`. The manifest says what the
model is (version, round, dataset), how to map its dense item indices back to the app's item ids
and titles, the shapes, rating range and hyperparameters, the model file's sha256 and size, and
the privacy spent to train it.

Integrity goes both ways. The manifest states the model file's sha256 and size; the model file
carries the sha256 of the manifest's content (`content_digest`, returned by its
`manifest_digest` signature), so editing a field such as the rating range or ε after export
makes the package unusable instead of silently changing what the device does or reports. (This
catches edits, not a forger who re-exports; authenticating the publisher needs a signature
key, which the coordinator's transport will provide.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from typing import Any

from protocol.errors import ProtocolError
from protocol.files import FileRefused, read_bounded
from protocol.signatures import SIGNATURES

FORMAT_VERSION = 3  # 3: the ranking head (signatures and hyperparameters)
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
HYPERPARAMETER_KEYS = (
    "user_l2", "user_bias_l2", "item_l2", "item_bias_l2", "local_steps", "local_learning_rate",
    "implicit_learning_rate", "implicit_unobserved_weight", "implicit_l2",
)
PRIVACY_KEYS = ("epsilon_rdp", "epsilon_pld", "delta", "noise_multiplier", "rounds", "mechanism")
# FlatBuffers cannot address more than 2 GiB; a manifest of a million titled items is ~50 MB.
MAX_MODEL_BYTES = 2**31 - 1
MAX_MANIFEST_BYTES = 64 * 2**20
# Fields the content digest leaves out: they describe the model file (hash, size, the version
# derived from the hash) or the moment of export, and are fixed only after conversion.
_UNDIGESTED = frozenset({"model_sha256", "model_bytes", "model_version", "created_at"})
# Versions name folders on the device, so they are restricted to a safe file-name alphabet.
_VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ProtocolError, ValueError):
    """A model package that must not be used, with the reason and the file it is in."""

    def __init__(self, message: str, path: Any = None) -> None:
        self.path = None if path is None else str(path)
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
            raise ManifestError(f"manifest format {self.format!r} is not supported (this client reads "
                                f"{FORMAT_VERSION}; export the model again with this version)")
        if not isinstance(self.model_version, str) or not _VERSION_PATTERN.fullmatch(self.model_version):
            raise ManifestError(
                f"model_version {self.model_version!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if self.round is not None and (not _is_int(self.round) or self.round < 0):
            raise ManifestError(f"round must be a non-negative integer or null, got {self.round!r}")
        for name in ("dataset", "created_at"):
            if not isinstance(getattr(self, name), str):
                raise ManifestError(f"{name} must be a string")
        if not _is_int(self.num_items) or self.num_items <= 0:
            raise ManifestError(f"num_items must be a positive integer, got {self.num_items!r}")
        if not _is_int(self.dim) or self.dim <= 0:
            raise ManifestError(f"dim must be a positive integer, got {self.dim!r}")
        if len(self.item_ids) != self.num_items:
            raise ManifestError(f"item_ids has {len(self.item_ids)} entries for num_items={self.num_items}")
        if not _all_int64(self.item_ids):
            raise ManifestError("item_ids must be 64-bit integers")
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ManifestError("item_ids contains duplicates")
        if self.item_titles is not None:
            if len(self.item_titles) != self.num_items:
                raise ManifestError(f"item_titles has {len(self.item_titles)} entries for num_items={self.num_items}")
            if not (set(map(type, self.item_titles)) <= {str} or all(isinstance(t, str) for t in self.item_titles)):
                raise ManifestError("item_titles must be strings")
        if not (_is_finite(self.rating_min) and _is_finite(self.rating_max) and self.rating_min < self.rating_max):
            raise ManifestError(f"rating range [{self.rating_min!r}, {self.rating_max!r}] is invalid")
        if not isinstance(self.hyperparameters, dict):
            raise ManifestError("hyperparameters must be an object")
        missing = [k for k in HYPERPARAMETER_KEYS if k not in self.hyperparameters]
        if missing:
            raise ManifestError(f"hyperparameters lack {', '.join(missing)}")
        bad = [k for k, v in self.hyperparameters.items() if not _is_finite(v)]
        if bad:
            raise ManifestError(f"hyperparameters {_names(bad)} must be finite numbers")
        if not (isinstance(self.model_sha256, str) and _HEX64.fullmatch(self.model_sha256)):
            raise ManifestError("model_sha256 must be 64 lowercase hex digits")
        if not _is_int(self.model_bytes) or not 0 < self.model_bytes <= MAX_MODEL_BYTES:
            raise ManifestError(f"model_bytes must be an integer in [1, {MAX_MODEL_BYTES}], got {self.model_bytes!r}")
        self._validate_privacy()
        if not all(isinstance(s, str) for s in self.signatures):
            raise ManifestError("signatures must be strings")
        absent = [s for s in SIGNATURES if s not in self.signatures]
        if absent:
            raise ManifestError(f"the model lacks the signatures {', '.join(absent)}")

    def _validate_privacy(self) -> None:
        if self.privacy is None:
            return
        if not isinstance(self.privacy, dict):
            raise ManifestError("privacy must be an object or null")
        unknown = sorted(set(self.privacy) - set(PRIVACY_KEYS))
        if unknown:
            raise ManifestError(f"unknown privacy fields: {_names(unknown)}")
        for key in ("epsilon_rdp", "epsilon_pld", "delta", "noise_multiplier"):
            value = self.privacy.get(key)
            if value is not None and (not _is_finite(value) or value < 0):
                raise ManifestError(f"privacy.{key} must be a non-negative finite number, got {value!r}")
        rounds = self.privacy.get("rounds")
        if rounds is not None and (not _is_int(rounds) or rounds < 0):
            raise ManifestError(f"privacy.rounds must be a non-negative integer, got {rounds!r}")
        if not isinstance(self.privacy.get("mechanism", ""), str):
            raise ManifestError("privacy.mechanism must be a string")

    @functools.cached_property
    def dense_index(self) -> dict[int, int]:
        """The app's item id -> the model's dense index (built once per manifest; a device builds
        it at every start, and dict(zip) takes ~2/3 of a comprehension's time)."""
        return dict(zip(self.item_ids, range(len(self.item_ids))))

    @functools.cached_property
    def _content_digest(self) -> bytes:
        content = {k: v for k, v in self.to_dict().items() if k not in _UNDIGESTED}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(canonical.encode("ascii")).digest()

    def content_digest(self) -> bytes:
        """sha256 of every field but the model file's hash, size and version and the export time.

        Computed over canonical JSON (sorted keys, no spaces), so it does not depend on how the
        file is laid out; the exporter bakes it into the model (see the module docstring).
        """
        return self._content_digest

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (a shallow copy: `dataclasses.asdict` deep-copied every
        id and title and took 4.5 ms per load of a 300-item model)."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["hyperparameters"] = dict(self.hyperparameters)
        data["privacy"] = None if self.privacy is None else dict(self.privacy)
        data["item_ids"] = list(self.item_ids)
        data["item_titles"] = None if self.item_titles is None else list(self.item_titles)
        data["signatures"] = list(self.signatures)
        return data

    def to_json(self) -> str:
        """One top-level field per line (readable diffs), values compact (ids stay on one line)."""
        lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'), allow_nan=False)}"
                 for k, v in self.to_dict().items()]
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: Any = None) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("the manifest must be a JSON object", source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ManifestError(f"unknown manifest fields: {_names(unknown)}", source)
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ManifestError(f"manifest lacks the fields {', '.join(missing)}", source)
        values = dict(data)
        try:
            for name in ("item_ids", "item_titles", "signatures"):
                value = values.get(name)
                if value is not None and not isinstance(value, list):
                    raise ManifestError(f"{name} must be a list")
            values["item_ids"] = tuple(values["item_ids"])
            if values["item_titles"] is not None:
                values["item_titles"] = tuple(values["item_titles"])
            values["signatures"] = tuple(values.get("signatures", SIGNATURES))
            return cls(**values)
        except ManifestError as error:
            raise ManifestError(str(error), source) from None
        except (TypeError, ValueError) as error:
            raise ManifestError(f"malformed manifest: {error}", source) from None

    @classmethod
    def read(cls, path: Any) -> Manifest:
        """Read and validate a `manifest.json` (a regular file of at most MAX_MANIFEST_BYTES)."""
        try:
            text = read_bounded(path, max_bytes=MAX_MANIFEST_BYTES, what="manifest")
        except FileRefused as error:
            raise ManifestError(str(error)) from None
        return cls.from_json(text, source=path)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: Any = None) -> Manifest:
        """Parse manifest JSON; any defect is a ManifestError naming `source`."""
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as error:
            raise ManifestError(f"not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}",
                                source) from None
        except UnicodeDecodeError as error:
            raise ManifestError(f"not UTF-8 text: {error.reason} at byte {error.start}", source) from None
        except RecursionError:
            raise ManifestError("JSON nested too deeply to be a manifest", source) from None
        except ValueError as error:  # _refuse_constant, or an integer too long to convert
            raise ManifestError(f"not valid JSON: {error}", source) from None
        return cls.from_dict(data, source=source)


def provisional_manifest(fields: dict[str, Any]) -> Manifest:
    """A manifest of `fields` with placeholder file hash and size, for `content_digest()` before
    the model file exists (those fields are not digested)."""
    return Manifest(model_version="provisional", model_sha256="0" * 64, model_bytes=1, **fields)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _names(keys: Any) -> str:
    """Field names as an error shows them: quoted (a key may hold a line break), at most ten."""
    keys = list(keys)
    shown = ", ".join(repr(k)[:60] for k in keys[:10])
    return shown + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _all_int64(values: tuple[Any, ...]) -> bool:
    """Every value an integer (not a bool) in [-2^63, 2^63). The common case, plain ints, is
    checked without a Python call per value (a device loads the manifest at every start)."""
    if not values:
        return True
    if set(map(type, values)) <= {int}:
        return -(2**63) <= min(values) and max(values) < 2**63
    return all(_is_int(x) and -(2**63) <= x < 2**63 for x in values)


def _is_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False
