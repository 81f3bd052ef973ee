"""One model package running in the LiteRT interpreter, with typed numpy calls.

The interpreter itself accepts almost anything: int64 ids are rejected but a wrong-length user
vector is silently accepted, an out-of-range id fails deep inside a GATHER, and an empty batch
fails in the XNNPACK delegate. So every call here checks dtypes, shapes and id ranges first and
turns interpreter failures into a `ModelError` that names the model file. Loading verifies the
file against its manifest and checks that the signatures and weight shapes are the ones the
manifest describes; `self_test()` runs every signature once, because a model with unsupported
ops loads fine and only fails at its first call.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edge_client.errors import EdgeError
from edge_client.native_log import LITERT_NOISE, filtered_stderr
from protocol.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, ManifestError
from protocol.messages import one_line
from protocol.package import read_verified_model
from protocol.signatures import SIGNATURE_IO, SIGNATURES

_delegate_announced = False


class ModelError(EdgeError, ManifestError):
    """A model file that cannot be used (not a model, wrong signatures or shapes, a failed call)."""


class GlobalWeights(NamedTuple):
    """The parameters shared by all users: what a federated round updates."""

    item_embeddings: np.ndarray  # float32 [num_items, dim]
    item_bias: np.ndarray  # float32 [num_items]
    global_mean: np.ndarray  # float32 []


class UserParams(NamedTuple):
    """This user's own parameters: they stay on the device."""

    embedding: np.ndarray  # float32 [dim], the rating head's
    bias: np.ndarray  # float32 [], the rating head's
    implicit: np.ndarray  # float32 [dim], the ranking head's (zeros: rank by predicted stars)

    @classmethod
    def zeros(cls, dim: int) -> UserParams:
        """The zero user: predictions are then the global model's, ranked by predicted stars."""
        return cls(np.zeros(dim, np.float32), np.zeros((), np.float32), np.zeros(dim, np.float32))


class ModelWeights(NamedTuple):
    global_weights: GlobalWeights
    user: UserParams


class Personalization(NamedTuple):
    user: UserParams
    loss: float  # mean squared error of the fitted user on the ratings it was fitted on


class ModelDelta(NamedTuple):
    """The raw output of the model's `client_update` signature (before any clipping)."""

    item_embeddings_delta: np.ndarray
    item_bias_delta: np.ndarray
    global_mean_delta: np.ndarray
    implicit_embeddings_delta: np.ndarray  # the ranking head's step of the item table
    num_examples: int
    loss_before: float


class TopItems(NamedTuple):
    """The best items by the ranking head (or by predicted stars for a user without a ranking vector)."""

    item_ids: np.ndarray  # int32 [k] dense ids, best first
    scores: np.ndarray  # float32 [k] the scores they were ranked by
    stars: np.ndarray  # float32 [k] predicted ratings


