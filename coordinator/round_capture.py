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
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from coordinator.capture import read_capture
from coordinator.state_store import StateStore
from protocol import distributed_dp
from protocol.generated import rounds_pb2
from protocol.upload import UploadLayout
from secagg.quantize import FixedPoint

UPLOADS_DIR = "uploads"  # a device's recorded uploads (`edge_client.fleet --record-uploads`)


def write_round_captures(out: Path, *, capture_file: Path, state_dir: Path, device_roots: list[Path],
                         layout: UploadLayout) -> list[Path]:
    """One `round_<r>.npz` per revealed sum in `capture_file`; returns the files written."""
    records = read_capture(capture_file)
    participants = {r["round_id"]: r["participants"] for r in records if r["kind"] == "round"}
    store = StateStore(state_dir)
    try:
        labels = store.devices()
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for record in (r for r in records if r["kind"] == "revealed"):
        total = np.frombuffer(base64.b64decode(record["total"]), "<u8").astype(np.uint64)
        devices = [labels[participants[record["round_id"]][index]] for index in record["reporters"]]
        uploads = [np.load(_device_folder(device_roots, label) / UPLOADS_DIR / f"{record['round_id']}.npy")
                   for label in devices]
        revealed, plaintext, sigma = _decoded(record, total, uploads, layout)
        path = out / f"round_{record['round_number']:05d}.npz"
        np.savez(path, revealed=revealed, plaintext=plaintext, sigma=np.float64(sigma),
                 reporters=np.int64(len(uploads)))
        written.append(path)
    return written


def _decoded(record: dict, total: np.ndarray, uploads: list[np.ndarray],
             layout: UploadLayout) -> tuple[np.ndarray, np.ndarray, float]:
    if record.get("distributed_dp"):
        message = rounds_pb2.DistributedDp.FromString(base64.b64decode(record["distributed_dp"]))
        spec, seed = distributed_dp.from_wire(message)
        plaintext = distributed_dp.decode(np.sum(uploads, axis=0, dtype=np.int64), spec, seed)
        return distributed_dp.decode_sum(total, spec, seed), plaintext, spec.noise_stddev(len(uploads))
    fixed_point = FixedPoint(bit_width=record["bit_width"], fraction_bits=record["fraction_bits"])
    summed = np.zeros_like(total)
    for upload in uploads:
        summed = fixed_point.add(summed, upload.astype(np.uint64))
    model = layout.num_model_values
    return fixed_point.decode(total)[:model], fixed_point.decode(summed)[:model], 0.0


def _device_folder(roots: list[Path], label: str) -> Path:
    for root in roots:
        if (root / label).is_dir():
            return root / label
    raise FileNotFoundError(f"no device folder for {label} under {', '.join(map(str, roots))}")
