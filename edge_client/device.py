"""A device: installed model packages, the user's ratings and parameters, and what it does with them.

Layout of `device_dir`: `device.db` (see store.py) and `models/<model_version>/` (verified copies
of installed packages; the active one and the one before it are kept). An install verifies and
test-runs the package before it touches the device, places the copy with a rename, and switches
the active model (and, when the dimension changed, the refitted parameters) in one transaction;
a refused or interrupted install leaves the previous model active and the data as it was.

Ratings are refused unless the active model knows the item and the rating is within its range,
so what is stored is always usable; stored ratings a later model does not know are kept and
ignored by it.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Self, TypeVar

import numpy as np

from edge_client.client_update import ClientUpdate, compute_client_update
from edge_client.device_lock import DeviceLock
from edge_client.errors import DeviceError
from edge_client.litert_model import GlobalWeights, LiteModel, UserParams
from edge_client.ratings_file import (
    check_known,
    parse_item_id,
    parse_rating,
    read_ratings_csv,
)
from edge_client.reports import (
    DeviceStatus,
    ImportReport,
    InstallReport,
    PersonalizeReport,
    Recommendation,
)
from edge_client.store import DB_FILE, RatingsWrite, Store, StoredUserParams, StoreError
from protocol.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, ManifestError
from protocol.package import read_verified_model, write_package

MODELS_DIR = "models"
DEFAULT_DEVICE_DIR = Path("~/.fedrec/device")
T = TypeVar("T")


class UsableRatings(NamedTuple):
    """The stored ratings a model can use (dense ids and ratings), and how many it cannot."""

    dense_ids: np.ndarray
    ratings: np.ndarray
    unknown_items: int  # items the model does not know
    out_of_range: int  # ratings outside the model's rating range

    @property
    def ignored(self) -> int:
        return self.unknown_items + self.out_of_range


def _locked(*, exclusive: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Run a Device method holding the device lock: exclusively if it writes, shared if it reads."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def locked(self: Device, *args: Any, **kwargs: Any) -> T:
            with self._lock.exclusive() if exclusive else self._lock.shared():
                return method(self, *args, **kwargs)

        return locked

    return decorate


_exclusive = _locked(exclusive=True)
_shared = _locked(exclusive=False)


class Device:
    """One user's device in `device_dir` (created if missing)."""

    def __init__(self, device_dir: Path | str) -> None:
        try:
            self.device_dir = Path(device_dir).expanduser()
        except RuntimeError as error:  # "~user" of no such user, or no home directory
            raise DeviceError(f"{device_dir}: cannot expand the device folder's '~': {error}") from None
        try:
            self.device_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeviceError(f"{self.device_dir}: cannot create the device folder: {error}") from None
        try:
            self.store = Store(self.device_dir / DB_FILE)
        except StoreError as error:
            raise DeviceError(str(error)) from None
        self._lock = DeviceLock(self.device_dir)
        self._model: LiteModel | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    @property
    def models_dir(self) -> Path:
        return self.device_dir / MODELS_DIR

    @property
    def model(self) -> LiteModel:
        """The active model, loaded (and re-verified) on first use, holding the stored parameters."""
        if self._model is None:
            model = self._load_active()
            self._set_model(model)
            return model
        return self._model

    def _load_active(self, *, accelerated: bool = True) -> LiteModel:
        """The active model, verified, with the zero user in its interpreter (`accelerated`:
        `LiteModel.from_bytes`)."""
        version = self.store.active_model()
        if version is None:
            raise DeviceError(f"no model installed in {self.device_dir}; run `fedrec-edge install PACKAGE_DIR` first")
        try:
            model = LiteModel.load(self.models_dir / version, accelerated=accelerated)
        except ManifestError as error:
            raise DeviceError(f"the active model {version} cannot be used ({error}); install a package again") from None
        if model.model_version != version:
            raise DeviceError(f"{self.models_dir / version}: holds model {model.model_version}, not {version}")
        return model

    # installing

    @_exclusive
    def install(self, package_dir: Path | str) -> InstallReport:
        """Verify, test-run, copy and activate a model package; see the module docstring."""
        package_dir = Path(package_dir)
        previous = self.store.active_model()
        previous_manifest = None if previous is None else self._installed_manifest(self.models_dir / previous)
        previous_dim = None if previous_manifest is None else previous_manifest.dim
        try:
            model, model_bytes = _load_package(package_dir)
        except ManifestError as error:
            kept = f"model {previous} stays active" if previous else "nothing was installed"
            raise DeviceError(f"install refused ({kept}): {error}") from None
        version = model.model_version
        target = self.models_dir / version
        installed = self._installed_manifest(target)
        if installed is not None and installed.model_sha256 != model.manifest.model_sha256:
            if version == previous:
                raise DeviceError(
                    f"install refused (model {previous} stays active): {package_dir} has model_version {version} "
                    "but different contents than the installed one; a new model needs a new version"
                )
            installed = None  # a stale copy of an older install: replace it
        if installed is None:
            self._place(model_bytes, model.manifest, target)
        stored = self.store.user_params()
        if version == previous:
            self._model = None
            return self._report(self.model, previous, already_active=True, repaired=installed is None,
                                previous_dim=previous_dim,
                                params="none" if stored is None else "kept",
                                params_dim=None if stored is None else stored.dim)

        usable = usable_ratings(self.store.ratings(), model.manifest)
        ids, stars = usable.dense_ids, usable.ratings
        new_params: StoredUserParams | None = None
        refit_loss: float | None = None
        if stored is None:
            action = "none"
        elif stored.dim == model.dim and stored.implicit is not None:
            action = "kept"
        elif len(ids):  # another dimension, or parameters from before the ranking head: refit them
            fit = model.personalize(ids, stars)
            refit_loss = fit.loss
            new_params = _stored(fit.user, version, len(ids))
            action = "refit"
        elif stored.dim == model.dim:
            action = "kept"  # nothing to refit the ranking vector from: recommendations rank by stars
        else:
            action = "dropped"
        self.store.activate_model(version, user_params=new_params, drop_user_params=action == "dropped")
        removed = self._remove_old_models(keep={version, previous})
        self._set_model(model)
        return self._report(model, previous, already_active=False, params=action, previous_dim=previous_dim,
                            params_dim=None if stored is None else stored.dim,
                            refit_num_ratings=len(ids) if action == "refit" else 0, refit_loss=refit_loss,
                            removed=removed)

    # ratings

    @_exclusive
    def import_ratings(self, csv_path: Path | str) -> ImportReport:
        """Import a CSV (`item_id,rating` or MovieLens `movieId,rating[,timestamp]`), all or nothing."""
        path = Path(csv_path)
        model = self.model
        rows = read_ratings_csv(path, model.manifest)
        write = self._put_ratings(rows)
        return ImportReport(path, len(rows), write.added, write.replaced)

    @_exclusive
    def rate(self, item_id: int | str, stars: float | str) -> float | None:
        """Store one rating (replacing an earlier one); returns the rating it replaced, if any."""
        model = self.model
        try:
            raw_id = parse_item_id(item_id)
            rating = parse_rating(stars, model.manifest)
            check_known(raw_id, model.manifest)
        except (TypeError, ValueError) as error:
            raise DeviceError(f"rating refused: {error}") from None
        before = self.store.ratings().get(raw_id)
        self._put_ratings([(raw_id, rating)])
        return before

    @_shared
    def ratings(self) -> dict[int, float]:
        """All stored ratings, raw item id -> rating (including items the active model does not know)."""
        return self.store.ratings()

    # personal model

    @_exclusive
    def personalize(self) -> PersonalizeReport:
        """Fit the personal parameters from every stored rating the active model can use, and persist them."""
        # Without a loaded model this is a one-shot fit (what `fedrec-edge personalize` does): the
        # model is loaded without XNNPACK, whose preparation of every signature costs more than
        # one fit gains, skips restoring the stored parameters (the fit replaces all of them), and
        # is not kept: a later use loads the accelerated model, which restores the stored fit.
        model = self._model if self._model is not None else self._load_active(accelerated=False)
        ratings = self.store.ratings()
        usable = usable_ratings(ratings, model.manifest)
        ids, stars = usable.dense_ids, usable.ratings
        if len(ids) == 0:
            detail = (f"{len(ratings)} stored, none usable by it: {usable.unknown_items} of items it does not "
                      f"know, {usable.out_of_range} outside its rating range") if ratings else "none stored yet"
            raise DeviceError(f"no ratings to personalize model {model.model_version} from ({detail}); "
                              "import or rate some first")
        fit = model.personalize(ids, stars)
        self.store.put_user_params(_stored(fit.user, model.model_version, len(ids)))
        return PersonalizeReport(model.model_version, len(ids), len(ratings) - len(ids), fit.loss)

    @_shared
    def recommend(self, k: int = 10) -> list[Recommendation]:
        """The best `k` items this user has not rated (global model if not personalized yet)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DeviceError(f"k must be a positive integer, got {k!r}")
        model = self.model
        self._restore_user(model)
        index = model.manifest.dense_index
        rated = {index[raw] for raw in self.store.ratings() if raw in index}
        top = model.topk(min(model.num_items, k + len(rated)))
        manifest = model.manifest
        picks = [(int(d), float(r), float(s)) for d, r, s in zip(top.item_ids, top.scores, top.stars)
                 if int(d) not in rated][:k]
        return [
            Recommendation(
                rank=rank, item_id=manifest.item_ids[d],
                title=None if manifest.item_titles is None else manifest.item_titles[d],
                score=min(max(stars, manifest.rating_min), manifest.rating_max),
                rank_score=rank_score,
            )
            for rank, (d, rank_score, stars) in enumerate(picks, start=1)
        ]

    @_shared
    def compute_update(self, global_weights: GlobalWeights | None, clip_norm: float, *,
                       ranking_scale: float = 1.0) -> ClientUpdate:
        """This device's clipped contribution to a round, from its stored ratings
        (`compute_client_update` says what `ranking_scale` is).

        The interpreter's global weights are restored to the installed model's afterwards, so
        taking part in a round does not change what this device recommends.
        """
        model = self.model
        usable = usable_ratings(self.store.ratings(), model.manifest)
        ids, stars = usable.dense_ids, usable.ratings
        if len(ids) == 0:
            raise DeviceError(f"no ratings known to model {model.model_version}; nothing to contribute")
        shipped = model.get_weights().global_weights
        try:
            return compute_client_update(model, ids, stars, clip_norm=clip_norm, global_weights=global_weights,
                                         ranking_scale=ranking_scale)
        finally:
            if global_weights is not None:
                model.set_global(shipped)

    @_shared
    def status(self) -> DeviceStatus:
        """What is installed and stored; works even when the active model cannot be loaded."""
        version = self.store.active_model()
        manifest, error, known = None, None, None
        ratings = self.store.ratings()
        if version is not None:
            try:
                manifest = self.model.manifest
                index = manifest.dense_index
                known = sum(1 for raw in ratings if raw in index)
            except DeviceError as failure:
                error = str(failure)
        installed = tuple(sorted(p.name for p in self.models_dir.glob("*")
                                 if p.is_dir() and not p.name.startswith("."))) if self.models_dir.is_dir() else ()
        return DeviceStatus(self.device_dir, version, error, manifest, installed, len(ratings), known,
                            self.store.user_params())

    # internals

    def _set_model(self, model: LiteModel) -> None:
        self._model = model
        self._restore_user(model)

    def _restore_user(self, model: LiteModel) -> bool:
        """Put the stored parameters into the interpreter (it starts with the zero user); False if none fit."""
        params = self.store.user_params()
        if params is not None and params.dim == model.dim:
            implicit = params.implicit if params.implicit is not None else np.zeros(model.dim, np.float32)
            model.set_user(UserParams(params.embedding, np.asarray(params.bias, np.float32), implicit))
            return True
        model.set_user(UserParams.zeros(model.dim))
        return False

    def _put_ratings(self, rows: list[tuple[int, float]]) -> RatingsWrite:
        try:
            return self.store.put_ratings(rows)
        except StoreError as error:
            raise DeviceError(f"ratings refused: {error}") from None

    def _installed_manifest(self, folder: Path) -> Manifest | None:
        """The manifest of an intact installed copy, or None if there is none (or it is damaged)."""
        try:
            manifest = Manifest.read(folder / MANIFEST_FILE)
            read_verified_model(manifest, folder / MODEL_FILE)
        except ManifestError:
            return None
        return manifest

    def _place(self, model_bytes: bytes, manifest: Manifest, target: Path) -> None:
        """Write a copy as `target` (atomically) and read it back before it can be activated."""
        try:
            write_package(target, model_bytes, manifest, replace=True)
            copied = Manifest.read(target / MANIFEST_FILE)
            read_verified_model(copied, target / MODEL_FILE)
        except (OSError, ManifestError) as error:
            raise DeviceError(f"cannot copy the package into {self.models_dir}: {error}") from None
        if copied != manifest:
            raise DeviceError(f"{target}: the copied manifest does not read back the same")

    def _remove_old_models(self, keep: set[str | None]) -> tuple[str, ...]:
        """Remove installed models other than `keep`, and what killed installs left behind.

        Runs under the exclusive device lock, so no other install's staging folder can exist;
        only folders this device writes are touched (model versions, `.<name>.*.staging` and
        `.<name>.*.retired`).
        """
        removed = []
        for folder in sorted(self.models_dir.iterdir()):
            leftover = folder.name.startswith(".") and folder.name.endswith((".staging", ".retired"))
            if folder.name in keep or not folder.is_dir() or folder.is_symlink() or \
                    (folder.name.startswith(".") and not leftover):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if not leftover:
                removed.append(folder.name)
        return tuple(removed)

    def _report(self, model: LiteModel, previous: str | None, *, already_active: bool, params: str,
                params_dim: int | None, previous_dim: int | None = None, repaired: bool = False,
                refit_num_ratings: int = 0, refit_loss: float | None = None,
                removed: tuple[str, ...] = ()) -> InstallReport:
        ratings = self.store.ratings()
        usable = usable_ratings(ratings, model.manifest)
        return InstallReport(
            model_version=model.model_version, previous_version=previous, already_active=already_active,
            repaired=repaired, dim=model.dim, previous_dim=previous_dim, params=params, params_dim=params_dim,
            refit_num_ratings=refit_num_ratings, refit_loss=refit_loss,
            num_ratings=len(ratings), unknown_ratings=usable.unknown_items,
            out_of_range_ratings=usable.out_of_range, removed_versions=removed,
        )


def _load_package(package_dir: Path) -> tuple[LiteModel, bytes]:
    """Manifest, verified bytes, interpreter, and one run of every signature."""
    model = LiteModel.load(package_dir)
    model.self_test()
    return model, model.model_bytes


def _stored(user: UserParams, model_version: str, num_ratings: int) -> StoredUserParams:
    return StoredUserParams(user.embedding, float(user.bias), model_version, num_ratings, implicit=user.implicit)


def usable_ratings(ratings: Mapping[int, float], manifest: Manifest) -> UsableRatings:
    """The stored ratings a model can use: items it knows, ratings within its range.

    Stored data is checked against the model that uses it, because ratings outlive models: a
    rating stored under one model may be outside the next one's range (and then, as float32,
    break its fit). Such ratings are kept in the store and ignored, as are unknown items.
    """
    index, low, high = manifest.dense_index, manifest.rating_min, manifest.rating_max
    ids, stars, unknown, outside = [], [], 0, 0
    for raw, rating in ratings.items():
        dense = index.get(raw)
        if dense is None:
            unknown += 1
        elif not low <= rating <= high:
            outside += 1
        else:
            ids.append(dense)
            stars.append(rating)
    return UsableRatings(np.array(ids, np.int32), np.array(stars, np.float32), unknown, outside)
