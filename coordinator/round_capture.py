"""Evidence of what the coordinator learned each round (`fedrec up --capture DIR`, an audit mode).

For every completed round `DIR/round_<r>.npz` holds, in update units (the model values of
`protocol.upload`, before the division by the cohort):

- `revealed`: what the coordinator learned, SecAgg+'s sum decoded as the coordinator decodes it;
- `plaintext`: the sum of the reporters' uploads before any noise, from the uploads the devices
  recorded for the audit (`--record-uploads`: the fixed-point encoding, or distributed DP's rounded
  integers before their noise share);
- `sigma`: the standard deviation of the noise the mechanism put into `revealed` on each value: 0
  under central DP, whose noise the coordinator adds after it has seen the sum (the problem), and
  the reporters' Skellam shares under distributed DP (`DistributedDpSpec.noise_stddev`);
- `reporters`: how many uploads the sum holds.

It is assembled after the run from the coordinator's capture file (`capture.RequestCapture`), its
device registry, and the devices' folders, so nothing in the coordinator keeps a plaintext.

`DIR/rated_items.json` measures what each view gives an attacker who wants a reporter's rated
items: the AUC of telling them from the other items by the size of each item's row (embedding and
bias) in (a) the reporter's own upload, what a server without secure aggregation would receive,
and (b) the revealed sum, averaged over the reporters of every round, with the cohort sizes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from coordinator.capture import read_capture
from coordinator.state_store import StateStore
from protocol import distributed_dp
from protocol.generated import rounds_pb2
from protocol.upload import UploadLayout
from secagg.quantize import FixedPoint

UPLOADS_DIR = "uploads"  # a device's recorded uploads (`edge_client.fleet --record-uploads`)


def write_round_captures(out: Path, *, capture_file: Path, state_dir: Path, device_roots: list[Path],
                         layout: UploadLayout, rated_items: Mapping[str, np.ndarray], dp: str) -> list[Path]:
    """One `round_<r>.npz` per revealed sum in `capture_file`, and `rated_items.json`
    (`rated_items`: each device label's rated item indices; `dp`: the run's --dp mode, which
    `fedrec audit --captures` names its settings by); returns the npz files written."""
    records = read_capture(capture_file)
    participants = {r["round_id"]: r["participants"] for r in records if r["kind"] == "round"}
    store = StateStore(state_dir)
    try:
        labels = store.devices()
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    own_aucs: list[float] = []
    sum_aucs: list[float] = []
    cohorts: list[int] = []
    for record in (r for r in records if r["kind"] == "revealed"):
        total = np.frombuffer(base64.b64decode(record["total"]), "<u8").astype(np.uint64)
        devices = [labels[participants[record["round_id"]][index]] for index in record["reporters"]]
        uploads = [np.load(_device_folder(device_roots, label) / UPLOADS_DIR / f"{record['round_id']}.npy")
                   for label in devices]
        revealed, plaintext, sigma, own = _decoded(record, total, uploads, layout)
        for label, upload in zip(devices, own):
            rated = rated_items[label]
            own_aucs.append(rated_item_auc(item_scores(upload, layout), rated))
            sum_aucs.append(rated_item_auc(item_scores(revealed, layout), rated))
        cohorts.append(len(uploads))
        path = out / f"round_{record['round_number']:05d}.npz"
        np.savez(path, revealed=revealed, plaintext=plaintext, sigma=np.float64(sigma),
                 reporters=np.int64(len(uploads)))
        written.append(path)
    (out / "rated_items.json").write_text(json.dumps({
        "dp": dp,
        "own_upload_auc": float(np.mean(own_aucs)) if own_aucs else None,
        "revealed_sum_auc": float(np.mean(sum_aucs)) if sum_aucs else None,
        "rounds": len(cohorts), "mean_cohort": float(np.mean(cohorts)) if cohorts else None,
    }, indent=2) + "\n")
    return written


# What each view of a capture is, by the run's --dp mode: (own upload's setting, revealed sum's).
# Under distributed DP nobody but the device sees its own upload (secure aggregation, and its noise).
_SETTINGS = {
    "none": ("plain_update", "secagg_sum_no_dp"),
    "fixed": ("clipped_dp_update", "secagg_sum_central_dp"),
    "adaptive": ("clipped_dp_update", "secagg_sum_central_dp"),
    "distributed": (None, "distributed_dp_sum"),
}


def rated_item_settings(folder: Path) -> dict[str, dict[str, Any]]:
    """The rated-item AUC of each view in `folder/rated_items.json` (a `fedrec up --capture` folder),
    keyed by setting name, with the cohort it was measured at: what `fedrec audit --captures` reports."""
    path = folder / "rated_items.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: is {folder} a `fedrec up --capture` folder?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or record.get("dp") not in _SETTINGS:
        raise ValueError(f"{path} does not name its --dp mode (one of {', '.join(_SETTINGS)}); "
                         "captures from before issue 18's audit lack it")
    own, revealed = _SETTINGS[record["dp"]]
    settings: dict[str, dict[str, Any]] = {}
    for name, key in ((own, "own_upload_auc"), (revealed, "revealed_sum_auc")):
        auc = record.get(key)
        if name is None or auc is None:
            continue
        if not isinstance(auc, (int, float)) or not 0 <= auc <= 1:
            raise ValueError(f"{path}: {key} must be a number in [0, 1], got {auc!r}")
        settings[name] = {"auc": float(auc), "uploads_summed": 1 if key == "own_upload_auc" else record.get("mean_cohort"),
                          "rounds": record.get("rounds"), "capture": str(folder)}
    return settings


def item_scores(model_values: np.ndarray, layout: UploadLayout) -> np.ndarray:
    """Each item's squared row in an upload (or a sum): its embedding delta and bias delta."""
    parts, _, _ = layout.unpack(np.concatenate([model_values, np.zeros(layout.length - layout.num_model_values)]))
    return np.sum(np.square(parts[0]), axis=1) + np.square(parts[1])