class LiteModel:
    """A verified model package loaded in one interpreter; its signature runners share variables."""

    def __init__(self, interpreter: Interpreter, manifest: Manifest, model_path: Path,
                 model_bytes: bytes = b"") -> None:
        self.manifest = manifest
        self.model_path = model_path
        self.model_bytes = model_bytes  # the interpreter reads from this buffer; kept for copying
        self._interpreter = interpreter
        self._runners: dict[str, Any] = {}  # made on first use (`_runner`)
        try:
            available = interpreter.get_signature_list()
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"cannot list the model's signatures: {error}", model_path) from None
        missing = [name for name in SIGNATURES if name not in available]
        if missing:
            raise ModelError(f"the model lacks the signatures {', '.join(missing)}", model_path)
        for name, (inputs, outputs) in SIGNATURE_IO.items():
            found_in, found_out = set(available[name]["inputs"]), set(available[name]["outputs"])
            if found_in != inputs or found_out != outputs:
                raise ModelError(
                    f"signature {name!r} has inputs {sorted(found_in)} and outputs {sorted(found_out)}, "
                    f"expected {sorted(inputs)} and {sorted(outputs)}", model_path,
                )
        weights = self.get_weights()
        expected = {
            "item_embeddings": (self.num_items, self.dim), "item_bias": (self.num_items,), "global_mean": (),
            "user_embedding": (self.dim,), "user_bias": (), "implicit_embedding": (self.dim,),
        }
        actual = {
            "item_embeddings": weights.global_weights.item_embeddings.shape,
            "item_bias": weights.global_weights.item_bias.shape,
            "global_mean": weights.global_weights.global_mean.shape,
            "user_embedding": weights.user.embedding.shape, "user_bias": weights.user.bias.shape,
            "implicit_embedding": weights.user.implicit.shape,
        }
        wrong = [f"{k} {actual[k]} (manifest: {expected[k]})" for k in expected if actual[k] != expected[k]]
        if wrong:
            raise ModelError(
                f"the model's weights do not match the manifest's num_items={self.num_items}, dim={self.dim}: "
                + ", ".join(wrong), model_path,
            )
        vouched = np.asarray(self._call("manifest_digest")["sha256"])
        if vouched.dtype != np.uint8 or vouched.tobytes() != manifest.content_digest():
            raise ModelError(
                "the manifest's content does not match the digest the model was exported with "
                "(manifest.json edited after export?)", model_path,
            )

    @classmethod
    def load(cls, package_dir: Path | str, *, accelerated: bool = True) -> LiteModel:
        """Read the manifest, verify the model file's size and hash, and build the interpreter
        (`accelerated`: see `from_bytes`)."""
        package_dir = Path(package_dir)
        if not package_dir.is_dir():
            raise ManifestError("not a model package folder", package_dir)
        manifest = Manifest.read(package_dir / MANIFEST_FILE)
        model_path = package_dir / MODEL_FILE
        return cls.from_bytes(read_verified_model(manifest, model_path), manifest, model_path=model_path,
                              accelerated=accelerated)

    @classmethod
    def from_bytes(cls, model_bytes: bytes, manifest: Manifest, *, model_path: Path | str,
                   accelerated: bool = True) -> LiteModel:
        """An interpreter over already verified bytes; `model_path` is only used in messages.

        `accelerated=False` leaves out LiteRT's default XNNPACK delegate, for a model that makes
        one or two calls: XNNPACK prepares every op of every signature at the first call (~0.6 ms
        for this model), more than it saves on a single fit (a personalize call takes ~0.2 ms
        either way), while it makes repeated calls 2-3x faster.
        """
        model_path = Path(model_path)
        if not model_bytes:
            raise ModelError("the model file is empty", model_path)
        model_bytes = bytes(model_bytes)
        global _delegate_announced
        # LiteRT announces its XNNPACK delegate once per process, at the first call.
        quiet = contextlib.nullcontext() if _delegate_announced else filtered_stderr(LITERT_NOISE)
        with quiet:
            try:
                interpreter = Interpreter(model_content=model_bytes, experimental_op_resolver_type=(
                    OpResolverType.AUTO if accelerated else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
            except (ValueError, RuntimeError) as error:
                raise ModelError(f"not a usable TFLite model: {one_line(str(error))}", model_path) from None
            model = cls(interpreter, manifest, model_path, model_bytes)
            _delegate_announced = _delegate_announced or accelerated
        return model

    @property
    def num_items(self) -> int:
        return self.manifest.num_items

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def self_test(self) -> None:
        """Run every signature once and restore the variables; raises ModelError if any call fails."""
        before = self.get_weights()
        ids = np.arange(min(3, self.num_items), dtype=np.int32)
        stars = np.full(len(ids), (self.manifest.rating_min + self.manifest.rating_max) / 2, np.float32)
        self.infer(ids)
        self.topk(min(5, self.num_items))
        fitted = self.personalize(ids, stars)
        if not (np.all(np.isfinite(fitted.user.embedding)) and np.isfinite(fitted.loss)):
            raise ModelError("personalize returned non-finite values", self.model_path)
        update = self.client_update(ids, stars)
        if update.num_examples != len(ids):
            raise ModelError(f"client_update counted {update.num_examples} examples for {len(ids)}", self.model_path)
        self.set_global(before.global_weights)
        self.set_user(before.user)

    def infer(self, item_ids: np.ndarray) -> np.ndarray:
        """Predicted ratings of the current user (the interpreter's user variables) for dense ids."""
        ids = self._item_ids(item_ids)
        if ids.size == 0:
            return np.zeros(0, np.float32)
        return self._array(self._call("infer", item_ids=ids)["scores"], (len(ids),), "scores")

    def topk(self, k: int) -> TopItems:
        """The best `k` dense ids (capped to num_items), best first, with their ranking scores and
        predicted stars."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        k = min(int(k), self.num_items)
        if k == 0:
            return TopItems(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        out = self._call("topk", k=np.array(k, np.int32))
        ids = np.asarray(out["item_ids"], dtype=np.int32)
        # One reduction checks both ends: as uint32 a negative id is >= 2^31 (min and max took 3 us).
        if ids.shape != (k,) or ids.view(np.uint32).max() >= self.num_items:
            raise ModelError(f"topk returned invalid item ids {ids.tolist()}", self.model_path)
        return TopItems(ids, self._array(out["scores"], (k,), "scores"), self._array(out["stars"], (k,), "stars"))

    def personalize(self, item_ids: np.ndarray, ratings: np.ndarray) -> Personalization:
        """Fit this user's parameters to the ratings (also left in the interpreter's user variables)."""
        ids, stars = self._examples(item_ids, ratings)
        out = self._call("personalize", item_ids=ids, ratings=stars)
        user = UserParams(self._array(out["user_embedding"], (self.dim,), "user_embedding"),
                          self._array(out["user_bias"], (), "user_bias"),
                          self._array(out["implicit_embedding"], (self.dim,), "implicit_embedding"))
        return Personalization(user, float(out["loss"]))

    def client_update(self, item_ids: np.ndarray, ratings: np.ndarray) -> ModelDelta:
        """One round's local work on the current global weights; changes no variable."""
        ids, stars = self._examples(item_ids, ratings)
        out = self._call("client_update", item_ids=ids, ratings=stars)
        return ModelDelta(
            self._array(out["item_embeddings_delta"], (self.num_items, self.dim), "item_embeddings_delta"),
            self._array(out["item_bias_delta"], (self.num_items,), "item_bias_delta"),
            self._array(out["global_mean_delta"], (), "global_mean_delta"),
            self._array(out["implicit_embeddings_delta"], (self.num_items, self.dim), "implicit_embeddings_delta"),
            round(float(out["num_examples"])),
            float(out["loss_before"]),
        )

    def get_weights(self) -> ModelWeights:
        """Copies of all variables as they are now in the interpreter."""
        out = self._call("get_weights")
        as_array = {k: np.array(v, dtype=np.float32) for k, v in out.items()}
        return ModelWeights(
            GlobalWeights(as_array["item_embeddings"], as_array["item_bias"], as_array["global_mean"]),
            UserParams(as_array["user_embedding"], as_array["user_bias"], as_array["implicit_embedding"]),
        )

    def set_global(self, weights: GlobalWeights) -> None:
        """Replace the global weights in the interpreter (e.g. with a server's current ones)."""
        weights = GlobalWeights(*weights)
        item_embeddings = _float32(weights.item_embeddings, (self.num_items, self.dim), "item_embeddings")
        item_bias = _float32(weights.item_bias, (self.num_items,), "item_bias")
        global_mean = _float32(weights.global_mean, (), "global_mean")
        out = self._call("set_global", item_embeddings=item_embeddings, item_bias=item_bias,
                         global_mean=global_mean)
        if int(out["num_items"]) != self.num_items:
            raise ModelError(f"set_global reported {int(out['num_items'])} items", self.model_path)

    def set_user(self, user: UserParams) -> None:
        """Put this user's parameters into the interpreter (it forgets them on every restart)."""
        user = UserParams(*user)
        embedding = _float32(user.embedding, (self.dim,), "user_embedding")
        bias = _float32(user.bias, (), "user_bias")
        implicit = _float32(user.implicit, (self.dim,), "implicit_embedding")
        out = self._call("set_user", user_embedding=embedding, user_bias=bias, implicit_embedding=implicit)
        if int(out["dim"]) != self.dim:
            raise ModelError(f"set_user reported dim {int(out['dim'])}", self.model_path)

    def _call(self, name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        runner = self._runners.get(name) or self._runner(name)
        try:
            return runner(**inputs)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"signature {name!r} failed: {one_line(str(error))}", self.model_path) from None

    def _runner(self, name: str) -> Any:
        """The signature's runner, made at its first call: a cold personalization calls three of
        the nine signatures, and each runner costs ~30 us to make (it re-reads every signature)."""
        try:
            runner = self._runners[name] = self._interpreter.get_signature_runner(name)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"cannot prepare signature {name!r}: {error}", self.model_path) from None
        return runner

    def _item_ids(self, item_ids: np.ndarray, *, ordered: np.ndarray | None = None) -> np.ndarray:
        """Checked dense ids as int32 (`ordered`: the same ids sorted, if the caller has them)."""
        ids = np.asarray(item_ids)
        if ids.ndim != 1:
            raise ValueError(f"item_ids must be one-dimensional, got shape {ids.shape}")
        if not ids.size:
            return ids.astype(np.int32)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"item_ids must be integers, got {ids.dtype}")
        low, high = (ordered[0], ordered[-1]) if ordered is not None else (ids.min(), ids.max())
        if low < 0 or high >= self.num_items:
            bad = ids[(ids < 0) | (ids >= self.num_items)]
            raise ValueError(f"dense item ids must be in [0, {self.num_items}), got {bad[:5].tolist()}")
        return ids.astype(np.int32, copy=False)  # the interpreter copies its inputs

    def _examples(self, item_ids: np.ndarray, ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked (ids, ratings) of one user: the local work assumes each item appears once."""
        ids = np.asarray(item_ids)
        # One sort gives the range check its bounds and finds repeated ids (np.unique took 8 us).
        ordered = np.sort(ids) if ids.ndim == 1 and ids.size and ids.dtype.kind in "iu" else None
        ids = self._item_ids(ids, ordered=ordered)
        stars = np.asarray(ratings)
        if stars.shape != ids.shape:
            raise ValueError(f"{len(ids)} item ids but ratings of shape {stars.shape}")
        if ids.size == 0:
            raise ValueError("at least one rating is needed")
        if ordered is not None:  # always, once the ids are checked and non-empty
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if repeated.size:
                raise ValueError(f"item ids must be unique, got repeated {np.unique(repeated)[:5].tolist()}")
        if stars.dtype.kind not in "iuf":
            raise TypeError(f"ratings must be real numbers, got {stars.dtype}")
        low, high = self.manifest.rating_min, self.manifest.rating_max
        if not (low <= stars.min() and stars.max() <= high):  # NaN fails both comparisons
            outside = ~((stars >= low) & (stars <= high))
            raise ValueError(f"ratings must be within the model's range [{low:g}, {high:g}], "
                             f"got {stars[outside][:5].tolist()}")
        return ids, stars.astype(np.float32, copy=False)

    def _array(self, value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
        # The interpreter's outputs are fresh arrays (copies of its tensors): no second copy.
        array = np.asarray(value, dtype=np.float32)
        if array.shape != shape:
            raise ModelError(f"output {name} has shape {array.shape}, expected {shape}", self.model_path)
        return array


def _float32(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be numeric, got {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values")
    return array
