"""The layout of a `fedrec simulate --out` folder, and the run id that ties its pieces together.

    config.json          {"run_id", "created_at", "config"}: written first, before any round
    checkpoints/         checkpoint.json (run id, config digest, round, history) and the last
                         two round_NNNNN.npz (each holding the run id too)
    final_model.npz      } written when the run ends, each with the run id;
    vocabulary.json      } report.json last, so its presence means "finished"
    metrics.csv, report.md, report.json

Every piece names its run, so a resume, an export or a report can never combine one run's
checkpoint with another run's configuration (which once made a report state the ε of the new
configuration for a model trained under the old one). A folder that holds a run is never
reused for a new one unless the user says `--overwrite`, and then only the files listed here
are removed; anything else in the folder stays.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

from protocol.files import FileRefused, atomic_write, read_bounded
from tff_pipeline.config import SimulationConfig
from tff_pipeline.errors import PipelineError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
REPORT_FILE = "report.json"
REPORT_MARKDOWN_FILE = "report.md"
METRICS_FILE = "metrics.csv"
FINAL_MODEL_FILE = "final_model.npz"
VOCABULARY_FILE = "vocabulary.json"
TRAINING_PLOT_FILE = "training.png"
PRIVACY_PLOT_FILE = "privacy.png"
RESULT_FILES = (REPORT_FILE, REPORT_MARKDOWN_FILE, METRICS_FILE, FINAL_MODEL_FILE, VOCABULARY_FILE,
                TRAINING_PLOT_FILE, PRIVACY_PLOT_FILE)
RUN_FILES = (CONFIG_FILE, *RESULT_FILES)
CHECKPOINT_INDEX = "checkpoint.json"
MAX_JSON_BYTES = 256 * 2**20  # report.json holds one row per round: ~1 KB each


class RunFolderError(PipelineError, ValueError):
    """A run folder that cannot be used as asked; the message names it and says what to do."""


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    run_id: str
    config: SimulationConfig
    created_at: str = ""

    @property
    def config_digest(self) -> str:
        return config_digest(self.config)


def config_digest(config: SimulationConfig) -> str:
    """sha256 of the configuration's canonical JSON (stored in each checkpoint)."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_run_id() -> str:
    """Sortable and unique: UTC start time plus 32 random bits."""
    now = datetime.datetime.now(datetime.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def read_json(path: Path, *, what: str) -> Any:
    """A JSON file of ours, with every defect reported as one line naming the file."""
    try:
        text = read_bounded(path, max_bytes=MAX_JSON_BYTES, what=what)
    except FileRefused as error:
        raise RunFolderError(str(error)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); "
                             "was it truncated or edited?") from None
    except (RecursionError, UnicodeDecodeError, ValueError) as error:
        raise RunFolderError(f"{path}: not valid JSON ({type(error).__name__})") from None


class RunFolder:
    """A run's output folder: where each piece lives, and the checks before it is started or resumed."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def holds_run(self) -> bool:
        """Whether any piece of a run (ours, of any version) is here."""
        return any((self.path / name).exists() for name in (*RUN_FILES, CHECKPOINT_DIR))

    def start(self, config: SimulationConfig, *, overwrite: bool = False) -> RunIdentity:
        """Claim the folder for a new run: refuse one that holds anything unless it is an old run
        and `overwrite` is set (then that run's files are removed first); write config.json."""
        self._check_writable_target(overwrite)
        if self.holds_run():
            self._remove_run_files()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunFolderError(f"{self.path}: cannot create the output folder: {error.strerror or error}") from None
        identity = RunIdentity(new_run_id(), config, datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        payload = {"run_id": identity.run_id, "created_at": identity.created_at, "config": config.to_dict()}
        self.write_text(CONFIG_FILE, json.dumps(payload, indent=2) + "\n")
        return identity

    def check_can_start(self, *, overwrite: bool) -> None:
        """`start`'s refusals without writing anything (the CLI checks before loading data)."""
        self._check_writable_target(overwrite)

    def read_identity(self) -> RunIdentity:
        """The run id and configuration in config.json."""
        path = self.path / CONFIG_FILE
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: no such run folder")
        if not path.exists():
            raise RunFolderError(f"{self.path}: no {CONFIG_FILE}; not a `fedrec simulate --out` folder")
        data = read_json(path, what="run configuration")
        if not isinstance(data, dict) or "run_id" not in data or "config" not in data:
            raise RunFolderError(f"{path}: has no run id (written by an older fedrec, or edited); start a new run "
                                 f"with `fedrec simulate --out {self.path} --overwrite`")
        run_id = data["run_id"]
        if not isinstance(run_id, str) or not run_id:
            raise RunFolderError(f"{path}: run_id must be a non-empty string")
        try:
            config = SimulationConfig.from_dict(data["config"])
        except (TypeError, ValueError, ArithmeticError) as error:
            raise RunFolderError(f"{path}: invalid configuration: {error}") from None
        return RunIdentity(run_id, config, str(data.get("created_at", "")))

    def require_same_run(self, identity: RunIdentity, name: str, found: Any) -> None:
        """Refuse a piece (`name`) whose run id is not `identity`'s."""
        if found != identity.run_id:
            raise RunFolderError(
                f"{self.path / name}: belongs to run {found!r}, but {CONFIG_FILE} is run {identity.run_id!r}; "
                "the folder mixes two runs (start a new run with --overwrite, or use another folder)")

    def write_text(self, name: str, text: str | bytes) -> None:
        try:
            atomic_write(self.path / name, text)
        except OSError as error:
            raise RunFolderError(f"{self.path / name}: cannot write: {error.strerror or error}") from None

    def _check_writable_target(self, overwrite: bool) -> None:
        if self.path.is_symlink() and not self.path.exists():
            raise RunFolderError(f"--out {self.path}: a dangling symbolic link")
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {self.path}: is a file, not a folder")
        if not self.path.exists():
            return
        if self.holds_run():
            if overwrite:
                return
            try:
                identity = f"run {self.read_identity().run_id}"
            except RunFolderError:
                identity = "the files of a run"
            raise RunFolderError(
                f"--out {self.path}: already holds {identity}; continue it with `fedrec simulate --resume "
                f"{self.path}`, or replace it with --overwrite")
        if any(self.path.iterdir()):
            raise RunFolderError(f"--out {self.path}: the folder is not empty and holds no fedrec run; "
                                 "choose a new or empty folder")

    def _remove_run_files(self) -> None:
        """Remove exactly the files a run writes (config last), nothing else."""
        try:
            for name in RESULT_FILES:
                (self.path / name).unlink(missing_ok=True)
            if self.checkpoints.is_dir():
                for item in self.checkpoints.iterdir():
                    if item.name == CHECKPOINT_INDEX or (item.name.startswith(("round_", ".round_", ".checkpoint"))
                                                         and item.is_file()):
                        item.unlink()
                if not any(self.checkpoints.iterdir()):
                    self.checkpoints.rmdir()
            (self.path / CONFIG_FILE).unlink(missing_ok=True)
        except OSError as error:
            raise RunFolderError(f"{self.path}: cannot remove the old run's files: {error.strerror or error}") from None
