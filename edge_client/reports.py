"""What the device's operations report back (and how the CLI prints it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edge_client.store import StoredUserParams
from protocol.manifest import Manifest


@dataclasses.dataclass(frozen=True)
class InstallReport:
    model_version: str
    previous_version: str | None
    already_active: bool
    repaired: bool  # already active, but its installed copy was damaged and has been replaced
    dim: int
    previous_dim: int | None  # dim of the model that was active before, if one was
    params: str  # "none" | "kept" | "refit" | "dropped": what happened to the personal parameters
    params_dim: int | None  # dim of the parameters stored before the install
    refit_num_ratings: int
    refit_loss: float | None
    num_ratings: int
    unknown_ratings: int  # stored ratings of items the new model does not know
    out_of_range_ratings: int  # stored ratings outside the new model's rating range
    removed_versions: tuple[str, ...]

    @property
    def dim_changed(self) -> bool:
        return any(old is not None and old != self.dim for old in (self.previous_dim, self.params_dim))

    def lines(self) -> list[str]:
        if self.already_active and self.repaired:
            lines = [f"model {self.model_version} is already active; its damaged installed copy was replaced"]
        elif self.already_active:
            lines = [f"model {self.model_version} is already active; nothing changed"]
        else:
            previous = self.previous_version or "none"
            lines = [f"installed model {self.model_version} (dim {self.dim}); previous model: {previous}"]
        if self.dim_changed:
            old = self.params_dim if self.params_dim is not None else self.previous_dim
            lines.append(f"dimension changed from {old} to {self.dim}")
        if self.params == "none" and self.num_ratings == 0:
            lines.append("no ratings yet, so no personal parameters to keep or refit")
        elif self.params == "none":
            lines.append("no personal parameters yet (run personalize)")
        elif self.params == "kept":
            lines.append(f"personal parameters kept (dim {self.dim} unchanged); run `personalize` to refit them "
                         "against this model's item parameters")
        elif self.params == "refit":
            lines.append(
                f"the old personal parameters (dim {self.params_dim}) do not fit the new model: refitted them "
                f"from {self.refit_num_ratings} stored ratings with it (mean squared error {self.refit_loss:.4f})"
            )
        elif self.params == "dropped":
            lines.append(
                f"the old personal parameters (dim {self.params_dim}) do not fit the new model and no stored "
                "rating is of an item it knows, so they cannot be refitted; they were removed and "
                "recommendations use the global model until you rate its items and personalize"
            )
        if self.unknown_ratings:
            lines.append(
                f"{self.unknown_ratings} of {self.num_ratings} stored ratings are for items this model does not "
                "know; they are kept and ignored by it"
            )
        if self.out_of_range_ratings:
            lines.append(
                f"{self.out_of_range_ratings} of {self.num_ratings} stored ratings are outside this model's rating "
                "range; they are kept and ignored by it"
            )
        if self.removed_versions:
            lines.append(f"removed old models: {', '.join(self.removed_versions)}")
        return lines


@dataclasses.dataclass(frozen=True)
class ImportReport:
    path: Path
    rows: int
    added: int
    replaced: int


@dataclasses.dataclass(frozen=True)
class PersonalizeReport:
    model_version: str
    num_ratings: int  # ratings the fit used
    ignored_ratings: int  # stored ratings of items the active model does not know
    loss: float  # mean squared error on the ratings used


@dataclasses.dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: int  # the app's raw item id
    title: str | None
    score: float  # predicted rating, clipped to the model's rating range
    rank_score: float = 0.0  # what the item was ranked by (the ranking head's score, or the stars)


@dataclasses.dataclass(frozen=True)
class DeviceStatus:
    device_dir: Path
    model_version: str | None
    model_error: str | None  # why the active model cannot be loaded, if it cannot
    manifest: Manifest | None
    installed_versions: tuple[str, ...]
    num_ratings: int
    known_ratings: int | None  # of them, items the active model knows
    params: StoredUserParams | None

    @property
    def personalized(self) -> bool:
        """Whether recommendations use personal parameters (they fit the active model's dim)."""
        return self.params is not None and self.manifest is not None and self.params.dim == self.manifest.dim

    def lines(self) -> list[str]:
        lines = [f"device: {self.device_dir}"]
        if self.model_version is None:
            lines.append("model: none installed")
        elif self.manifest is None:
            lines.append(f"model: {self.model_version} (cannot be loaded: {self.model_error})")
        else:
            m = self.manifest
            lines.append(f"model: {m.model_version} (dataset {m.dataset}, round {m.round}, {m.num_items} items, "
                         f"dim {m.dim}, ratings {m.rating_min:g}..{m.rating_max:g})")
            if m.privacy:
                lines.append(f"privacy: epsilon {m.privacy.get('epsilon_rdp')} at delta {m.privacy.get('delta')} "
                             f"after {m.privacy.get('rounds')} rounds")
        lines.append(f"installed: {', '.join(self.installed_versions) or 'none'}")
        known = "" if self.known_ratings is None else f" ({self.known_ratings} known to the active model)"
        lines.append(f"ratings: {self.num_ratings}{known}")
        if self.params is None:
            lines.append("personal parameters: none (recommendations use the global model)")
        else:
            p = self.params
            usable = "" if self.personalized else " (do not fit the active model; not used)"
            lines.append(f"personal parameters: dim {p.dim}, fitted with {p.model_version} on {p.num_ratings} "
                         f"ratings at {p.fitted_at}{usable}")
        return lines
