"""Per-round checkpoints of the server state, written atomically so a kill at any point leaves
either the previous or the new checkpoint, never a torn one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

_INDEX = "checkpoint.json"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(directory: Path, *, round_num: int, state: Any, meta: dict[str, Any], keep: int = 2) -> Path:
    """Save `state` (any tf.nest structure of arrays) after `round_num` rounds, plus `meta`."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays_path = directory / f"round_{round_num:05d}.npz"
    flat = [np.asarray(x) for x in tf.nest.flatten(state)]
    tmp = arrays_path.with_name(arrays_path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, *flat)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, arrays_path)
    index = {"round": round_num, "arrays": arrays_path.name, "meta": meta}
    _atomic_write_bytes(directory / _INDEX, json.dumps(index).encode())
    for old in sorted(directory.glob("round_*.npz"))[:-keep]:
        old.unlink()
    return arrays_path


def load(directory: Path, *, structure: Any) -> tuple[int, Any, dict[str, Any]]:
    """Latest checkpoint as (round, state shaped like `structure`, meta)."""
    index_path = directory / _INDEX
    if not index_path.exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (missing {_INDEX})")
    index = json.loads(index_path.read_text())
    with np.load(directory / index["arrays"]) as arrays:
        flat = [arrays[f"arr_{k}"] for k in range(len(arrays.files))]
    expected = tf.nest.flatten(structure)
    if len(flat) != len(expected):
        raise ValueError(
            f"checkpoint {index['arrays']} has {len(flat)} arrays, the process state needs "
            f"{len(expected)}: was it written by a different configuration?"
        )
    for got, want in zip(flat, expected):
        if np.shape(got) != np.shape(want):
            raise ValueError(f"checkpoint array shape {np.shape(got)} != state shape {np.shape(want)}")
    return int(index["round"]), tf.nest.pack_sequence_as(structure, flat), index["meta"]
