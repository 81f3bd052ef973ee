"""Simulated users as devices: one device folder per user, holding only that user's ratings.

Both `fedrec up` (every shard on this machine) and an edge pod (`edge_client.pod`, its own
shard) make device folders this way; a device imports its `ratings.csv` once it has a model.
numpy only: it runs in the slim edge image.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.fleet import LABEL_FILE, PENDING_RATINGS
from protocol.files import atomic_write


def device_label(user: int) -> str:
    """Labels sort like the users (what `SeededSelection` orders the population by)."""
    return f"user-{user:07d}"


def prepare_devices(root: Path, split: Any, users: np.ndarray, *, shards: int) -> list[Path]:
    """One folder per device with its label and its own train ratings (raw ids); returns the shards."""
    shard_dirs = [root / f"shard-{k}" for k in range(shards)]
    item_ids = split.vocab.item_raw_ids
    train = split.train
    order = np.argsort(train.users, kind="stable")
    bounds = np.searchsorted(train.users[order], users, side="left"), np.searchsorted(train.users[order], users,
                                                                                        side="right")
    for position, user in enumerate(users):
        folder = shard_dirs[position % shards] / device_label(int(user))
        folder.mkdir(parents=True, exist_ok=True)
        rows = order[bounds[0][position]:bounds[1][position]]
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["item_id", "rating"])
        for index in rows:
            writer.writerow([int(item_ids[train.items[index]]), f"{float(train.ratings[index]):g}"])
        if not (folder / PENDING_RATINGS).exists():
            atomic_write(folder / PENDING_RATINGS, text.getvalue())
        atomic_write(folder / LABEL_FILE, device_label(int(user)) + "\n")
    return shard_dirs
