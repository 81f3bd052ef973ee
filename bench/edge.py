"""Device-side cost of the exported model: file size, load time, and latency of `topk` over all
items and of one `personalize` call, in LiteRT and through the TF SavedModel of the same module
(for the ratio), plus a full on-device personalization through the edge client (SQLite store
included). All figures come from one run.

    uv run python bench/edge.py                       # ML-100K-shaped model (1682 items, dim 16)
    uv run python bench/edge.py --package tflite_models/synthetic
    uv run python bench/edge.py --run runs/u1         # export a run first
    uv run python bench/edge.py --json edge.json      # also write the headline medians

Without --package/--run the model has ML-100K's shape (1682 items, dim 16) and seeded initial
parameters: size and latency depend on the shapes, not on the trained values.

Beside the figures it times an anchor: top-k over the table in numpy (the [items, dim] x [dim]
product, argpartition, and sorting the k), the arithmetic a top-k that scores every item pays.
The edge client's figures (LiteModel.topk; a round's compute_client_update, with its clipping;
the cold personalization) come from a fresh process that imports what a device imports. The
--json file holds the medians: topk_us, client_update_us, personalize_us (signature calls, as
in the table), cold_personalize_ms, topk_floor_us, edge_client_topk_us, edge_client_update_us.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol.manifest import HYPERPARAMETER_KEYS, MANIFEST_FILE, MODEL_FILE, SIGNATURES, Manifest


def latency_us(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    for _ in range(min(100, repeats)):
        call()
    samples = np.empty(repeats)
    for k in range(repeats):
        start = time.perf_counter()
        call()
        samples[k] = time.perf_counter() - start
    return float(np.median(samples) * 1e6), float(np.percentile(samples, 99) * 1e6)


def default_package(out: Path, num_items: int = 1682, dim: int = 16) -> Path:
    from tff_pipeline import model
    from tff_pipeline.export.package import export_params

    config = model.ModelConfig(num_items=num_items, dim=dim, implicit_learning_rate=3.0)
    params = model.initial_global_params(config, seed=0)
    fields = dict(round=0, dataset="ml-100k-shaped", num_items=num_items, dim=dim,
                  item_ids=tuple(range(1, num_items + 1)), item_titles=tuple(f"Item {k}" for k in range(1, num_items + 1)),
                  rating_min=1.0, rating_max=5.0, hyperparameters={k: getattr(config, k) for k in HYPERPARAMETER_KEYS},
                  privacy=None, signatures=SIGNATURES)
    export_params(params, config, out, fields)
    return out


def saved_model_calls(weights: dict, manifest: Manifest, tmp: Path):
    """The same module through TF (SavedModel signatures), for the ratio."""
    import tensorflow as tf

    from tff_pipeline import model
    from tff_pipeline.export.ondevice_model import OnDeviceModel

    config = model.ModelConfig(num_items=manifest.num_items, dim=manifest.dim, **manifest.hyperparameters)
    params = model.GlobalParams(weights["item_embeddings"], weights["item_bias"], weights["global_mean"])
    module = OnDeviceModel(params, config, manifest_digest=manifest.content_digest())
    tf.saved_model.save(module, str(tmp / "saved"), signatures=module.signatures())
    start = time.perf_counter()
    loaded = tf.saved_model.load(str(tmp / "saved"))
    load_seconds = time.perf_counter() - start
    return loaded.signatures, load_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=None)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--ratings", type=int, default=100, help="ratings of the personalized user")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the headline medians here")
    args = parser.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.TemporaryDirectory(prefix="fedrec-edge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        package = args.package
        if package is None and args.run is not None:
            from tff_pipeline.export.package import export_run

            package = tmp / "package"
            export_run(args.run, package)
        elif package is None:
            package = default_package(tmp / "package")
        manifest = Manifest.read(package / MANIFEST_FILE)
        model_bytes = (package / MODEL_FILE).read_bytes()
        rng = np.random.default_rng(0)
        n = min(args.ratings, manifest.num_items)
        ids = rng.choice(manifest.num_items, size=n, replace=False).astype(np.int32)
        stars = rng.integers(1, 6, size=n).astype(np.float32)
        k = np.int32(10)

        start = time.perf_counter()
        interpreter = Interpreter(model_content=model_bytes)
        runners = {name: interpreter.get_signature_runner(name) for name in SIGNATURES}
        runners["get_weights"]()
        lite_load = time.perf_counter() - start
        runners["personalize"](item_ids=ids, ratings=stars)
        lite = {
            "topk(10) over all items": latency_us(lambda: runners["topk"](k=k), args.repeats),
            f"personalize ({n} ratings, exact fit)": latency_us(
                lambda: runners["personalize"](item_ids=ids, ratings=stars), args.repeats),
            f"infer ({n} items)": latency_us(lambda: runners["infer"](item_ids=ids), args.repeats),
            f"client_update ({n} ratings)": latency_us(
                lambda: runners["client_update"](item_ids=ids, ratings=stars), max(200, args.repeats // 10)),
        }
        floor = topk_floor_us(runners["get_weights"](), int(k), args.repeats)
        device = device_process(package, manifest, ids, stars, int(k), args.repeats, tmp)
        client = {"topk": device["topk"], "update": device["update"]}
        signatures, tf_load = saved_model_calls(runners["get_weights"](), manifest, tmp)
        import tensorflow as tf

        tf_ids, tf_stars, tf_k = tf.constant(ids), tf.constant(stars), tf.constant(k)
        tf_repeats = max(200, args.repeats // 10)
        tf_results = {
            "topk(10) over all items": latency_us(lambda: signatures["topk"](k=tf_k), tf_repeats),
            f"personalize ({n} ratings, exact fit)": latency_us(
                lambda: signatures["personalize"](item_ids=tf_ids, ratings=tf_stars), tf_repeats),
            f"infer ({n} items)": latency_us(lambda: signatures["infer"](item_ids=tf_ids), tf_repeats),
            f"client_update ({n} ratings)": latency_us(
                lambda: signatures["client_update"](item_ids=tf_ids, ratings=tf_stars), tf_repeats),
        }
        device_seconds = device["cold_seconds"]

    print(f"\n### Edge model {manifest.model_version}: {manifest.num_items} items x dim {manifest.dim}\n")
    print(f"- model file: {len(model_bytes):,} bytes ({len(model_bytes) / 1024:.1f} KiB); weights alone "
          f"{manifest.num_items * (manifest.dim + 1) * 4 / 1024:.1f} KiB")
    print(f"- load (interpreter + signature runners + first call): LiteRT {lite_load * 1e3:.1f} ms; "
          f"TF SavedModel load {tf_load * 1e3:.0f} ms\n")
    print("| operation | LiteRT median us | LiteRT p99 us | TF SavedModel median us | TF / LiteRT |")
    print("|---|---|---|---|---|")
    for name, (median, p99) in lite.items():
        tf_median = tf_results[name][0]
        print(f"| {name} | {median:.1f} | {p99:.1f} | {tf_median:.1f} | {tf_median / median:.1f}x |")
    print(f"\n- anchor: the arithmetic of top-{int(k)} in numpy ([{manifest.num_items}, {manifest.dim}] x "
          f"[{manifest.dim}] product, argpartition, sort of the {int(k)}): median {floor[0]:.1f} us, p99 {floor[1]:.1f} us")
    print(f"- through the edge client (checks, copies): LiteModel.topk({int(k)}) median {client['topk'][0]:.1f} us; "
          f"compute_client_update ({n} ratings, clipped to norm 0.1) median {client['update'][0]:.1f} us")
    cold_ms = float(np.median(device_seconds) * 1e3)
    print(f"\n- full on-device personalization of a user with {n} ratings through the edge client "
          "(cold start: open the SQLite store, verify the model's sha256 and load it, read the ratings, fit, "
          f"store the parameters in a transaction): median {cold_ms:.2f} ms, "
          f"p99 {np.percentile(device_seconds, 99) * 1e3:.2f} ms over {len(device_seconds)} runs")
    if args.json is not None:
        summary = {
            "model_version": manifest.model_version, "num_items": manifest.num_items, "dim": manifest.dim,
            "ratings": n, "model_bytes": len(model_bytes),
            "topk_us": lite["topk(10) over all items"][0],
            "client_update_us": lite[f"client_update ({n} ratings)"][0],
            "personalize_us": lite[f"personalize ({n} ratings, exact fit)"][0],
            "cold_personalize_ms": cold_ms,
            "topk_floor_us": floor[0],
            "edge_client_topk_us": client["topk"][0],
            "edge_client_update_us": client["update"][0],
            "lite_load_ms": lite_load * 1e3,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def topk_floor_us(weights: dict, k: int, repeats: int) -> tuple[float, float]:
    """The arithmetic anchor: top-k of every item's score in numpy (matvec, argpartition, sort)."""
    table = np.ascontiguousarray(weights["item_embeddings"], np.float32)
    vector = np.random.default_rng(1).normal(0.0, 0.3, table.shape[1]).astype(np.float32)

    def top() -> np.ndarray:
        scores = table @ vector
        best = np.argpartition(scores, len(scores) - k)[-k:]
        return best[np.argsort(-scores[best])]

    return latency_us(top, repeats)


