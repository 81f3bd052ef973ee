"""Per-round checkpoints of the server state, written atomically and tagged with their run.

A kill at any point leaves either the previous or the new checkpoint, never a torn one: the
arrays file is written under a temporary name and renamed, then the index (`checkpoint.json`)
is replaced the same way. Both carry the run id and the configuration's digest, and loading
refuses a checkpoint of another run or of an edited configuration.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from protocol.files import atomic_write
from tff_pipeline.run_folder import CHECKPOINT_INDEX, RunFolderError, RunIdentity, read_json

_ROUND_FILE = re.compile(r"round_(\d{5,})\.npz")
RUN_ID_KEY = "run_id"


class CheckpointError(RunFolderError):
    """A checkpoint that cannot be used; the message names the file."""


def round_file(round_num: int) -> str:
    return f"round_{round_num:05d}.npz"


def save(directory: Path, *, round_num: int, state: Any, meta: dict[str, Any], identity: RunIdentity,
         keep: int = 2) -> Path:
    """Save `state` (any tf.nest structure of arrays) after `round_num` rounds, plus `meta`;
    then remove this run's checkpoints older than the last `keep` rounds."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays_path = directory / round_file(round_num)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(x) for x in tf.nest.flatten(state)], **{RUN_ID_KEY: np.array(identity.run_id)})
    atomic_write(arrays_path, buffer.getvalue())
    index = {"run_id": identity.run_id, "config_sha256": identity.config_digest, "round": round_num,
             "arrays": arrays_path.name, "meta": meta}
    atomic_write(directory / CHECKPOINT_INDEX, json.dumps(index, allow_nan=False))
    for old in directory.iterdir():
        match = _ROUND_FILE.fullmatch(old.name)
        if match and int(match.group(1)) <= round_num - keep:
            old.unlink(missing_ok=True)
    return arrays_path


def load(directory: Path, *, structure: Any, identity: RunIdentity) -> tuple[int, Any, dict[str, Any]] | None:
    """Latest checkpoint as (round, state shaped like `structure`, meta); None if the run has none yet.

    Refuses (CheckpointError) an index or arrays file of another run, a configuration edited
    since the checkpoint, and a truncated or corrupt file.
    """
    index_path = directory / CHECKPOINT_INDEX
    if not index_path.exists():
        if directory.is_dir() and any(_ROUND_FILE.fullmatch(p.name) for p in directory.iterdir()):
            raise CheckpointError(f"{index_path}: missing, but round files are there; the folder is damaged")
        return None
    index = read_json(index_path, what="checkpoint index")
    if not isinstance(index, dict) or not {"run_id", "config_sha256", "round", "arrays", "meta"} <= set(index):
        raise CheckpointError(f"{index_path}: not a checkpoint index of this fedrec version")
    if index["run_id"] != identity.run_id:
        raise CheckpointError(f"{index_path}: belongs to run {index['run_id']!r}, but config.json is run "
                              f"{identity.run_id!r}; the folder mixes two runs")
    if index["config_sha256"] != identity.config_digest:
        raise CheckpointError(f"{index_path}: was written under another configuration than the one in "
                              "config.json now (was config.json edited?); resuming would misreport the run")
    round_num, name, meta = index["round"], index["arrays"], index["meta"]
    if not (isinstance(round_num, int) and round_num >= 1 and isinstance(name, str)
            and name == round_file(round_num) and isinstance(meta, dict)):
        raise CheckpointError(f"{index_path}: malformed checkpoint index")
    flat, run_id = read_arrays(directory / name)
    if run_id != identity.run_id:
        raise CheckpointError(f"{directory / name}: belongs to run {run_id!r}, not {identity.run_id!r}")
    expected = tf.nest.flatten(structure)
    if len(flat) != len(expected):
        raise CheckpointError(
            f"{directory / name}: has {len(flat)} arrays, the process state needs {len(expected)}")
    for got, want in zip(flat, expected):
        if np.shape(got) != np.shape(want):
            raise CheckpointError(f"{directory / name}: array shape {np.shape(got)} != state shape {np.shape(want)}")
    return round_num, tf.nest.pack_sequence_as(structure, flat), meta


def read_arrays(path: Path) -> tuple[list[np.ndarray], str | None]:
    """The state's arrays (in flatten order) and the run id of a round file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint index points at it)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            count = sum(1 for key in arrays.files if key.startswith("arr_"))
            flat = [arrays[f"arr_{k}"] for k in range(count)]
            run_id = str(arrays[RUN_ID_KEY]) if RUN_ID_KEY in arrays.files else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt ({type(error).__name__}: {error})") from None
    return flat, run_id