def rated_item_auc(scores: np.ndarray, rated: np.ndarray) -> float:
    """P(a rated item scores above an unrated one), ties counting half (the Mann-Whitney AUC)."""
    mask = np.zeros(scores.size, bool)
    mask[rated] = True
    if mask.all() or not mask.any():
        return 0.5
    ranks = stats.rankdata(scores)
    positives = int(mask.sum())
    return float((ranks[mask].sum() - positives * (positives + 1) / 2) / (positives * (scores.size - positives)))


def _decoded(record: dict, total: np.ndarray, uploads: list[np.ndarray],
             layout: UploadLayout) -> tuple[np.ndarray, np.ndarray, float, list[np.ndarray]]:
    """(revealed, plaintext sum, sigma, each reporter's own upload), in update units."""
    if record.get("distributed_dp"):
        message = rounds_pb2.DistributedDp.FromString(base64.b64decode(record["distributed_dp"]))
        spec, seed = distributed_dp.from_wire(message)
        plaintext = distributed_dp.decode(np.sum(uploads, axis=0, dtype=np.int64), spec, seed)
        own = [distributed_dp.decode(upload, spec, seed) for upload in uploads]  # rounded, before its noise
        return distributed_dp.decode_sum(total, spec, seed), plaintext, spec.noise_stddev(len(uploads)), own
    fixed_point = FixedPoint(bit_width=record["bit_width"], fraction_bits=record["fraction_bits"])
    summed = np.zeros_like(total)
    for upload in uploads:
        summed = fixed_point.add(summed, upload.astype(np.uint64))
    model = layout.num_model_values
    own = [fixed_point.decode(upload.astype(np.uint64))[:model] for upload in uploads]
    return fixed_point.decode(total)[:model], fixed_point.decode(summed)[:model], 0.0, own


def _device_folder(roots: list[Path], label: str) -> Path:
    for root in roots:
        if (root / label).is_dir():
            return root / label
    raise FileNotFoundError(f"no device folder for {label} under {', '.join(map(str, roots))}")