def device_process(package: Path, manifest: Manifest, ids, stars, k: int, repeats: int, tmp: Path) -> dict:
    """The edge client's figures, measured in a fresh process that imports what a device imports:
    no TensorFlow, whose runtime (thread pools, a heap of Python objects) the benchmark's own
    process holds by then, and which a device never loads."""
    ratings_csv = tmp / "ratings.csv"
    ratings_csv.write_text("item_id,rating\n" + "".join(
        f"{manifest.item_ids[i]},{s:g}\n" for i, s in zip(ids, stars)))
    request = {"package": str(package), "ratings_csv": str(ratings_csv), "ids": [int(i) for i in ids],
               "stars": [float(s) for s in stars], "k": k, "repeats": repeats, "tmp": str(tmp)}
    done = subprocess.run([sys.executable, __file__, "--device-process", json.dumps(request)], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"the device process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def device_process_main(request: dict) -> dict:
    """In the device process: LiteModel.topk, a round's compute_client_update (model call, norm
    and clipping), and cold personalizations through `Device`."""
    from edge_client.client_update import compute_client_update
    from edge_client.device import Device
    from edge_client.litert_model import LiteModel

    package, tmp, k, repeats = Path(request["package"]), Path(request["tmp"]), request["k"], request["repeats"]
    ids, stars = np.array(request["ids"], np.int32), np.array(request["stars"], np.float32)
    model = LiteModel.load(package)
    model.personalize(ids, stars)
    result = {
        "topk": latency_us(lambda: model.topk(k), repeats),
        "update": latency_us(lambda: compute_client_update(model, ids, stars, clip_norm=0.1), max(200, repeats // 10)),
    }
    device_dir = tmp / "device"
    device = Device(device_dir)
    device.install(package)
    device.import_ratings(Path(request["ratings_csv"]))
    device.close()
    seconds = []
    for _ in range(50):
        start = time.perf_counter()
        Device(device_dir).personalize()  # cold: open the store, verify and load the model, fit, store
        seconds.append(time.perf_counter() - start)
    shutil.rmtree(device_dir, ignore_errors=True)
    result["cold_seconds"] = seconds
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--device-process":
        print(json.dumps(device_process_main(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
